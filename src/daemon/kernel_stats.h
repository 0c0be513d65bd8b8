// SPDX-License-Identifier: MIT
// Counters for Stats(): named nft counters as rows, conntrack entries per zone, ports in use per slice.
#pragma once

#include <vector>

#include "common/result.h"
#include "service/backend.h"
#include "plan/plan.h"

namespace portslice::daemon {

// One named counter of table inet portslice as Stats() rows: src_* (per
// source), addr_* (per shared address), guard_* (leak-guard drops).
void addCounterRows(std::vector<service::StatRow> &rows, const std::string &name, uint64_t packets, uint64_t bytes);

// One pass over the conntrack table: entries per zone of the plan's sources,
// and for each slice this server owns, the distinct reply ports in use
// (absolute and in percent of the slice), so that exhaustion shows early.
Result<std::vector<service::StatRow>> readConntrackUse(const plan::Plan &plan);

} // namespace portslice::daemon
