// SPDX-License-Identifier: MIT
// Counters for Stats(): named nft counters as rows; conntrack entries per source, ports in use per source range and per slice.
#pragma once

#include <vector>

#include "common/result.h"
#include "conntrack/conntrack.h"
#include "service/backend.h"
#include "plan/plan.h"

namespace portslice::daemon {

// One named counter of table inet portslice as Stats() rows: src_* (per
// source), addr_* (per shared address), guard_* (leak-guard drops).
void addCounterRows(std::vector<service::StatRow> &rows, const std::string &name, uint64_t packets, uint64_t bytes);

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
