// SPDX-License-Identifier: MIT
// Applier: puts a Plan into the kernel (nftables table, conntrack tuning and clean-up, routes of iifname sources, XDP hook) and takes it out again.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>

#include "common/result.h"
#include "conntrack/conntrack.h"
#include "daemon/neighbours.h"
#include "daemon/routes.h"
#include "nft/apply.h"
#include "plan/plan.h"

namespace portslice::daemon {

struct ApplierOptions {
	// Where the values that apply() changed are kept, so that remove()
	// restores them even from another process (`portsliced --remove`).
	std::string stateDir = "/var/lib/portslice";
	// Attach and sync the XDP forwarder on the uplink (when built with XDP).
	bool xdp = true;
	std::string xdpPinDir; // empty: the forwarder's default under /sys/fs/bpf
};

struct ApplyResult {
	nft::ApplyReport nft;
	conntrack::TuneReport tuning;
	size_t conntrackDeleted = 0; // entries whose NAT port this server no longer owns
	size_t drainingFlows = 0;    // drain_zone elements: flows of slices this server drains
	RoutesReport routes;         // return routing of iifname sources
	NeighboursReport neighbours; // managed neighbour entries of the forwarder's targets
	bool xdp = false;            // the forwarder was attached and synced
	// Milliseconds spent in each part, for the log.
	double nftMs = 0, conntrackMs = 0, xdpMs = 0;
};

class Applier {
public:
	static Result<Applier> open(ApplierOptions options = {});

	// Apply `next` as `generation`. `current` is what the kernel holds now
	// (nullptr: unknown, replace everything). All or nothing: what can be
	// checked is checked before the first change (the uplink exists, the pin
	// directory is on bpffs), and when a later step fails every step done
	// is put back: the table, sysctls, routes, managed neighbour entries
	// and forwarder as they were
	// (`current` as generation - 1), or removed when there were none. Only
	// a table or forwarder that was there while `current` is unknown cannot
	// be put back; the error then says so.
	// `previous`: when `current` is unknown, the plan the kernel holds as
	// far as the caller knows (it is put back on failure, not diffed against).
	Result<ApplyResult> apply(const plan::Plan &next, const plan::Plan *current, uint64_t generation,
				  const plan::Plan *previous = nullptr);

	// One slice changed owner (`plan` is after the move): only the elements
	// the move changed, the conntrack entries of a lost slice and the
	// forwarder's word of that slice. Conntrack tuning and routes do not
	// depend on slices; a slice's new owner without `mac` that had no
	// managed neighbour entry gets one (the next apply removes unneeded ones). A failure in the nftables part changes nothing.
	// The table's set `generation` becomes `generation` with the elements.
	Result<ApplyResult> applyMove(const plan::Plan &plan, const plan::SliceMove &move, uint64_t generation);
	// Many moves made one after another on `plan` (SetSliceOwners): the same
	// as applyMove, with one nftables transaction for all of them (two when
	// this server starts draining a slice: the egress maps first).
	Result<ApplyResult> applyMoves(const plan::Plan &plan, const std::vector<plan::SliceMove> &moves,
				       uint64_t generation);

	// Undo everything apply() did: table, routes and rules, managed
	// neighbour entries, sysctls, XDP.
	// `uplink` (if known) is checked against the forwarder's interface.
	Status remove(const std::string &uplink = {});

	nft::NftApplier &nft() { return nft_; }
	// drain_zone as this applier filled it last (from the conntrack table:
	// the plan alone does not tell its elements).
	const nft::Set &drainZone() const { return drainZone_; }

private:
	Result<nft::ApplyReport> applyDelta(nft::MoveDelta delta, bool drains, bool flows, const plan::Plan &plan,
					    uint64_t generation);
	Applier(ApplierOptions options, nft::NftApplier nft) : options_(std::move(options)), nft_(std::move(nft)) {}

	// The kernel's portslice state before an apply, to put back.
	struct Before {
		conntrack::TuningSnapshot tuning;
		RoutesSnapshot routes;
		NeighboursSnapshot neighbours;
		bool table = false;     // table inet portslice existed
		bool forwarder = false; // a forwarder link was pinned
	};
	// The steps an apply started (each may have changed something).
	struct Touched {
		bool nft = false, tuning = false, routes = false, neighbours = false, xdp = false;
	};
	Status precheck(const plan::Plan &next) const;
	std::string pinDir() const;
	Result<ApplyResult> applySteps(const plan::Plan &next, const plan::Plan *current, uint64_t generation,
				       Touched &touched);
	Status syncNeighbours(const plan::Plan &plan, NeighboursReport *report);
	// After moves: a new forwarding target without a MAC gets its entry.
	Status addMovedTargets(const plan::Plan &plan, const std::vector<const plan::SliceMove *> &moves);
	Status putBack(const Before &before, const Touched &touched, const plan::Plan *previous,
		       uint64_t previousGeneration, const std::string &uplink);

	ApplierOptions options_;
	nft::NftApplier nft_;
	bool drainFilled_ = false; // drain_zone holds elements (flushed when no slice drains here)
	std::set<Ipv4> neighbourTargets_; // targets given managed entries by the last apply
	nft::Set drainZone_ = nft::drainZoneSet();
	Result<size_t> fillDrainZone(nft::Set zones);
};

} // namespace portslice::daemon
