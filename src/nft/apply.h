// SPDX-License-Identifier: MIT
// NftApplier: puts the portslice table of a Plan into the kernel in one netlink transaction (full replace or element delta).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "nft/model.h"
#include "nft/netlink.h"
#include "nft/wire.h"
#include "plan/plan.h"

namespace portslice::nft {

struct ApplyReport {
	bool fullReplace = false;   // false: element delta on the existing table
	bool created = false;       // ... where no table was live (see create)
	size_t messages = 0;        // netlink messages in the transaction(s)
	size_t bytes = 0;           // bytes of the transaction(s)
	// A table made where none was live: filled dormant, in this many
	// transactions (see create). 1: one transaction did it all.
	size_t transactions = 1;
	size_t elementsAdded = 0;
	size_t elementsDeleted = 0;
	std::string comment;        // a full replace: the table's new comment (tableComment)
};

struct CounterValue {
	std::string name; // "src_warp-gb", "guard_other", "addr_198.51.100.1"
	uint64_t packets = 0;
	uint64_t bytes = 0;
};

// What the table's comment says about the applied state.
struct TableState {
	std::string comment;
	uint64_t generation = 0;
	uint64_t planHash = 0;
	std::string server;
};

// Parse "portslice generation G plan HASH16 server NAME".
std::optional<TableState> parseComment(const std::string &comment);

class NftApplier {
public:
	static Result<NftApplier> open();

	// Apply `next` as generation `generation`. With `current` (the plan the
	// kernel holds now) and the same structure, only differing elements and
	// counters change; otherwise the table is replaced. Either way it is one
	// transaction: on error the kernel keeps the old table untouched.
	Result<ApplyReport> apply(const plan::Plan &next, const plan::Plan *current, uint64_t generation);
	Result<ApplyReport> applyModel(const TableModel &next, const TableModel *current);

	// Change only the elements that differ between `before` and `after`
	// (the same sets of the applied table, in the same order): one small
	// transaction, never a replace. Fails, and the kernel keeps what it
	// had, when the table is missing or does not hold `before`.
	// With `generation`, the set `generation` is given it in the same
	// transaction (nullopt: a first step of a change, the generation comes
	// with its last).
	// With `fill`: in the same transaction, the set `fill->name` is flushed
	// and given fill's elements (see fillSet).
	Result<ApplyReport> applyDelta(const std::vector<Set> &before, const std::vector<Set> &after,
				       std::optional<uint64_t> generation, const Set *fill = nullptr);

	// Replace every element of the existing set `set.name` with `set.elements`
	// (flush and add in one transaction). For the sets the model leaves empty
	// and the daemon fills from the kernel (drain_zone). Returns how many.
	Result<size_t> fillSet(const Set &set);

	// Delete the table (nothing to do when absent).
	Status remove();

	// The applied generation and plan hash, or nullopt when no table exists.
	// The generation is the set `generation`'s (deltas update it); the plan
	// hash is the comment's, of the last full replace.
	Result<std::optional<TableState>> readState();
	// The element of the set `generation` (32 bits), or nullopt when the
	// table or the set is missing.
	Result<std::optional<uint64_t>> readGeneration();
	// The elements of a set of the table as the kernel holds them, in the
	// order it walks them (ENOENT when the table or the set is missing).
	Result<std::vector<WireElem>> readElements(const std::string &set);
	// The same, one element at a time as the dump arrives.
	Status forEachElement(const std::string &set, const std::function<void(WireElem &&)> &take);

	// The elements of a concatenated interval set `set` in the order the
	// kernel holds them (the order they were added, which nft lists): so
	// rendered, the table lists as `nft -s list table` lists the live one
	// when both hold the same elements. Elements the kernel lacks go last,
	// in their order. Other sets are left as they are.
	Status orderAsListed(const Set &set, std::vector<Element> &elements);

	// Every named counter of the table, or with `egress` of table netdev
	// portslice_egress (none when it is missing).
	Result<std::vector<CounterValue>> readCounters(bool egress = false);

private:
	// The whole table in one transaction that deletes the old one. With
	// `plan`, empty port sets of `model` are filled from it one set at a time,
	// and each set's elements are freed once encoded: a large table is never
	// held whole beside its batch.
	Result<ApplyReport> replace(TableModel &model, const plan::Plan *plan);
	// No live table to keep (none, or a dormant one a creation left): the
	// table is made dormant, filled in transactions of about a megabyte, and
	// woken in the last one. No packet sees it before it is whole, and no
	// batch of the whole table is held (15.6 MB at 10,000 sources, more
	// than the daemon's state). On error the dormant table is deleted.
	Result<ApplyReport> create(TableModel &model, const plan::Plan *plan);
	// Only the elements and counters that differ, when the structure is the
	// same (else replace). With both plans, port sets are built from them.
	Result<ApplyReport> delta(TableModel &next, TableModel &current, const plan::Plan *nextPlan,
				  const plan::Plan *currentPlan);

	explicit NftApplier(Socket sock) : sock_(std::move(sock)) {}

	Socket sock_;
	uint32_t seq_ = 0;
	bool lastTableSeen_ = false; // the last readState() found a table
	bool lastTableDormant_ = false; // ... made dormant by a creation that did not finish
};

} // namespace portslice::nft
