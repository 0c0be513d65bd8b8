// SPDX-License-Identifier: MIT
// Applier: nftables first (one transaction), then conntrack tuning and clean-up; remove() undoes all of it.
#include "daemon/applier.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <map>
#include <set>
#include <net/if.h>

#include "nft/model.h"

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

namespace {

// drain_zone as the model declares it, with one element per draining flow.
nft::Set drainZoneOf(const std::vector<conntrack::DrainingFlow> &flows)
{
	std::vector<nft::DrainEntry> entries;
	entries.reserve(flows.size());
	for (const conntrack::DrainingFlow &f : flows)
		entries.push_back({f.address, f.port, f.zone});
	return nft::drainZoneSet(entries);
}

} // namespace

Result<size_t> Applier::fillDrainZone(nft::Set zones)
{
	Result<size_t> filled = nft_.fillSet(zones);
	if (filled)
		drainZone_ = std::move(zones);
	return filled;
}

Status Applier::precheck(const plan::Plan &next) const
{
#ifdef PORTSLICE_HAVE_XDP
	if (options_.xdp) {
		if (::if_nametoindex(next.uplink.c_str()) == 0)
			return Error("uplink " + next.uplink + " does not exist (the XDP forwarder attaches to it; "
					     "--no-xdp runs without)");
		Status pins = xdp::preparePinDir(pinDir());
		if (!pins)
			return pins;
	}
#else
	(void)next;
#endif
	return {};
}

std::string Applier::pinDir() const
{
#ifdef PORTSLICE_HAVE_XDP
	return options_.xdpPinDir.empty() ? std::string(xdp::kDefaultPinDir) : options_.xdpPinDir;
#else
	return options_.xdpPinDir;
#endif
}

Result<ApplyResult> Applier::apply(const plan::Plan &next, const plan::Plan *current, uint64_t generation,
				   const plan::Plan *previous)
{
	// What can be known before the first change is checked first.
	if (Status ok = precheck(next); !ok)
		return ok.error();
	// What a later failure puts back.
	Before before;
	before.tuning = conntrack::snapshotTuning(options_.stateDir);
	auto routes = snapshotRoutes();
	if (!routes)
		return routes.error().wrap("reading the routes before the apply");
	before.routes = std::move(*routes);
	auto neighbours = snapshotNeighbours();
	if (!neighbours)
		return neighbours.error().wrap("reading the neighbour entries before the apply");
	before.neighbours = std::move(*neighbours);
	auto state = nft_.readState();
	if (!state)
		return state.error().wrap("reading table inet portslice before the apply");
	before.table = state->has_value();
#ifdef PORTSLICE_HAVE_XDP
	before.forwarder = options_.xdp && xdp::forwarderPinned(pinDir());
#endif
	bool drainFilled = drainFilled_;
	std::set<Ipv4> neighbourTargets = neighbourTargets_;
	nft::Set drainZone = drainZone_;

	Touched touched;
	Result<ApplyResult> result = applySteps(next, current, generation, touched);
	if (result)
		return result;
	drainFilled_ = drainFilled;
	neighbourTargets_ = std::move(neighbourTargets);
	drainZone_ = std::move(drainZone);
	Status back = putBack(before, touched, current ? current : previous, generation - 1, next.uplink);
	if (!back)
		return Error(result.error().message() + "; putting back the previous state failed too: " +
			     back.error().message());
	return result.error();
}

Status Applier::putBack(const Before &before, const Touched &touched, const plan::Plan *previous,
			uint64_t previousGeneration, const std::string &uplink)
{
	std::string failed;
	auto note = [&](const Status &s) {
		if (!s)
			failed += (failed.empty() ? "" : "; ") + s.error().message();
	};
#ifdef PORTSLICE_HAVE_XDP
	if (touched.xdp) {
		if (!before.forwarder)
			note(xdp::removeForwarder(uplink, pinDir()));
		else if (previous)
			note(xdp::applyForwarder(*previous, pinDir()));
		else
			note(Error("the XDP forwarder's maps of the previous generation are not known here"));
	}
#else
	(void)uplink;
#endif
	if (touched.nft) {
		if (!before.table)
			note(nft_.remove());
		else if (previous) {
			auto replaced = nft_.apply(*previous, nullptr, previousGeneration);
			if (!replaced)
				note(replaced.error());
		}
		else
			note(Error("the table of the previous generation is not known here"));
	}
	if (touched.routes)
		note(restoreRoutes(before.routes));
	if (touched.neighbours)
		note(restoreNeighbours(before.neighbours));
	if (touched.tuning)
		note(conntrack::restoreTuning(before.tuning, options_.stateDir));
	if (!failed.empty())
		return Error(failed);
	return {};
}

Result<ApplyResult> Applier::applySteps(const plan::Plan &next, const plan::Plan *current, uint64_t generation,
					Touched &touched)
{
	ApplyResult result;
	// First, so that the kernel resolves the forwarder's targets while the
	// other steps run: the forwarder reads what is resolved by then.
	touched.neighbours = true;
	if (Status n = syncNeighbours(next, &result.neighbours); !n)
		return n.error();
#ifdef PORTSLICE_HAVE_XDP
	auto syncXdp = [&]() -> Status {
		if (!options_.xdp)
			return {};
		touched.xdp = true;
		Status x = xdp::applyForwarder(next, pinDir());
		if (!x)
			return x.error().wrap("XDP forwarder on " + next.uplink);
		result.xdp = true;
		return {};
	};
	// A change of a running state: the forwarder learns a slice this server
	// gains before the table hands out its ports, so that the answers of its
	// first flows that land here are kept, not sent to the old owner. A full
	// apply changes the table first, the forwarder last.
	if (current) {
		if (Status x = syncXdp(); !x)
			return x.error();
	}
#endif

	// On the previous owner of a draining slice, answers find their zone in
	// drain_zone (their ports left ret_zone with the slice): filled before
	// the table changes, so that no answer meets neither map, and again
	// after it, for flows opened meanwhile or when the table was replaced.
	bool drains = conntrack::drainsAny(next);
	if (drains || drainFilled_) {
		std::vector<conntrack::DrainingFlow> flows;
		if (drains) {
			auto listed = conntrack::drainingFlows(next);
			if (!listed)
				return listed.error().wrap("listing the flows of draining slices");
			flows = std::move(*listed);
		}
		// A table without drain_zone (none yet, or an older one) gets it
		// with this apply; filled below.
		touched.nft = true;
		auto filled = fillDrainZone(drainZoneOf(flows));
		drainFilled_ = filled && *filled > 0;
	}

	touched.nft = true;
	auto report = nft_.apply(next, current, generation);
	if (!report)
		return report.error();
	result.nft = *report;

	touched.tuning = true;
	auto tuned = conntrack::tune(next.conntrack, options_.stateDir);
	if (!tuned)
		return tuned.error();
	result.tuning = *tuned;

	// Answers of iifname sources leave by their interface (fwmark routing).
	touched.routes = true;
	auto routes = applyRoutes(next);
	if (!routes)
		return routes.error();
	result.routes = *routes;

#ifdef PORTSLICE_HAVE_XDP
	if (!current) {
		if (Status x = syncXdp(); !x)
			return x.error();
	}
#endif

	// Flows of slices that moved away would keep their old NAT port here;
	// their answers now go to the new owner. Those of slices this server
	// still drains stay, and their answers' zones fill drain_zone. Last:
	// deleted entries cannot be put back.
	std::vector<conntrack::DrainingFlow> draining;
	auto deleted = conntrack::deleteMovedAway(next, &draining);
	if (!deleted)
		return deleted.error();
	result.conntrackDeleted = *deleted;
	if (drains) {
		auto filled = fillDrainZone(drainZoneOf(draining));
		if (!filled)
			return filled.error();
		result.drainingFlows = *filled;
		drainFilled_ = *filled > 0;
	}
	return result;
}

namespace {

// Conntrack can hold flows of a moved slice only when a conntrack source had
// ports in it, and every such source is among the users the move re-planned.
// Without one, the walks of the conntrack table (~10 ms each, however empty
// it is) would find nothing.
bool conntrackUsers(const plan::Plan &plan, const plan::SliceMove &move)
{
	return std::any_of(move.sources.begin(), move.sources.end(), [&](const plan::SliceMove::Source &s) {
		return plan.sources[s.index].mode == plan::NatMode::Conntrack;
	});
}

#ifdef PORTSLICE_HAVE_XDP
// The forwarder's slice words that moves change: each moved slice, and the
// slices this server takes over from a draining owner on the addresses a
// move handed out again (they carry the zones of their ports, which change
// with them). Each once, the moved slices first.
std::vector<xdp::SliceRef> forwarderSlices(const plan::Plan &plan, const std::vector<const plan::SliceMove *> &moves)
{
	const auto self = static_cast<int32_t>(plan.serverIndex);
	std::set<std::pair<uint32_t, uint32_t>> seen;
	std::vector<xdp::SliceRef> out;
	auto add = [&](uint32_t address, uint32_t slice) {
		if (seen.insert({address, slice}).second)
			out.push_back({address, slice});
	};
	for (const plan::SliceMove *m : moves)
		add(m->address, m->slice);
	for (const plan::SliceMove *m : moves)
		for (uint32_t ai : m->reallocated) {
			const plan::PlannedAddress &a = plan.addresses[ai];
			for (uint32_t i = 0; i < a.sliceCount; i++)
				if (a.owner[i] == self && a.previousOf(i) != plan::kNoServer)
					add(ai, i);
		}
	return out;
}
#endif

} // namespace

// The nftables part of one or many slice moves (`drains`: this server
// starts draining a slice, so the egress maps go first; unless no flow can
// be in it, `flows` false).
Result<nft::ApplyReport> Applier::applyDelta(nft::MoveDelta delta, bool drains, bool flows, const plan::Plan &plan,
					     uint64_t generation)
{
	if (drains && flows) {
		// This server starts draining the slice. First no new flow takes
		// its ports (the egress maps), then the flows that exist now are
		// listed, and their answers' zones (drain_zone) come in the same
		// transaction as the slice leaves ret_zone: no answer meets
		// neither map.
		std::vector<nft::Set> egressBefore, egressAfter, restBefore, restAfter;
		for (size_t i = 0; i < delta.after.size(); i++) {
			bool egress = delta.after[i].egress;
			(egress ? egressBefore : restBefore).push_back(std::move(delta.before[i]));
			(egress ? egressAfter : restAfter).push_back(std::move(delta.after[i]));
		}
		auto stopped = nft_.applyDelta(egressBefore, egressAfter, std::nullopt);
		if (!stopped)
			return stopped.error();
		auto listed = conntrack::drainingFlows(plan);
		if (!listed)
			return listed.error().wrap("listing the flows of draining slices");
		nft::Set zones = drainZoneOf(*listed);
		auto report = nft_.applyDelta(restBefore, restAfter, generation, &zones);
		if (!report)
			return report.error();
		drainZone_ = std::move(zones);
		report->elementsAdded += stopped->elementsAdded;
		report->elementsDeleted += stopped->elementsDeleted;
		report->messages += stopped->messages;
		report->bytes += stopped->bytes;
		return report;
	}
	return nft_.applyDelta(delta.before, delta.after, generation);
}

Result<ApplyResult> Applier::applyMove(const plan::Plan &plan, const plan::SliceMove &move, uint64_t generation)
{
	using Clock = std::chrono::steady_clock;
	auto ms = [](Clock::time_point from) {
		return std::chrono::duration<double, std::milli>(Clock::now() - from).count();
	};
	ApplyResult result;
	Clock::time_point t = Clock::now();
	const auto self = static_cast<int32_t>(plan.serverIndex);
	const plan::PlannedAddress &now = plan.addresses[move.address];
	bool gains = move.before.owner[move.slice] != self && now.owner[move.slice] == self;
#ifdef PORTSLICE_HAVE_XDP
	auto syncXdp = [&]() -> Status {
		if (!options_.xdp)
			return {};
		t = Clock::now();
		if (Status n = addMovedTargets(plan, {&move}); !n)
			return n;
		std::vector<xdp::SliceRef> changed = forwarderSlices(plan, {&move});
		Status x = options_.xdpPinDir.empty() ? xdp::applyForwarderSlices(plan, changed)
						      : xdp::applyForwarderSlices(plan, changed, options_.xdpPinDir);
		if (!x)
			return x.error().wrap("XDP forwarder on " + plan.uplink);
		result.xdp = true;
		result.xdpMs = ms(t);
		return {};
	};
	// A slice this server gains: the forwarder keeps its answers before the
	// table hands out its ports (see apply()).
	if (gains) {
		if (Status x = syncXdp(); !x)
			return x.error();
	}
#endif
	bool drains = now.drainedBy(move.slice, plan.serverIndex);
	bool drainWork = drains || move.before.drainedBy(move.slice, plan.serverIndex) || drainFilled_;
	bool flows = drainFilled_ || conntrackUsers(plan, move);

	t = Clock::now();
	auto report = applyDelta(nft::moveDelta(plan, move), drains, flows, plan, generation);
	if (!report)
		return report.error();
	result.nft = *report;
	result.nftMs = ms(t);

	if (flows && ((move.before.owner[move.slice] == self && now.owner[move.slice] != self) || drainWork)) {
		t = Clock::now();
		std::vector<conntrack::DrainingFlow> draining;
		auto deleted = conntrack::deleteMovedAway(plan, &draining);
		if (!deleted)
			return deleted.error();
		result.conntrackDeleted = *deleted;
		if (drainWork) {
			auto filled = fillDrainZone(drainZoneOf(draining));
			if (!filled)
				return filled.error();
			result.drainingFlows = *filled;
			drainFilled_ = *filled > 0;
		}
		result.conntrackMs = ms(t);
	}
#ifdef PORTSLICE_HAVE_XDP
	if (!gains) {
		if (Status x = syncXdp(); !x)
			return x.error();
	}
#endif
	return result;
}

Result<ApplyResult> Applier::applyMoves(const plan::Plan &plan, const std::vector<plan::SliceMove> &moves,
					uint64_t generation)
{
	using Clock = std::chrono::steady_clock;
	auto ms = [](Clock::time_point from) {
		return std::chrono::duration<double, std::milli>(Clock::now() - from).count();
	};
	ApplyResult result;
	Clock::time_point t = Clock::now();
	const auto self = static_cast<int32_t>(plan.serverIndex);
	bool gains = false, loses = false, drains = false, drained = false;
	// Each address as before its first move (moves of one address follow each other).
	std::map<uint32_t, const plan::PlannedAddress *> first;
	for (const plan::SliceMove &m : moves)
		first.emplace(m.address, &m.before);
	for (const plan::SliceMove &m : moves) {
		const plan::PlannedAddress &was = *first.at(m.address);
		const plan::PlannedAddress &now = plan.addresses[m.address];
		gains = gains || (was.owner[m.slice] != self && now.owner[m.slice] == self);
		loses = loses || (was.owner[m.slice] == self && now.owner[m.slice] != self);
		drains = drains || now.drainedBy(m.slice, plan.serverIndex);
		drained = drained || was.drainedBy(m.slice, plan.serverIndex);
	}
#ifdef PORTSLICE_HAVE_XDP
	auto syncXdp = [&]() -> Status {
		if (!options_.xdp)
			return {};
		t = Clock::now();
		std::vector<const plan::SliceMove *> all;
		for (const plan::SliceMove &m : moves)
			all.push_back(&m);
		if (Status n = addMovedTargets(plan, all); !n)
			return n;
		// Slice by slice costs a walk of the sources each: past a few
		// hundred slices one sync of the whole maps is cheaper (40 ms at
		// 10,000 addresses, docs/performance.md).
		Status x;
		if (moves.size() > 256) {
			x = options_.xdpPinDir.empty() ? xdp::applyForwarder(plan)
						       : xdp::applyForwarder(plan, options_.xdpPinDir);
		} else {
			std::vector<xdp::SliceRef> changed = forwarderSlices(plan, all);
			x = options_.xdpPinDir.empty() ? xdp::applyForwarderSlices(plan, changed)
						       : xdp::applyForwarderSlices(plan, changed, options_.xdpPinDir);
		}
		if (!x)
			return x.error().wrap("XDP forwarder on " + plan.uplink);
		result.xdp = true;
		result.xdpMs = ms(t);
		return {};
	};
	// As applyMove: the forwarder keeps the answers of slices this server gains before the table hands them out.
	if (gains) {
		if (Status x = syncXdp(); !x)
			return x.error();
	}
#endif
	bool drainWork = drains || drained || drainFilled_;
	bool flows = drainFilled_ || std::any_of(moves.begin(), moves.end(), [&](const plan::SliceMove &m) {
			     return conntrackUsers(plan, m);
		     });

	t = Clock::now();
	auto report = applyDelta(nft::movesDelta(plan, moves), drains, flows, plan, generation);
	if (!report)
		return report.error();
	result.nft = *report;
	result.nftMs = ms(t);

	if (flows && (loses || drainWork)) {
		t = Clock::now();
		std::vector<conntrack::DrainingFlow> draining;
		auto deleted = conntrack::deleteMovedAway(plan, &draining);
		if (!deleted)
			return deleted.error();
		result.conntrackDeleted = *deleted;
		if (drainWork) {
			auto filled = fillDrainZone(drainZoneOf(draining));
			if (!filled)
				return filled.error();
			result.drainingFlows = *filled;
			drainFilled_ = *filled > 0;
		}
		result.conntrackMs = ms(t);
	}
#ifdef PORTSLICE_HAVE_XDP
	if (!gains) {
		if (Status x = syncXdp(); !x)
			return x.error();
	}
#endif
	return result;
}

Status Applier::syncNeighbours(const plan::Plan &plan, NeighboursReport *report)
{
	// Without the forwarder nothing needs them: portslice's entries go.
	std::vector<NeighbourTarget> targets;
	if (options_.xdp)
		targets = neighbourTargets(plan);
	auto done = applyNeighbours(plan.uplink, targets);
	if (!done)
		return done.error();
	neighbourTargets_.clear();
	for (const NeighbourTarget &t : targets)
		neighbourTargets_.insert(t.address);
	if (report)
		*report = std::move(*done);
	return {};
}

Status Applier::addMovedTargets(const plan::Plan &plan, const std::vector<const plan::SliceMove *> &moves)
{
	// Only the moved slices' servers are looked at: a move costs the same
	// however big the fleet.
	bool missing = false;
	for (const plan::SliceMove *m : moves) {
		const plan::PlannedAddress &a = plan.addresses[m->address];
		if (!a.local)
			continue;
		for (int32_t s : {a.owner[m->slice], a.previousOf(m->slice)}) {
			if (s < 0 || static_cast<size_t>(s) >= plan.servers.size() ||
			    static_cast<uint32_t>(s) == plan.serverIndex)
				continue;
			const plan::PlannedServer &server = plan.servers[static_cast<size_t>(s)];
			if (!server.mac && !neighbourTargets_.count(server.address))
				missing = true;
		}
	}
	if (!missing)
		return {};
	if (Status n = syncNeighbours(plan, nullptr); !n)
		return n.error().wrap("managed neighbour entry of a slice's new owner");
	return {};
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
	s = removeNeighbours();
	if (!s)
		return s;
	return conntrack::restore(options_.stateDir);
}

} // namespace portslice::daemon
