// SPDX-License-Identifier: MIT
// Return routing of iifname sources over rtnetlink: fwmark kRouteMarkBase+zone -> table kRouteTableBase+zone -> out of the source's interface.
#pragma once

#include <string>
#include <vector>

#include "common/result.h"
#include "plan/plan.h"

namespace portslice::daemon {

// Priority of portslice's routing rules (ahead of the main table's 32766).
inline constexpr uint32_t kRulePriority = 1000;

struct RoutesReport {
	size_t installed = 0;             // sources routed
	std::vector<std::string> skipped; // "source: interface X does not exist"
};

// Make the routing rules and tables of the plan's iifname sources exactly
// these: stale ones of portslice (mark and table in its ranges) go first.
Result<RoutesReport> applyRoutes(const plan::Plan &plan);

// Delete every rule and route in portslice's mark/table ranges.
Status removeRoutes();

// portslice's rules and routes as they are (rtnetlink messages), so that an
// apply that fails later puts them back.
struct RoutesSnapshot {
	std::vector<std::vector<char>> routes;
	std::vector<std::vector<char>> rules;
};
Result<RoutesSnapshot> snapshotRoutes();
// Make portslice's rules and routes those of the snapshot again.
Status restoreRoutes(const RoutesSnapshot &snapshot);

} // namespace portslice::daemon
