// SPDX-License-Identifier: MIT
// Watches nftables commits over netlink (NFNLGRP_NFTABLES) and reports those of other processes that touch our table.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/netlink.h"
#include "common/result.h"
#include "nft/model.h"
#include "nft/netlink.h"

namespace portslice::daemon {

// Elements added to or deleted from a set of the watched table, as the
// kernel announced them: `elements` is the NFTA_SET_ELEM_LIST_ELEMENTS
// attribute of the event, header included, byte for byte.
struct ElementEdit {
	bool added = false;
	std::string set;
	std::string elements;
};

// A commit by someone else that changed the watched table.
struct ForeignChange {
	uint32_t pid = 0;     // 0 when events were lost
	std::string process;  // comm of the committing process, if the kernel said
	// The commit only added or deleted elements, and every one of them is
	// here, in commit order: undoing them restores the table (a delta).
	bool onlyElements = false;
	std::vector<ElementEdit> edits;
	// The commit only added or deleted rules of these chains (with the
	// anonymous sets of their `{ tcp, udp }`): rewriting the chains'
	// rules restores the table.
	bool onlyRules = false;
	std::vector<std::string> chains;
	// The socket overflowed (our own full replace of a large table does
	// that): who changed what is unknown, the table must be compared.
	bool lost() const { return pid == 0; }
	// Lost events: the kernel's generation counted more commits than this
	// process made, so someone else's commit was among them.
	bool foreignLost = false;
	std::string str() const;
};

class NftMonitor {
public:
	// Watch table `family name` in the current network namespace.
	static Result<NftMonitor> open(uint8_t family, std::string table);

	int fd() const { return mnl_socket_get_fd(socket_.get()); }

	// Read every pending event (non-blocking). Returns the last foreign
	// commit that touched the table, if any, or a lost() change when the
	// socket overflowed (ENOBUFS). A later foreign commit in the same read
	// replaces an earlier one's edits: then it is not onlyElements.
	Result<std::optional<ForeignChange>> read();

	// What the commit being read so far did to the table.
	struct Commit {
		std::vector<ElementEdit> edits;
		std::vector<std::string> ruleChains; // chains whose rules changed, first change first
		size_t bytes = 0;
		bool other = false;    // a table, chain, rule, set or object changed
		bool overflow = false; // more element bytes than kept: not recorded
		// Netlink port of the committing socket, which every event of a
		// commit carries: an event of another port starts another commit
		// (the NEWGEN of the one before was lost in an overflow).
		std::optional<uint32_t> port;
		void clear() { *this = Commit{}; }
	};
	// Element bytes of one commit kept for an undo; past it, a full restore.
	static constexpr size_t kMaxEditBytes = 16u << 20;

private:
	NftMonitor(MnlSocket socket, uint8_t family, std::string table)
		: socket_(std::move(socket)), family_(family), table_(std::move(table)) {}

	MnlSocket socket_;
	uint8_t family_;
	std::string table_;
	uint32_t self_ = 0;
	// The generation of the last NEWGEN read, and how many of this
	// process's commits had been seen by then: after an overflow, the
	// kernel's generation tells whether commits of others were lost too.
	uint32_t lastGen_ = 0;
	uint64_t ownSeen_ = 0;
	std::optional<nft::Socket> query_; // asks for the generation
	bool foreignCommitsLost();
	bool touched_ = false; // an object of the table changed since the last NEWGEN
	Commit commit_;
};

// Undo `edits` (delete what was added, add what was deleted) in table
// inet portslice, in one transaction.
Status undoElementEdits(const std::vector<ElementEdit> &edits);

// Flush the rules of `chains` and add the model's rules back, in one
// transaction (the chains must be the model's).
Status rewriteChains(const nft::TableModel &model, const std::vector<std::string> &chains);

} // namespace portslice::daemon
