// SPDX-License-Identifier: MIT
// nftables event parsing: object events mark the table touched, the NEWGEN that ends the commit names who did it.
#include "daemon/nft_monitor.h"

#include <algorithm>
#include <arpa/inet.h>
#include <cerrno>
#include <fcntl.h>
#include <sys/socket.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <cstring>
#include <unistd.h>
#include <vector>

#include "nft/model.h"
#include "nft/netlink.h"
#include "nft/writer.h"

namespace portslice::daemon {

std::string ForeignChange::str() const
{
	if (pid == 0)
		return "nftables events were lost";
	return "a commit by " + (process.empty() ? std::string("pid") : process + " pid") + " " + std::to_string(pid);
}

Result<NftMonitor> NftMonitor::open(uint8_t family, std::string table)
{
	MnlSocket socket(mnl_socket_open(NETLINK_NETFILTER));
	if (!socket)
		return Error(errno, "opening nftables event socket");
	if (mnl_socket_bind(socket.get(), 0, MNL_SOCKET_AUTOPID) < 0)
		return Error(errno, "binding nftables event socket");
	int group = NFNLGRP_NFTABLES;
	if (mnl_socket_setsockopt(socket.get(), NETLINK_ADD_MEMBERSHIP, &group, sizeof(group)) < 0)
		return Error(errno, "subscribing to nftables events");
	int fd = mnl_socket_get_fd(socket.get());
	// A full replace sends one event per element; room for tens of thousands
	// keeps most of our own commits from overflowing (as root, past rmem_max).
	int bytes = 16 << 20;
	(void)::setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof(bytes));
	if (::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK) < 0)
		return Error(errno, "making the nftables event socket non-blocking");
	NftMonitor monitor(std::move(socket), family, std::move(table));
	monitor.self_ = static_cast<uint32_t>(::getpid());
	Result<nft::Socket> query = nft::Socket::open();
	if (!query)
		return query.error();
	Result<uint32_t> gen = nft::rulesetGeneration(*query);
	if (!gen)
		return gen.error();
	monitor.query_ = std::move(*query);
	monitor.lastGen_ = *gen;
	monitor.ownSeen_ = nft::commitsSent();
	return monitor;
}

namespace {

// Every nf_tables object message carries its table name as attribute 1
// (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE,
// NFTA_SET_ELEM_LIST_TABLE, NFTA_OBJ_TABLE, NFTA_FLOWTABLE_TABLE).
constexpr uint16_t kTableAttr = 1;
static_assert(NFTA_GEN_PROC_NAME == 3 && NFTA_GEN_PROC_PID == 2);
static_assert(NFTA_TABLE_NAME == kTableAttr && NFTA_CHAIN_TABLE == kTableAttr && NFTA_RULE_TABLE == kTableAttr &&
	      NFTA_SET_TABLE == kTableAttr && NFTA_SET_ELEM_LIST_TABLE == kTableAttr &&
	      NFTA_OBJ_TABLE == kTableAttr && NFTA_FLOWTABLE_TABLE == kTableAttr);

struct Parse {
	uint8_t family;
	const std::string *table;
	uint32_t self;
	bool *touched;
	uint32_t *lastGen;
	uint64_t *ownSeen;
	std::optional<ForeignChange> *foreign;
	NftMonitor::Commit *commit;
};

int attrCallback(const nlattr *attr, void *data)
{
	auto *attrs = static_cast<const nlattr **>(data);
	uint16_t type = mnl_attr_get_type(attr);
	if (type <= NFTA_GEN_PROC_NAME)
		attrs[type] = attr;
	return MNL_CB_OK;
}

int messageCallback(const nlmsghdr *nlh, void *data)
{
	auto *p = static_cast<Parse *>(data);
	if (NFNL_SUBSYS_ID(nlh->nlmsg_type) != NFNL_SUBSYS_NFTABLES)
		return MNL_CB_OK;
	uint16_t type = NFNL_MSG_TYPE(nlh->nlmsg_type);
	const auto *gen = static_cast<const nfgenmsg *>(mnl_nlmsg_get_payload(nlh));
	const nlattr *attrs[4] = {};
	if (mnl_attr_parse(nlh, sizeof(nfgenmsg), attrCallback, attrs) < 0)
		return MNL_CB_OK; // a message we cannot read says nothing about our table

	if (type == NFT_MSG_NEWGEN) {
		uint32_t pid = 0;
		if (attrs[NFTA_GEN_PROC_PID] && mnl_attr_validate(attrs[NFTA_GEN_PROC_PID], MNL_TYPE_U32) == 0)
			pid = ntohl(mnl_attr_get_u32(attrs[NFTA_GEN_PROC_PID]));
		if (attrs[NFTA_GEN_ID] && mnl_attr_validate(attrs[NFTA_GEN_ID], MNL_TYPE_U32) == 0)
			*p->lastGen = ntohl(mnl_attr_get_u32(attrs[NFTA_GEN_ID]));
		if (pid == p->self)
			++*p->ownSeen;
		if (*p->touched) {
			// Without a pid (very old kernels) the periodic check has to do.
			if (pid != 0 && pid != p->self) {
				std::string process;
				if (attrs[NFTA_GEN_PROC_NAME] &&
				    mnl_attr_validate(attrs[NFTA_GEN_PROC_NAME], MNL_TYPE_NUL_STRING) == 0)
					process = mnl_attr_get_str(attrs[NFTA_GEN_PROC_NAME]);
				ForeignChange change{pid, process, false, {}};
				NftMonitor::Commit &c = *p->commit;
				bool whole = !c.other && !c.overflow && !*p->foreign && c.port == nlh->nlmsg_pid;
				change.onlyElements = whole && !c.edits.empty() && c.ruleChains.empty();
				change.onlyRules = whole && c.edits.empty() && !c.ruleChains.empty();
				if (change.onlyElements)
					change.edits = std::move(c.edits);
				if (change.onlyRules)
					change.chains = std::move(c.ruleChains);
				*p->foreign = std::move(change);
			}
		}
		*p->touched = false;
		p->commit->clear();
		return MNL_CB_OK;
	}
	switch (type) {
	case NFT_MSG_NEWTABLE: case NFT_MSG_DELTABLE:
	case NFT_MSG_NEWCHAIN: case NFT_MSG_DELCHAIN:
	case NFT_MSG_NEWRULE: case NFT_MSG_DELRULE:
	case NFT_MSG_NEWSET: case NFT_MSG_DELSET:
	case NFT_MSG_NEWSETELEM: case NFT_MSG_DELSETELEM:
	case NFT_MSG_NEWOBJ: case NFT_MSG_DELOBJ:
	case NFT_MSG_NEWFLOWTABLE: case NFT_MSG_DELFLOWTABLE:
		break;
	default:
		return MNL_CB_OK;
	}
	if (gen->nfgen_family != p->family || !attrs[kTableAttr] ||
	    mnl_attr_validate(attrs[kTableAttr], MNL_TYPE_NUL_STRING) < 0)
		return MNL_CB_OK;
	if (*p->table != mnl_attr_get_str(attrs[kTableAttr]))
		return MNL_CB_OK;
	*p->touched = true;
	NftMonitor::Commit &c = *p->commit;
	if (c.port && *c.port != nlh->nlmsg_pid)
		c.clear(); // the commit before ended unseen: its NEWGEN was lost
	c.port = nlh->nlmsg_pid;
	static_assert(NFTA_RULE_CHAIN == 2 && NFTA_SET_NAME == 2);
	if (type == NFT_MSG_NEWRULE || type == NFT_MSG_DELRULE) {
		const nlattr *chain = attrs[NFTA_RULE_CHAIN];
		if (!chain || mnl_attr_validate(chain, MNL_TYPE_NUL_STRING) < 0) {
			c.other = true;
			return MNL_CB_OK;
		}
		std::string name = mnl_attr_get_str(chain);
		if (std::find(c.ruleChains.begin(), c.ruleChains.end(), name) == c.ruleChains.end())
			c.ruleChains.push_back(std::move(name));
		return MNL_CB_OK;
	}
	// A rule's anonymous set (`{ tcp, udp }`) comes and goes with its
	// rule, its elements with it.
	auto anonymous = [](const nlattr *name) {
		return name && mnl_attr_validate(name, MNL_TYPE_NUL_STRING) == 0 &&
		       std::string_view(mnl_attr_get_str(name)).starts_with("__set");
	};
	if (anonymous(attrs[2]))
		return MNL_CB_OK;
	if (type != NFT_MSG_NEWSETELEM && type != NFT_MSG_DELSETELEM) {
		c.other = true;
		return MNL_CB_OK;
	}
	// Element events: NFTA_SET_ELEM_LIST_SET (2) and _ELEMENTS (3) are
	// attributes 2 and 3 too, which attrCallback keeps.
	static_assert(NFTA_SET_ELEM_LIST_SET == 2 && NFTA_SET_ELEM_LIST_ELEMENTS == 3);
	const nlattr *set = attrs[NFTA_SET_ELEM_LIST_SET], *elements = attrs[NFTA_SET_ELEM_LIST_ELEMENTS];
	if (!set || mnl_attr_validate(set, MNL_TYPE_NUL_STRING) < 0 || !elements || c.overflow) {
		c.overflow = c.overflow || !set || !elements; // a flush without elements: undo unknown
		return MNL_CB_OK;
	}
	// Sent from a socket of this process: our own commit, nothing to
	// undo; its elements (a full replace: hundreds of thousands) are not
	// kept. Should the port be another process's by now, its NEWGEN
	// names that process and the table is restored in full.
	if (nft::isOwnPort(nlh->nlmsg_pid)) {
		c.overflow = true;
		std::vector<ElementEdit>().swap(c.edits);
		return MNL_CB_OK;
	}
	c.bytes += elements->nla_len;
	if (c.bytes > NftMonitor::kMaxEditBytes) {
		c.overflow = true;
		std::vector<ElementEdit>().swap(c.edits);
		return MNL_CB_OK;
	}
	c.edits.push_back({type == NFT_MSG_NEWSETELEM, mnl_attr_get_str(set),
			   std::string(reinterpret_cast<const char *>(elements), elements->nla_len)});
	return MNL_CB_OK;
}

} // namespace

// Every event read up to now: the kernel's generation has moved past the
// last NEWGEN read by the commits whose NEWGEN was lost. More of them than
// this process committed meanwhile means another process committed too. An
// error asking counts as yes (the caller then restores in full).
bool NftMonitor::foreignCommitsLost()
{
	Result<uint32_t> now = nft::rulesetGeneration(*query_);
	uint64_t own = nft::commitsSent();
	bool foreign = !now || uint64_t{ static_cast<uint32_t>(*now - lastGen_) } > own - ownSeen_;
	if (now)
		lastGen_ = *now;
	ownSeen_ = own;
	return foreign;
}

Result<std::optional<ForeignChange>> NftMonitor::read()
{
	std::optional<ForeignChange> foreign;
	std::vector<char> buffer(MNL_SOCKET_BUFFER_SIZE * 4);
	Parse parse{family_, &table_, self_, &touched_, &lastGen_, &ownSeen_, &foreign, &commit_};
	bool lost = false;
	for (;;) {
		ssize_t n = mnl_socket_recvfrom(socket_.get(), buffer.data(), buffer.size());
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				if (lost && foreign && foreign->lost())
					foreign->foreignLost = foreignCommitsLost();
				return foreign;
			}
			if (errno == EINTR)
				continue;
			if (errno == ENOBUFS) {
				lost = true;
				touched_ = false;
				commit_.clear();
				if (!foreign)
					foreign = ForeignChange{};
				continue;
			}
			return Error(errno, "reading nftables events");
		}
		// Events are not answers to our requests: sequence and port id 0.
		mnl_cb_run(buffer.data(), static_cast<size_t>(n), 0, 0, messageCallback, &parse);
	}
}

Status undoElementEdits(const std::vector<ElementEdit> &edits)
{
	Result<nft::Socket> sock = nft::Socket::open();
	if (!sock)
		return sock.error();
	nft::Batch batch;
	// Runs of edits of one set and kind, last run first (an element added
	// and then deleted again comes back). Within a run the order is kept:
	// nft lists a concatenated interval set in the order of insertion, so a
	// flushed set refilled in the order its elements left lists as before.
	// A run's element lists are joined in messages well under the 64 KiB
	// of an attribute.
	constexpr size_t kMessageBytes = 32 * 1024;
	for (size_t end = edits.size(); end > 0;) {
		const ElementEdit &last = edits[end - 1];
		size_t begin = end - 1;
		while (begin > 0 && edits[begin - 1].added == last.added && edits[begin - 1].set == last.set)
			begin--;
		for (size_t i = begin; i < end;) {
			nlmsghdr *nlh = batch.message(last.added ? NFT_MSG_DELSETELEM : NFT_MSG_NEWSETELEM, NFPROTO_INET,
						      last.added ? 0 : NLM_F_CREATE,
						      (last.added ? "deleting elements added to set " : "adding back elements of set ") +
							      last.set);
			mnl_attr_put_strz(nlh, NFTA_SET_ELEM_LIST_TABLE, "portslice");
			mnl_attr_put_strz(nlh, NFTA_SET_ELEM_LIST_SET, last.set.c_str());
			nlattr *list = mnl_attr_nest_start(nlh, NFTA_SET_ELEM_LIST_ELEMENTS);
			size_t bytes = 0;
			while (i < end && (bytes == 0 || bytes + edits[i].elements.size() < kMessageBytes)) {
				const std::string &attr = edits[i].elements; // header, then the LIST_ELEM nests
				size_t payload = attr.size() - MNL_ATTR_HDRLEN;
				std::memcpy(mnl_nlmsg_put_extra_header(nlh, MNL_ALIGN(payload)), attr.data() + MNL_ATTR_HDRLEN,
					    payload);
				bytes += attr.size();
				i++;
			}
			mnl_attr_nest_end(nlh, list);
			batch.commit();
		}
		end = begin;
	}
	batch.finish();
	return sock->send(batch);
}

Status rewriteChains(const nft::TableModel &model, const std::vector<std::string> &chains)
{
	Result<nft::Socket> sock = nft::Socket::open();
	if (!sock)
		return sock.error();
	nft::Batch batch;
	nft::TableWriter writer(batch);
	size_t found = 0;
	for (const nft::Chain &chain : model.chains) {
		if (std::find(chains.begin(), chains.end(), chain.name) == chains.end())
			continue;
		writer.flushChain(chain.name);
		writer.rules(chain);
		found++;
	}
	if (found != chains.size())
		return Error(ENOENT, "a chain changed by hand is not one of the table's");
	batch.finish();
	return sock->send(batch);
}

} // namespace portslice::daemon
