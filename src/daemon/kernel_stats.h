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

// portslice_source_nat_failures_total: per conntrack source, its new flows
// counted in table inet portslice (new_NAME) less those that left the uplink
// after conntrack confirmed them (left_NAME, table netdev portslice_egress;
// see nft::egressModel). Read new_ first and left_ after, so that a flow
// between the two points at the moment of reading is counted as left, not as
// a failure; the result never goes down between reads, and adds up across
// replaces of the tables (which start their counters at 0).
class NatFailures {
public:
	// `news`: the main table's counters (new_NAME among them), read before
	// `lefts`: the egress table's.
	void update(const std::vector<nft::CounterValue> &news, const std::vector<nft::CounterValue> &lefts);
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
// range shows before its flows fail); for each slice this server owns, the
// ports in use (absolute and percent).
std::vector<service::StatRow> conntrackUseRows(const plan::Plan &plan, const std::vector<conntrack::Entry> &entries);

// The same from one walk of the kernel's table.
Result<std::vector<service::StatRow>> readConntrackUse(const plan::Plan &plan);

} // namespace portslice::daemon
