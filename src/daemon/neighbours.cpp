// SPDX-License-Identifier: MIT
// rtnetlink with libmnl: list, add and delete portslice's managed neighbour entries; ask the kernel for a target's next hop.
#include "daemon/neighbours.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <optional>
#include <set>

#include <arpa/inet.h>
#include <linux/neighbour.h>
#include <linux/rtnetlink.h>
#include <net/if.h>

#include "common/netlink.h"

namespace portslice::daemon {

namespace {

// One entry of the kernel's IPv4 neighbour table, as a dump gives it.
struct Listed {
	NeighbourEntry entry;
	uint16_t state = 0;
	bool ours = false; // kNeighbourProtocol and managed
};

Result<std::vector<Listed>> listNeighbours(NetlinkSocket &sock)
{
	std::vector<char> buf;
	nlmsghdr *nlh = netlinkMessage(buf, RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP);
	auto *req = static_cast<ndmsg *>(mnl_nlmsg_put_extra_header(nlh, sizeof(ndmsg)));
	req->ndm_family = AF_INET;

	std::vector<Listed> listed;
	Status s = sock.request(nlh, [&](const nlmsghdr *m) {
		if (m->nlmsg_type != RTM_NEWNEIGH)
			return MNL_CB_OK;
		const auto *nd = static_cast<const ndmsg *>(mnl_nlmsg_get_payload(m));
		if (nd->ndm_family != AF_INET)
			return MNL_CB_OK;
		struct Found {
			std::optional<uint32_t> dst;
			uint8_t protocol = 0;
			uint32_t extFlags = 0;
		} found;
		mnl_attr_parse(m, sizeof(ndmsg),
			       [](const nlattr *attr, void *data) -> int {
				       auto *f = static_cast<Found *>(data);
				       uint16_t type = mnl_attr_get_type(attr);
				       uint16_t len = mnl_attr_get_payload_len(attr);
				       if (type == NDA_DST && len == 4) {
					       uint32_t be;
					       std::memcpy(&be, mnl_attr_get_payload(attr), 4);
					       f->dst = ntohl(be);
				       } else if (type == NDA_PROTOCOL && len >= 1) {
					       f->protocol = mnl_attr_get_u8(attr);
				       } else if (type == NDA_FLAGS_EXT && len == 4) {
					       f->extFlags = mnl_attr_get_u32(attr);
				       }
				       return MNL_CB_OK;
			       },
			       &found);
		if (!found.dst)
			return MNL_CB_OK;
		Listed l;
		l.entry = {static_cast<uint32_t>(nd->ndm_ifindex), Ipv4{*found.dst}};
		l.state = nd->ndm_state;
		l.ours = found.protocol == kNeighbourProtocol && (found.extFlags & NTF_EXT_MANAGED);
		listed.push_back(l);
		return MNL_CB_OK;
	});
	if (!s)
		return s.error().wrap("listing neighbour entries");
	return listed;
}

// Add (or turn a dynamic entry into) portslice's managed entry, as
// `ip neigh replace ADDR dev IF managed extern_learn protocol 0x50` does:
// no address and state none, the kernel resolves it at once and keeps it.
Status addManaged(NetlinkSocket &sock, const NeighbourEntry &e)
{
	std::vector<char> buf;
	nlmsghdr *nlh = netlinkMessage(buf, RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE);
	auto *nd = static_cast<ndmsg *>(mnl_nlmsg_put_extra_header(nlh, sizeof(ndmsg)));
	nd->ndm_family = AF_INET;
	nd->ndm_ifindex = static_cast<int>(e.ifindex);
	nd->ndm_state = NUD_NONE;
	nd->ndm_flags = NTF_EXT_LEARNED;
	mnl_attr_put_u32(nlh, NDA_DST, e.address.networkOrder());
	mnl_attr_put_u8(nlh, NDA_PROTOCOL, kNeighbourProtocol);
	mnl_attr_put_u32(nlh, NDA_FLAGS_EXT, NTF_EXT_MANAGED);
	Status s = sock.request(nlh);
	if (!s)
		return s.error().wrap("adding the managed neighbour entry " + e.address.str());
	return {};
}

Status deleteEntry(NetlinkSocket &sock, const NeighbourEntry &e)
{
	std::vector<char> buf;
	nlmsghdr *nlh = netlinkMessage(buf, RTM_DELNEIGH, NLM_F_REQUEST | NLM_F_ACK);
	auto *nd = static_cast<ndmsg *>(mnl_nlmsg_put_extra_header(nlh, sizeof(ndmsg)));
	nd->ndm_family = AF_INET;
	nd->ndm_ifindex = static_cast<int>(e.ifindex);
	mnl_attr_put_u32(nlh, NDA_DST, e.address.networkOrder());
	Status s = sock.request(nlh);
	// Gone already (the interface went, or someone deleted it): that is the aim.
	if (!s && s.error().code() != std::errc::no_such_file_or_directory &&
	    s.error().code() != std::errc::no_such_device)
		return s.error().wrap("deleting the neighbour entry " + e.address.str());
	return {};
}

// The kernel's route to `to` (as `ip route get`): out-interface and gateway.
struct NextHop {
	uint32_t ifindex = 0;
	std::optional<Ipv4> gateway;
};

Result<NextHop> routeTo(NetlinkSocket &sock, Ipv4 to)
{
	std::vector<char> buf;
	nlmsghdr *nlh = netlinkMessage(buf, RTM_GETROUTE, NLM_F_REQUEST);
	auto *rtm = static_cast<rtmsg *>(mnl_nlmsg_put_extra_header(nlh, sizeof(rtmsg)));
	rtm->rtm_family = AF_INET;
	rtm->rtm_dst_len = 32;
	mnl_attr_put_u32(nlh, RTA_DST, to.networkOrder());
	NextHop hop;
	Status s = sock.request(nlh, [&](const nlmsghdr *m) {
		if (m->nlmsg_type != RTM_NEWROUTE)
			return MNL_CB_OK;
		mnl_attr_parse(m, sizeof(rtmsg),
			       [](const nlattr *attr, void *data) -> int {
				       auto *h = static_cast<NextHop *>(data);
				       uint16_t type = mnl_attr_get_type(attr);
				       if (type == RTA_OIF && mnl_attr_get_payload_len(attr) == 4)
					       h->ifindex = mnl_attr_get_u32(attr);
				       else if (type == RTA_GATEWAY && mnl_attr_get_payload_len(attr) == 4)
					       h->gateway = Ipv4{ntohl(mnl_attr_get_u32(attr))};
				       return MNL_CB_OK;
			       },
			       &hop);
		// A request without NLM_F_ACK ends with its one answer.
		return MNL_CB_STOP;
	});
	if (!s)
		return s.error();
	return hop;
}

std::string interfaceName(uint32_t ifindex)
{
	char name[IF_NAMESIZE] = {};
	if (::if_indextoname(ifindex, name) == nullptr)
		return "interface " + std::to_string(ifindex);
	return name;
}

} // namespace

std::vector<NeighbourTarget> neighbourTargets(const plan::Plan &plan)
{
	std::vector<bool> wanted(plan.servers.size());
	for (size_t i = 0; i < plan.servers.size(); i++)
		wanted[i] = plan.servers[i].datacenter == plan.datacenter;
	std::set<std::string> remote; // data centres of the plan's other addresses
	for (const plan::PlannedAddress &a : plan.addresses) {
		if (!a.local) {
			remote.insert(a.datacenter);
			continue;
		}
		for (const auto *servers : {&a.owner, &a.previous})
			for (int32_t s : *servers)
				if (s >= 0 && static_cast<size_t>(s) < wanted.size())
					wanted[static_cast<size_t>(s)] = true;
	}
	std::vector<NeighbourTarget> targets;
	for (size_t i = 0; i < plan.servers.size(); i++) {
		const plan::PlannedServer &s = plan.servers[i];
		if (wanted[i] && i != plan.serverIndex && !s.mac)
			targets.push_back({"server " + s.name + " (" + s.address.str() + ")", s.address});
	}
	for (const plan::PlannedDatacenter &dc : plan.datacenters)
		if (dc.gateway && remote.count(dc.name))
			targets.push_back({"gateway of " + dc.name + " (" + dc.gateway->str() + ")", *dc.gateway});
	return targets;
}

Result<NeighboursReport> applyNeighbours(const std::string &uplink, const std::vector<NeighbourTarget> &targets)
{
	auto sock = NetlinkSocket::open(NETLINK_ROUTE, "rtnetlink");
	if (!sock)
		return sock.error().wrap("managed neighbour entries");
	NeighboursReport report;
	std::set<NeighbourEntry> want;
	if (!targets.empty()) {
		uint32_t ifindex = ::if_nametoindex(uplink.c_str());
		if (ifindex == 0)
			return Error(errno, "managed neighbour entries: interface " + uplink);
		for (const NeighbourTarget &t : targets) {
			auto hop = routeTo(*sock, t.address);
			if (!hop) {
				report.skipped.push_back(t.what + ": no route (" + hop.error().message() + ")");
				continue;
			}
			if (hop->ifindex != ifindex) {
				report.skipped.push_back(t.what + ": routed out of " + interfaceName(hop->ifindex) +
							 ", not the uplink " + uplink);
				continue;
			}
			want.insert({ifindex, hop->gateway.value_or(t.address)});
		}
	}

	auto listed = listNeighbours(*sock);
	if (!listed)
		return listed.error();
	std::set<NeighbourEntry> ours;
	std::map<NeighbourEntry, uint16_t> others;
	for (const Listed &l : *listed)
		(l.ours ? void(ours.insert(l.entry)) : void(others.emplace(l.entry, l.state)));

	for (const NeighbourEntry &e : want) {
		if (ours.count(e))
			continue;
		auto other = others.find(e);
		if (other != others.end() && (other->second & (NUD_PERMANENT | NUD_NOARP))) {
			// Configured by someone else, with its MAC: the forwarder reads it.
			continue;
		}
		if (Status s = addManaged(*sock, e); !s)
			return s.error();
	}
	for (const NeighbourEntry &e : ours)
		if (!want.count(e))
			if (Status s = deleteEntry(*sock, e); !s)
				return s.error();
	report.managed = want.size();
	return report;
}

Status removeNeighbours()
{
	auto r = applyNeighbours({}, {});
	if (!r)
		return r.error();
	return {};
}

Result<NeighboursSnapshot> snapshotNeighbours()
{
	auto sock = NetlinkSocket::open(NETLINK_ROUTE, "rtnetlink");
	if (!sock)
		return sock.error();
	auto listed = listNeighbours(*sock);
	if (!listed)
		return listed.error();
	NeighboursSnapshot snapshot;
	for (const Listed &l : *listed)
		if (l.ours)
			snapshot.entries.push_back(l.entry);
	return snapshot;
}

Status restoreNeighbours(const NeighboursSnapshot &snapshot)
{
	auto sock = NetlinkSocket::open(NETLINK_ROUTE, "rtnetlink");
	if (!sock)
		return sock.error();
	auto listed = listNeighbours(*sock);
	if (!listed)
		return listed.error();
	std::set<NeighbourEntry> keep(snapshot.entries.begin(), snapshot.entries.end());
	std::set<NeighbourEntry> ours;
	for (const Listed &l : *listed) {
		if (!l.ours)
			continue;
		ours.insert(l.entry);
		if (!keep.count(l.entry))
			if (Status s = deleteEntry(*sock, l.entry); !s)
				return s.error().wrap("putting back the neighbour entries");
	}
	for (const NeighbourEntry &e : keep)
		if (!ours.count(e))
			if (Status s = addManaged(*sock, e); !s)
				return s.error().wrap("putting back the neighbour entries");
	return {};
}

} // namespace portslice::daemon
