// SPDX-License-Identifier: MIT
// The abuse-desk query: the plan read backwards, from ADDRESS:PORT to server and inside address.
#include "plan/plan.h"

namespace portslice::plan {

std::optional<OwnerAnswer> findOwner(const config::Config &config, Ipv4 address, uint16_t port,
				     std::vector<config::Diagnostic> *diagnostics)
{
	const config::Address *a = config.findAddress(address);
	if (!a)
		return std::nullopt;
	OwnerAnswer answer;
	if (port < a->portRange.lo || port > a->portRange.hi)
		return answer;
	uint32_t index = (port - a->portRange.lo) / a->sliceSize;
	if (index >= a->sliceCount())
		return answer;
	answer.slice = index;
	auto owner = a->owners.find(index);
	if (owner == a->owners.end())
		return answer;
	answer.server = owner->second;

	// Who inside the owner used the port: plan as the owner would.
	PlanResult planned = makePlan(config, answer.server);
	if (diagnostics)
		*diagnostics = planned.diagnostics;
	if (!planned.ok())
		return answer;
	const Plan &plan = *planned.plan;
	for (const PlannedSource &s : plan.sources) {
		for (const Assignment &as : s.assignments) {
			if (plan.addresses[as.address].address != address || port < as.ports.lo ||
			    port > as.ports.hi)
				continue;
			answer.source = s.name;
			answer.inside = as.first;
			if (s.mode == NatMode::Conntrack)
				answer.insideLast = as.last;
			return answer;
		}
	}
	return answer;
}

} // namespace portslice::plan
