// SPDX-License-Identifier: MIT
// RAII handles for libmnl/libnftnl objects and one nftables transaction (batch) sent and acknowledged as a whole.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <libnftnl/batch.h>
#include <libnftnl/chain.h>
#include <libnftnl/expr.h>
#include <libnftnl/object.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>

#include "common/handle.h"
#include "common/netlink.h"
#include "common/result.h"

struct nlmsghdr;

namespace portslice::nft {

using NftnlTable = Handle<nftnl_table, nftnl_table_free>;
using NftnlChain = Handle<nftnl_chain, nftnl_chain_free>;
using NftnlSet = Handle<nftnl_set, nftnl_set_free>;
using NftnlSetElem = Handle<nftnl_set_elem, nftnl_set_elem_free>;
using NftnlRule = Handle<nftnl_rule, nftnl_rule_free>;
using NftnlExpr = Handle<nftnl_expr, nftnl_expr_free>;
using NftnlObj = Handle<nftnl_obj, nftnl_obj_free>;
using NftnlBatch = Handle<nftnl_batch, nftnl_batch_free>;

// One nftables transaction: BEGIN, messages, END. Every message asks for an
// acknowledgement and carries a label, so that an error names its object.
class Batch {
public:
	Batch();

	// Start a message; the caller fills its payload, then calls commit().
	nlmsghdr *message(uint16_t type, uint16_t family, uint16_t flags, std::string label);
	void commit();
	void finish(); // appends END; no message after it

	size_t messages() const { return labelEnds_.size(); }
	// Pages of a megabyte the transaction fills so far (the last one partly).
	size_t pages() const;
	size_t bytes() const { return sentBytes_; } // known once sent
	void setBytes(size_t n) { sentBytes_ = n; }
	nftnl_batch *raw() { return batch_.get(); }
	uint32_t firstSeq() const { return firstSeq_; }
	uint32_t lastSeq() const { return firstSeq_ + static_cast<uint32_t>(labelEnds_.size()); }
	std::string labelOf(uint32_t seq) const;

private:
	NftnlBatch batch_;
	uint32_t firstSeq_ = 0;
	uint32_t seq_ = 0;
	// Per content message, from firstSeq_ + 1: its label ends at
	// labelEnds_[i] in labels_ (one string, not one each: a large table's
	// batch has a message per counter, 30,000 at 10,000 sources).
	std::string labels_;
	std::vector<uint32_t> labelEnds_;
	size_t sentBytes_ = 0;
};

// A netfilter netlink socket with buffers sized for large transactions.
class Socket {
public:
	static Result<Socket> open();

	// Send the whole transaction in one sendmsg (the kernel applies a batch
	// only as one unit) and read back every answer: an error for each failed
	// message, an acknowledgement of the last. The first error is returned
	// with the label of the message it belongs to (by sequence number).
	Status send(Batch &batch);

	// A request with NLM_F_ACK (or a dump); cb sees every answer message.
	Status request(nlmsghdr *nlh, const std::function<int(const nlmsghdr *)> &cb)
	{
		return sock_.request(nlh, cb);
	}

	uint32_t portId() const { return sock_.portId(); }

private:
	NetlinkSocket sock_;
	size_t sndbuf_ = 0;
	// Where send() reads the answers: allocated once and never cleared (a
	// megabyte zeroed per transaction was most of a slice move's own CPU).
	std::unique_ptr<char[]> answers_;
};

// How many transactions this process has committed through Socket::send.
uint64_t commitsSent();
// Whether events with this netlink port came from a socket Socket::open
// made in this process (the last 64 of them).
bool isOwnPort(uint32_t port);
// The kernel's nftables generation in this network namespace: it counts
// every committed transaction, anyone's (NFT_MSG_GETGEN).
Result<uint32_t> rulesetGeneration(Socket &sock);

// When PORTSLICE_NFT_DEBUG is set, every batch is printed to stderr the way
// `nft --debug=mnl` prints its own (to compare the two byte for byte).
bool debugMnl();

} // namespace portslice::nft
