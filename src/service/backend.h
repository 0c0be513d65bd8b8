// SPDX-License-Identifier: MIT
// What the service needs from the kernel side: apply a plan, tell drift, read counters. The daemon gives the real one.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "plan/plan.h"

namespace portslice::service {

// One row of Stats(): (kind, name, counter, value), as the D-Bus a(ssst).
struct StatRow {
	std::string kind;    // source, address, guard, xdp, zone, slice
	std::string name;    // source name, address, "198.51.100.1/3" for a slice, ...
	std::string counter; // packets, bytes, drops, entries, ports_in_use, percent_in_use, ...
	uint64_t value = 0;
	auto operator<=>(const StatRow &) const = default;
};

class Backend {
public:
	virtual ~Backend() = default;

	// Make the kernel match `plan`. `old` is what is applied now (nullptr when
	// unknown: replace everything). On error the kernel keeps what it had.
	virtual Status apply(const plan::Plan &plan, const plan::Plan *old, uint64_t generation) = 0;

	// One slice changed owner: `plan` is after the move, `move` holds what
	// changed. Same contract as apply(); by default the plan is applied whole.
	virtual Status applyMove(const plan::Plan &plan, const plan::SliceMove &move, uint64_t generation)
	{
		(void)move;
		return apply(plan, nullptr, generation);
	}

	// Many slices changed owner (SetSliceOwners): `moves` were made one after
	// another on `plan`. Same contract; by default the plan is applied whole.
	virtual Status applyMoves(const plan::Plan &plan, const std::vector<plan::SliceMove> &moves, uint64_t generation)
	{
		(void)moves;
		return apply(plan, nullptr, generation);
	}

	// How the kernel differs from `plan` (table missing or edited, forwarder
	// detached); empty when in sync.
	virtual Result<std::string> drift(const plan::Plan &plan, uint64_t generation) = 0;

	virtual Result<std::vector<StatRow>> stats(const plan::Plan &plan) = 0;

	// The live kernel against `plan`, one line per difference (object and
	// element); empty when equal. By default: what drift() tells.
	virtual Result<std::vector<std::string>> audit(const plan::Plan &plan, uint64_t generation)
	{
		Result<std::string> drifted = drift(plan, generation);
		if (!drifted)
			return drifted.error();
		if (drifted->empty())
			return std::vector<std::string>{};
		return std::vector<std::string>{*drifted};
	}

	// The table as applied, in `nft -f` syntax (what `portslicectl dump` prints).
	virtual std::string dump(const plan::Plan &plan, uint64_t generation) = 0;

	// The generation the kernel holds from an earlier run (the daemon
	// continues from it, so generations grow across restarts), if any.
	virtual std::optional<uint64_t> appliedGeneration() { return std::nullopt; }
};

} // namespace portslice::service
