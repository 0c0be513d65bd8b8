// SPDX-License-Identifier: MIT
// Applier: puts a Plan into the kernel (nftables table, conntrack tuning and clean-up, routes of iifname sources, XDP hook) and takes it out again.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "common/result.h"
#include "conntrack/conntrack.h"
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
	bool xdp = false;            // the forwarder was attached and synced
	// Milliseconds spent in each part, for the log.
	double nftMs = 0, conntrackMs = 0, xdpMs = 0;
};

class Applier {
public:
	static Result<Applier> open(ApplierOptions options = {});

	// Apply `next` as `generation`. `current` is what the kernel holds now
	// (nullptr: unknown, replace everything). The nftables part is one
	// transaction; it goes first, so a failure there changes nothing else.
	Result<ApplyResult> apply(const plan::Plan &next, const plan::Plan *current, uint64_t generation);

	// One slice changed owner (`plan` is after the move): only the elements
	// the move changed, the conntrack entries of a lost slice and the
	// forwarder's word of that slice. Conntrack tuning and routes do not
	// depend on slices. A failure in the nftables part changes nothing.
	Result<ApplyResult> applyMove(const plan::Plan &plan, const plan::SliceMove &move);
	// Many moves made one after another on `plan` (SetSliceOwners): the same
	// as applyMove, with one nftables transaction for all of them (two when
	// this server starts draining a slice: the egress maps first).
	Result<ApplyResult> applyMoves(const plan::Plan &plan, const std::vector<plan::SliceMove> &moves);

	// Undo everything apply() did: table, routes and rules, sysctls, XDP.
	// `uplink` (if known) is checked against the forwarder's interface.
	Status remove(const std::string &uplink = {});

	nft::NftApplier &nft() { return nft_; }

private:
	Applier(ApplierOptions options, nft::NftApplier nft) : options_(std::move(options)), nft_(std::move(nft)) {}

	ApplierOptions options_;
	nft::NftApplier nft_;
	bool drainFilled_ = false; // drain_zone holds elements (flushed when no slice drains here)
};

} // namespace portslice::daemon
