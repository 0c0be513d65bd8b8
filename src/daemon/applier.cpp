// SPDX-License-Identifier: MIT
// Applier: nftables first (one transaction), then conntrack tuning and clean-up; remove() undoes all of it.
#include "daemon/applier.h"

#include <chrono>

#ifdef PORTSLICE_HAVE_XDP
#include "xdp/forwarder.h"
#endif

namespace portslice::daemon {

Result<Applier> Applier::open(ApplierOptions options)
{
	auto nft = nft::NftApplier::open();
	if (!nft)
		return nft.error();
	return Applier(std::move(options), std::move(*nft));
}

Result<ApplyResult> Applier::apply(const plan::Plan &next, const plan::Plan *current, uint64_t generation)
{
	ApplyResult result;
	auto report = nft_.apply(next, current, generation);
	if (!report)
		return report.error();
	result.nft = *report;

	auto tuned = conntrack::tune(next.conntrack, options_.stateDir);
	if (!tuned)
		return tuned.error();
	result.tuning = *tuned;

	// Flows of slices that moved away would keep their old NAT port here;
	// their answers now go to the new owner.
	auto deleted = conntrack::deleteMovedAway(next);
	if (!deleted)
		return deleted.error();
	result.conntrackDeleted = *deleted;

	// Answers of iifname sources leave by their interface (fwmark routing).
	auto routes = applyRoutes(next);
	if (!routes)
		return routes.error();
	result.routes = *routes;

#ifdef PORTSLICE_HAVE_XDP
	if (options_.xdp) {
		Status x = options_.xdpPinDir.empty() ? xdp::applyForwarder(next)
						      : xdp::applyForwarder(next, options_.xdpPinDir);
		if (!x)
			return x.error().wrap("XDP forwarder on " + next.uplink);
		result.xdp = true;
	}
#endif
	return result;
}

Result<ApplyResult> Applier::applyMove(const plan::Plan &plan, const plan::SliceMove &move)
{
	using Clock = std::chrono::steady_clock;
	auto ms = [](Clock::time_point from) {
		return std::chrono::duration<double, std::milli>(Clock::now() - from).count();
	};
	ApplyResult result;
	Clock::time_point t = Clock::now();
	nft::MoveDelta delta = nft::moveDelta(plan, move);
	auto report = nft_.applyDelta(delta.before, delta.after);
	if (!report)
		return report.error();
	result.nft = *report;
	result.nftMs = ms(t);

	const auto self = static_cast<int32_t>(plan.serverIndex);
	if (move.before.owner[move.slice] == self && plan.addresses[move.address].owner[move.slice] != self) {
		t = Clock::now();
		auto deleted = conntrack::deleteMovedAway(plan);
		if (!deleted)
			return deleted.error();
		result.conntrackDeleted = *deleted;
		result.conntrackMs = ms(t);
	}
#ifdef PORTSLICE_HAVE_XDP
	if (options_.xdp) {
		t = Clock::now();
		std::vector<xdp::SliceRef> changed{{move.address, move.slice}};
		Status x = options_.xdpPinDir.empty() ? xdp::applyForwarderSlices(plan, changed)
						      : xdp::applyForwarderSlices(plan, changed, options_.xdpPinDir);
		if (!x)
			return x.error().wrap("XDP forwarder on " + plan.uplink);
		result.xdp = true;
		result.xdpMs = ms(t);
	}
#endif
	return result;
}

Status Applier::remove(const std::string &uplink)
{
#ifdef PORTSLICE_HAVE_XDP
	if (options_.xdp) {
		Status x = options_.xdpPinDir.empty() ? xdp::removeForwarder(uplink)
						      : xdp::removeForwarder(uplink, options_.xdpPinDir);
		if (!x)
			return x.error().wrap("removing the XDP forwarder");
	}
#else
	(void)uplink;
#endif
	Status s = nft_.remove();
	if (!s)
		return s;
	s = removeRoutes();
	if (!s)
		return s;
	return conntrack::restore(options_.stateDir);
}

} // namespace portslice::daemon
