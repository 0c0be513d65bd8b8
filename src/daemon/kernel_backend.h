// SPDX-License-Identifier: MIT
// The service's Backend on the real kernel: the Applier (nft delta or replace, conntrack clean-up), counters, drift.
#pragma once

#include <chrono>
#include <optional>

#include "daemon/applier.h"
#include "daemon/kernel_stats.h"
#include "service/backend.h"

namespace portslice::daemon {

class KernelBackend final : public service::Backend {
public:
	// `xdp`: the Applier attaches the forwarder, pinned in `xdpPinDir` (empty: its default).
	KernelBackend(Applier &applier, bool xdp, std::string xdpPinDir)
		: applier_(applier), xdp_(xdp), xdpPinDir_(std::move(xdpPinDir)) {}

	Status apply(const plan::Plan &plan, const plan::Plan *old, uint64_t generation) override;
	Status applyMove(const plan::Plan &plan, const plan::SliceMove &move, uint64_t generation) override;
	Status applyMoves(const plan::Plan &plan, const std::vector<plan::SliceMove> &moves, uint64_t generation) override;
	// A missing table, a comment other than the one the last apply left, or
	// a set `generation` that does not name `generation` is drift. (An
	// element delta keeps the comment of the last full replace: the kernel
	// cannot update a table's comment in place; it refills the set.) Other
	// edits inside the table keep both; the nftables event monitor catches those.
	// With the forwarder: no XDP program on the uplink is drift too.
	Result<std::string> drift(const plan::Plan &plan, uint64_t generation) override;
	Result<std::vector<service::StatRow>> stats(const plan::Plan &plan) override;
	// What `nft -s list table inet portslice` lists against dump(): each
	// object, statement and element that differs; then drift() (the forwarder).
	// Elements are read back over netlink and compared typed, element by
	// element (missing, in the kernel only, another value); the rest (sets,
	// chains and rules, counters, comment) as nft lists it.
	Result<std::vector<std::string>> audit(const plan::Plan &plan, uint64_t generation) override;
	std::string dump(const plan::Plan &plan, uint64_t generation) override;
	std::optional<uint64_t> appliedGeneration() override;

private:
	Applier &applier_;
	bool xdp_;
	std::string xdpPinDir_;
	std::string comment_; // what the table's comment is after our last apply
	size_t replacedElements_ = 0; // added by the last full replace
	size_t dumpBytes_ = 0;        // of the last dump()
	// The table the kernel should hold now: the plan's, with the comment and
	// drain_zone as applied.
	// `portElements` false: the port sets left empty (see nft::buildModel).
	nft::TableModel planned(const plan::Plan &plan, uint64_t generation, bool portElements = true);

	// Stats() at 100k conntrack entries: the table walk runs at most once
	// per kConntrackUseMaxAge however often Stats() is called (callers get
	// a snapshot at most that old); an apply starts afresh. The nft counters
	// are read on every call.
	static constexpr std::chrono::seconds kConntrackUseMaxAge{1};
	struct ConntrackUse {
		std::chrono::steady_clock::time_point when;
		std::vector<service::StatRow> rows;
	};
	std::optional<ConntrackUse> conntrackUse_;
	NatFailures natFailures_;
	CounterTotals counterTotals_; // src_*, addr_*, guard_*: monotonic across replaces
	// Both tables' counters into natFailures_ (the new_ ones first) and
	// counterTotals_, for the counters of `plan` (the one the tables hold).
	Status readNatFailures(const plan::Plan &plan);
};

} // namespace portslice::daemon
