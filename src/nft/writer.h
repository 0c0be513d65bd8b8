// SPDX-License-Identifier: MIT
// The batch writer: the model's table, chains, counters, sets, elements and rules as libnftnl messages of one Batch.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "nft/model.h"
#include "nft/netlink.h"
#include "nft/wire.h"

namespace portslice::nft {

class TableWriter {
public:
	explicit TableWriter(Batch &batch) : batch_(batch) {}
	// The messages of another table than inet portslice (the egress table).
	TableWriter(Batch &batch, const TableModel &table)
		: batch_(batch), family_(table.family == Family::Netdev ? 5 /* NFPROTO_NETDEV */ : 1 /* NFPROTO_INET */),
		  table_(table.tableName)
	{
	}

	// A dormant table's base chains hook nothing until wake() (in a later
	// transaction): no packet sees it while it is filled.
	void table(const std::string &comment, bool dormant = false);
	void wake();
	void deleteTable();
	void chain(const Chain &chain);
	void counter(const std::string &name, bool remove = false);
	void set(const Set &set); // the declaration, no elements
	void deleteSet(const std::string &name);
	void flushChain(const std::string &name); // all its rules, in the transaction
	void flushSet(const std::string &name);   // all its elements, in the transaction

	// Every rule of `chain`, appended in order.
	void rules(const Chain &chain);
	void rule(const std::string &chain, const Rule &rule);

	// Add `elements` to set `set.name` (created in this batch or not);
	// counts them into *count. `head` false: they follow earlier pieces
	// of the set (see wireElements).
	void elements(const Set &set, const std::vector<Element> &elements, size_t *count, bool head = true);
	// Only the kernel elements that differ between `before` and `after`.
	void delta(const Set &before, const Set &after, size_t *added, size_t *deleted);

	// The whole table in this batch (after deleteTable() when one exists),
	// `dormant` or not. With `plan`, empty port sets of `model` are filled
	// from it one set at a time, and each set's elements are freed once
	// encoded: a large table is never held whole beside its batch.
	void wholeTable(TableModel &model, const plan::Plan *plan, size_t *count, bool dormant = false);

	// Called after each counter and each piece of elements (never inside
	// one): a table made in several transactions sends the batch there.
	void setCheckpoint(std::function<void()> checkpoint) { checkpoint_ = std::move(checkpoint); }

private:
	uint32_t idOf(const std::string &name) const;
	void putElements(uint16_t msgType, const std::string &setName, uint32_t setId,
			 const std::vector<WireElem> &elems, const char *verb);
	uint32_t anonymousPair(const std::string &chain, uint32_t keyType, const Udata &typeofExpr, uint32_t byteorder,
			       uint8_t first, uint8_t second);

	friend class RuleEncoder;
	Batch &batch_;
	uint16_t family_ = 1; // NFPROTO_INET
	std::string table_ = kTableName;
	uint32_t setId_ = 0;
	std::map<std::string, uint32_t> ids_;
	std::function<void()> checkpoint_;
};

} // namespace portslice::nft
