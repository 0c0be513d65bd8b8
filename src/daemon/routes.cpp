// SPDX-License-Identifier: MIT
// rtnetlink with libmnl: dump, delete and add the routing rules and routes portslice owns.
#include "daemon/routes.h"

#include <arpa/inet.h>
#include <cerrno>
#include <functional>
#include <linux/fib_rules.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <vector>

#include "common/netlink.h"

namespace portslice::daemon {

namespace {

bool ours(uint32_t table) { return table >= plan::kRouteTableBase && table <= plan::kRouteTableBase + 0xffff; }

class Rtnl {
public:
	Status open()
	{
		auto s = NetlinkSocket::open(NETLINK_ROUTE, "rtnetlink");
		if (!s)
			return s.error();
		sock_ = std::move(*s);
		return {};
	}

	// Send one request; cb (if any) sees every answer of a dump.
	Status talk(nlmsghdr *nlh, const std::function<void(const nlmsghdr *)> &cb = {})
	{
		return sock_.request(nlh, [&](const nlmsghdr *m) {
			if (cb)
				cb(m);
			return MNL_CB_OK;
		});
	}

private:
	NetlinkSocket sock_;
};

struct Attrs {
	const nlattr *tb[64] = {};
};

Attrs parse(const nlmsghdr *nlh, size_t hdrlen)
{
	Attrs a;
	mnl_attr_parse(nlh, hdrlen,
		       [](const nlattr *attr, void *data) -> int {
			       auto *tb = static_cast<const nlattr **>(data);
			       uint16_t type = mnl_attr_get_type(attr);
			       if (type < 64)
				       tb[type] = attr;
			       return MNL_CB_OK;
		       },
		       a.tb);
	return a;
}

// Our rules and routes, as the dump gives them.
Status listOurs(Rtnl &rtnl, std::vector<std::vector<char>> &rules, std::vector<std::vector<char>> &routes)
{
	auto keep = [](std::vector<std::vector<char>> &into, const nlmsghdr *m) {
		into.emplace_back(reinterpret_cast<const char *>(m), reinterpret_cast<const char *>(m) + m->nlmsg_len);
	};

	std::vector<char> buf;
	nlmsghdr *nlh = netlinkMessage(buf, RTM_GETRULE, NLM_F_REQUEST | NLM_F_DUMP);
	auto *frh = static_cast<fib_rule_hdr *>(mnl_nlmsg_put_extra_header(nlh, sizeof(fib_rule_hdr)));
	frh->family = AF_INET;
	Status s = rtnl.talk(nlh, [&](const nlmsghdr *m) {
		Attrs a = parse(m, sizeof(fib_rule_hdr));
		if (a.tb[FRA_TABLE] && ours(mnl_attr_get_u32(a.tb[FRA_TABLE])) && a.tb[FRA_FWMARK])
			keep(rules, m);
	});
	if (!s)
		return s.error().wrap("listing routing rules");

	nlh = netlinkMessage(buf, RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP);
	auto *rtm = static_cast<rtmsg *>(mnl_nlmsg_put_extra_header(nlh, sizeof(rtmsg)));
	rtm->rtm_family = AF_INET;
	s = rtnl.talk(nlh, [&](const nlmsghdr *m) {
		Attrs a = parse(m, sizeof(rtmsg));
		if (a.tb[RTA_TABLE] && ours(mnl_attr_get_u32(a.tb[RTA_TABLE])))
			keep(routes, m);
	});
	if (!s)
		return s.error().wrap("listing routes");
	return {};
}

// Send `m` again as a request of `type`.
Status resend(Rtnl &rtnl, const std::vector<char> &m, uint16_t type, uint16_t flags)
{
	std::vector<char> copy = m;
	auto *nlh = reinterpret_cast<nlmsghdr *>(copy.data());
	nlh->nlmsg_type = type;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | flags;
	return rtnl.talk(nlh);
}

// Delete our rules and routes.
Status deleteOurs(Rtnl &rtnl)
{
	std::vector<std::vector<char>> rules, routes;
	if (Status s = listOurs(rtnl, rules, routes); !s)
		return s;
	std::vector<std::pair<const std::vector<char> *, uint16_t>> doomed;
	for (const std::vector<char> &m : rules)
		doomed.emplace_back(&m, RTM_DELRULE);
	for (const std::vector<char> &m : routes)
		doomed.emplace_back(&m, RTM_DELROUTE);
	for (const auto &[m, type] : doomed) {
		Status d = resend(rtnl, *m, type, 0);
		if (!d && d.error().code() != std::errc::no_such_file_or_directory &&
		    d.error().code() != std::errc::no_such_process)
			return d.error().wrap("deleting a portslice route");
	}
	return {};
}

} // namespace

Result<RoutesReport> applyRoutes(const plan::Plan &plan)
{
	Rtnl rtnl;
	Status s = rtnl.open();
	if (!s)
		return s.error();
	s = deleteOurs(rtnl);
	if (!s)
		return s.error();

	RoutesReport report;
	std::vector<char> buf;
	for (const plan::PlannedSource &src : plan.sources) {
		if (!src.routeMark || !src.routeTable || !src.match.iifname || src.dropped())
			continue;
		unsigned ifindex = if_nametoindex(src.match.iifname->c_str());
		if (ifindex == 0) {
			report.skipped.push_back(src.name + ": interface " + *src.match.iifname + " does not exist");
			continue;
		}
		nlmsghdr *nlh = netlinkMessage(buf, RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE);
		auto *rtm = static_cast<rtmsg *>(mnl_nlmsg_put_extra_header(nlh, sizeof(rtmsg)));
		rtm->rtm_family = AF_INET;
		rtm->rtm_dst_len = src.match.saddr ? src.match.saddr->length : 0;
		rtm->rtm_table = RT_TABLE_UNSPEC;
		rtm->rtm_protocol = RTPROT_STATIC;
		rtm->rtm_scope = RT_SCOPE_LINK;
		rtm->rtm_type = RTN_UNICAST;
		if (src.match.saddr)
			mnl_attr_put_u32(nlh, RTA_DST, src.match.saddr->address.networkOrder());
		mnl_attr_put_u32(nlh, RTA_OIF, ifindex);
		mnl_attr_put_u32(nlh, RTA_TABLE, *src.routeTable);
		s = rtnl.talk(nlh);
		if (!s)
			return s.error().wrap("adding the return route of source " + src.name);

		nlh = netlinkMessage(buf, RTM_NEWRULE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
		auto *frh = static_cast<fib_rule_hdr *>(mnl_nlmsg_put_extra_header(nlh, sizeof(fib_rule_hdr)));
		frh->family = AF_INET;
		frh->action = FR_ACT_TO_TBL;
		mnl_attr_put_u32(nlh, FRA_PRIORITY, kRulePriority);
		mnl_attr_put_u32(nlh, FRA_FWMARK, *src.routeMark);
		mnl_attr_put_u32(nlh, FRA_FWMASK, 0xffffffffu);
		mnl_attr_put_u32(nlh, FRA_TABLE, *src.routeTable);
		s = rtnl.talk(nlh);
		if (!s && s.error().code() != std::errc::file_exists)
			return s.error().wrap("adding the routing rule of source " + src.name);
		report.installed++;
	}
	return report;
}

Result<RoutesSnapshot> snapshotRoutes()
{
	Rtnl rtnl;
	if (Status s = rtnl.open(); !s)
		return s.error();
	RoutesSnapshot snapshot;
	if (Status s = listOurs(rtnl, snapshot.rules, snapshot.routes); !s)
		return s.error();
	return snapshot;
}

Status restoreRoutes(const RoutesSnapshot &snapshot)
{
	Rtnl rtnl;
	if (Status s = rtnl.open(); !s)
		return s;
	if (Status s = deleteOurs(rtnl); !s)
		return s;
	for (const std::vector<char> &m : snapshot.routes)
		if (Status s = resend(rtnl, m, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL); !s)
			return s.error().wrap("putting back a portslice route");
	for (const std::vector<char> &m : snapshot.rules)
		if (Status s = resend(rtnl, m, RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL); !s)
			return s.error().wrap("putting back a portslice routing rule");
	return {};
}

Status removeRoutes()
{
	Rtnl rtnl;
	Status s = rtnl.open();
	if (!s)
		return s;
	return deleteOurs(rtnl);
}

} // namespace portslice::daemon
