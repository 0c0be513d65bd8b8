// SPDX-License-Identifier: MIT
// Counters for Stats(): named nft counters as rows; conntrack entries per source, ports in use per source range and per slice.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/result.h"
#include "conntrack/conntrack.h"
#include "nft/apply.h"
#include "service/backend.h"
#include "plan/plan.h"

namespace portslice::daemon {

// One named counter of table inet portslice as Stats() rows: src_* (per
// source), addr_* (per shared address), guard_* (leak-guard drops); new_*
// are NatFailures' and make no row.
void addCounterRows(std::vector<service::StatRow> &rows, const std::string &name, uint64_t packets, uint64_t bytes);

// The names of the counters `plan`'s table inet portslice holds
// (nft::buildModel's `counters`): src_NAME, guard_NAME and, for a
// conntrack source, new_NAME per source; addr_ADDRESS per shared address;
// guard_other.
std::vector<std::string> plannedCounters(const plan::Plan &plan);

// The named counters of table inet portslice (src_*, addr_*, guard_*, ...)
// as counters that only go up in the life of the daemon: a full replace of
// the table (a reload that changes its layout, a drift repair after `nft
// delete table`) starts the kernel's at 0, so each keeps a base, the sum of
// the values its earlier tables had at their last read. What the kernel
// counted between that read and the replace is lost: the apply reads just
// before it replaces; a table deleted by hand loses what it counted since
// the last Stats() or metrics-file read. A counter of the plan missing from
// the table (deleted, not yet repaired; --no-repair) reads as 0 since a
// reset: its row stays, with its total.
class CounterTotals {
public:
	// One read of the table; a value below the last read's means a table
	// made anew behind our back (its last value goes into the base), and so
	// does a counter of `planned` (plannedCounters) missing from `counters`.
	// Only the planned counters have rows: one the plan no longer has is
	// dropped with its total.
	void update(const std::vector<nft::CounterValue> &counters, const std::vector<std::string> &planned);
	// The table is about to be, or was just, made anew.
	void rebase();
	// The rows of addCounterRows, with the totals.
	void addRows(std::vector<service::StatRow> &rows) const;

private:
	struct Total {
		uint64_t basePackets = 0, baseBytes = 0; // of earlier tables
		uint64_t packets = 0, bytes = 0;         // of this table, at the last read
	};
	std::map<std::string, Total> counters_; // in the order of the names
};

// portslice_source_nat_failures_total: per conntrack source, its new flows
// counted in table inet portslice (new_NAME) less those that left the uplink
// after conntrack confirmed them (left_NAME, table netdev portslice_egress;
// see nft::egressModel). Read new_ first and left_ after, so that a flow
// between the two points at the moment of reading is counted as left, not as
// a failure; the result never goes down between reads, and adds up across
// replaces of the tables (which start their counters at 0). A source's row
// stays, with its total, while its new_NAME is missing (the main table
// deleted): its count starts again at 0 when the table is back.
class NatFailures {
public:
	// `news`: the main table's counters (new_NAME among them), read before
	// `lefts`: the egress table's. The sources are those of `planned`'s
	// new_NAME (plannedCounters): a source the plan no longer has is
	// dropped with its total.
	void update(const std::vector<nft::CounterValue> &news, const std::vector<nft::CounterValue> &lefts,
		    const std::vector<std::string> &planned);
	// The tables are about to be made anew (their counters start at 0).
	void rebase();
	// ("source", NAME, "nat_failures", n) per conntrack source.
	void addRows(std::vector<service::StatRow> &rows) const;

private:
	struct Source {
		uint64_t base = 0;     // failures of earlier tables
		uint64_t high = 0;     // the highest new - left seen in this table
		uint64_t lastNew = 0;  // new_NAME at the last read: less means a new table
		bool seen = false;
	};
	std::map<std::string, Source> sources_;
};

// What one conntrack walk tells about the plan's sources, as Stats() rows:
// entries per zone and per conntrack source; for each conntrack source and
// address, the distinct NAT ports in use and the ports of its own range there
// (source_address "SOURCE ADDRESS" ports_in_use / ports: exhaustion of its
// range shows before its flows fail); for each slice this server owns or
// drains as previous owner, the ports in use (absolute and percent). A
// drained slice is no source's range any more: its ports in use count for
// the source whose zone holds the flow (a source that only drains on an
// address has a row with 0 ports).
std::vector<service::StatRow> conntrackUseRows(const plan::Plan &plan, const std::vector<conntrack::Entry> &entries);

// The same from one walk of the kernel's table.
Result<std::vector<service::StatRow>> readConntrackUse(const plan::Plan &plan);

} // namespace portslice::daemon
