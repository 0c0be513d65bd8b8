// SPDX-License-Identifier: MIT
// One nftables transaction over libmnl: built page by page, sent in one sendmsg, every acknowledgement read back.
#include "nft/netlink.h"

#include <algorithm>
#include <arpa/inet.h>
#include <cerrno>
#include <libmnl/libmnl.h>
#include <libnftnl/common.h>
#include <linux/netfilter/nf_tables.h>
#include <optional>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <vector>

namespace portslice::nft {

namespace {

uint64_t gCommits = 0; // transactions this process committed (Socket::send)
// Netlink ports of the sockets Socket::open made, the latest last (a few:
// the applier's, and one for each undo of a drift).
std::vector<uint32_t> gOwnPorts;
constexpr size_t kOwnPortsKept = 64;

// Pages of 1 MiB; a message may run 256 KiB past the end of a page. Element
// messages are kept well under 64 KiB (a netlink attribute length is 16 bits).
constexpr uint32_t kPageSize = 1u << 20;
// Room past a page's end for the message that crosses it: element messages
// stop below 48 KiB, every other message is far smaller.
constexpr uint32_t kPageOverrun = 1u << 16;
constexpr int kRcvBuf = 16 << 20;

int setBuffer(int fd, int forceOpt, int opt, int size)
{
	// FORCE overrides net.core.[rw]mem_max (needs CAP_NET_ADMIN); fall back
	// to the capped size when unprivileged.
	if (setsockopt(fd, SOL_SOCKET, forceOpt, &size, sizeof(size)) == 0)
		return 0;
	return setsockopt(fd, SOL_SOCKET, opt, &size, sizeof(size));
}

} // namespace

bool debugMnl()
{
	static const bool on = std::getenv("PORTSLICE_NFT_DEBUG") != nullptr;
	return on;
}

Batch::Batch() : batch_(nftnl_batch_alloc(kPageSize, kPageOverrun))
{
	if (!batch_)
		throw std::bad_alloc();
	seq_ = firstSeq_ = 1;
	nftnl_batch_begin(static_cast<char *>(nftnl_batch_buffer(batch_.get())), seq_);
	nftnl_batch_update(batch_.get());
}

nlmsghdr *Batch::message(uint16_t type, uint16_t family, uint16_t flags, std::string label)
{
	labels_ += label;
	labelEnds_.push_back(static_cast<uint32_t>(labels_.size()));
	return nftnl_nlmsg_build_hdr(static_cast<char *>(nftnl_batch_buffer(batch_.get())), type, family, flags,
				     ++seq_);
}

size_t Batch::pages() const
{
	return static_cast<size_t>(nftnl_batch_iovec_len(batch_.get()));
}

void Batch::commit()
{
	nftnl_batch_update(batch_.get());
}

void Batch::finish()
{
	nftnl_batch_end(static_cast<char *>(nftnl_batch_buffer(batch_.get())), ++seq_);
	nftnl_batch_update(batch_.get());
}

std::string Batch::labelOf(uint32_t seq) const
{
	if (seq <= firstSeq_ || seq - firstSeq_ - 1 >= labelEnds_.size())
		return "batch";
	size_t i = seq - firstSeq_ - 1;
	size_t from = i == 0 ? 0 : labelEnds_[i - 1];
	return labels_.substr(from, labelEnds_[i] - from);
}

Result<Socket> Socket::open()
{
	Socket s;
	auto nl = NetlinkSocket::open(NETLINK_NETFILTER, "netfilter netlink socket");
	if (!nl)
		return nl.error();
	s.sock_ = std::move(*nl);
	int fd = s.sock_.fd();
	int one = 1;
	// Errors carry only the header of the failed message, not all of it.
	setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one));
	setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof(one));
	if (setBuffer(fd, SO_RCVBUFFORCE, SO_RCVBUF, kRcvBuf) < 0)
		return Error(errno, "sizing the netlink receive buffer");
	gOwnPorts.push_back(s.sock_.portId());
	if (gOwnPorts.size() > kOwnPortsKept)
		gOwnPorts.erase(gOwnPorts.begin());
	return s;
}

Status Socket::send(Batch &batch)
{
	nftnl_batch *b = batch.raw();
	int fd = sock_.fd();
	size_t total = nftnl_batch_buffer_len(b);
	int iovlen = nftnl_batch_iovec_len(b);
	std::vector<iovec> iov(iovlen);
	nftnl_batch_iovec(b, iov.data(), iovlen);
	// Errors come back for every failing message with its sequence number;
	// an acknowledgement of the last message says the whole batch went in.
	// (One ack per message would cost a recv per message: 300k counters.)
	total = 0;
	for (const iovec &v : iov) {
		total += v.iov_len;
		int left = static_cast<int>(v.iov_len);
		for (auto *nlh = static_cast<nlmsghdr *>(v.iov_base); mnl_nlmsg_ok(nlh, left);
		     nlh = static_cast<nlmsghdr *>(mnl_nlmsg_next(nlh, &left)))
			if (nlh->nlmsg_seq == batch.lastSeq())
				nlh->nlmsg_flags |= NLM_F_ACK;
	}
	batch.setBytes(total);

	if (debugMnl())
		for (const iovec &v : iov)
			mnl_nlmsg_fprintf(stderr, v.iov_base, v.iov_len, sizeof(struct nfgenmsg));

	// The kernel refuses a message larger than the send buffer: the whole
	// transaction is one message to the socket layer.
	if (total + 4096 > sndbuf_) {
		size_t want = total + (1u << 16);
		if (want > static_cast<size_t>(1) << 31)
			return Error(EMSGSIZE, "transaction of " + std::to_string(total) + " bytes");
		if (setBuffer(fd, SO_SNDBUFFORCE, SO_SNDBUF, static_cast<int>(want)) < 0)
			return Error(errno, "sizing the netlink send buffer to " + std::to_string(want));
		sndbuf_ = want;
	}

	sockaddr_nl snl{};
	snl.nl_family = AF_NETLINK;
	msghdr msg{};
	msg.msg_name = &snl;
	msg.msg_namelen = sizeof(snl);
	msg.msg_iov = iov.data();
	msg.msg_iovlen = iov.size();
	if (sendmsg(fd, &msg, 0) < 0)
		return Error(errno, "sending a transaction of " + std::to_string(total) + " bytes");

	// nfnetlink handles the batch inside sendmsg: every answer is queued by
	// now, so read without blocking until the queue is empty.
	uint32_t lastSeq = batch.lastSeq();
	bool lastAcked = false;
	Error first;
	bool failed = false;
	constexpr size_t kAnswerBytes = 1u << 20;
	if (!answers_)
		answers_.reset(new char[kAnswerBytes]);
	for (;;) {
		ssize_t n = recv(fd, answers_.get(), kAnswerBytes, MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			if (errno == ENOBUFS && failed)
				break; // more errors than the buffer holds: the first is kept
			return Error(errno, "reading acknowledgements");
		}
		int len = static_cast<int>(n);
		for (auto *nlh = reinterpret_cast<const nlmsghdr *>(answers_.get()); mnl_nlmsg_ok(nlh, len);
		     nlh = mnl_nlmsg_next(nlh, &len)) {
			if (nlh->nlmsg_type != NLMSG_ERROR)
				continue;
			auto *err = static_cast<const nlmsgerr *>(mnl_nlmsg_get_payload(nlh));
			if (err->error == 0 && nlh->nlmsg_seq == lastSeq)
				lastAcked = true;
			if (err->error != 0 && !failed) {
				failed = true;
				first = Error(-err->error, batch.labelOf(nlh->nlmsg_seq));
			}
		}
	}
	if (failed)
		return first;
	if (!lastAcked)
		return Error(EPROTO, "transaction of " + std::to_string(batch.messages()) +
					     " messages: no acknowledgement");
	gCommits++;
	return {};
}

uint64_t commitsSent() { return gCommits; }

bool isOwnPort(uint32_t port) { return std::find(gOwnPorts.begin(), gOwnPorts.end(), port) != gOwnPorts.end(); }

Result<uint32_t> rulesetGeneration(Socket &sock)
{
	std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
	nlmsghdr *nlh = nftnl_nlmsg_build_hdr(buf.data(), NFT_MSG_GETGEN, AF_UNSPEC, NLM_F_ACK, 1);
	std::optional<uint32_t> id;
	Status s = sock.request(nlh, [&](const nlmsghdr *m) {
		if (NFNL_MSG_TYPE(m->nlmsg_type) != NFT_MSG_NEWGEN)
			return MNL_CB_OK;
		auto take = [](const nlattr *attr, void *data) {
			if (mnl_attr_get_type(attr) == NFTA_GEN_ID && mnl_attr_validate(attr, MNL_TYPE_U32) == 0)
				*static_cast<std::optional<uint32_t> *>(data) = ntohl(mnl_attr_get_u32(attr));
			return MNL_CB_OK;
		};
		return mnl_attr_parse(m, sizeof(nfgenmsg), take, &id) < 0 ? MNL_CB_ERROR : MNL_CB_OK;
	});
	if (!s)
		return s.error().wrap("asking for the nftables generation");
	if (!id)
		return Error(EPROTO, "the nftables generation: no answer");
	return *id;
}

} // namespace portslice::nft
