// SPDX-License-Identifier: MIT
// libnetfilter_conntrack dump + delete of moved-away NAT entries, and /proc/sys tuning with a saved copy of the old values.
#include "conntrack/conntrack.h"

#include <algorithm>
#include <arpa/inet.h>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <map>
#include <netinet/in.h>
#include <sstream>
#include <unistd.h>

#include <libnetfilter_conntrack/libnetfilter_conntrack.h>

#include "conntrack/nfct.h"

namespace portslice::conntrack {

namespace {

const char *const kSavedFile = "conntrack-sysctl.saved";

std::string procPath(const std::string &name)
{
	std::string p = "/proc/sys/" + name;
	for (size_t i = 10; i < p.size(); i++)
		if (p[i] == '.')
			p[i] = '/';
	return p;
}

Result<std::string> readSysctl(const std::string &name)
{
	std::ifstream in(procPath(name));
	std::string v;
	if (!in || !std::getline(in, v))
		return Error(errno ? errno : EIO, "reading " + name);
	return v;
}

Status writeSysctl(const std::string &name, const std::string &value)
{
	std::ofstream out(procPath(name));
	if (!out)
		return Error(errno ? errno : EACCES, "writing " + name);
	out << value << "\n";
	out.flush();
	if (!out)
		return Error(errno ? errno : EIO, "writing " + value + " to " + name);
	return {};
}

std::map<std::string, std::string> loadSaved(const std::string &stateDir)
{
	std::map<std::string, std::string> saved;
	std::ifstream in(stateDir + "/" + kSavedFile);
	std::string name, value;
	while (in >> name >> value)
		saved[name] = value;
	return saved;
}

Status storeSaved(const std::string &stateDir, const std::map<std::string, std::string> &saved)
{
	std::error_code ec;
	std::filesystem::create_directories(stateDir, ec);
	if (ec)
		return Error(ec, "creating " + stateDir);
	std::string path = stateDir + "/" + kSavedFile;
	if (saved.empty()) {
		std::filesystem::remove(path, ec);
		return {};
	}
	std::string tmp = path + ".tmp";
	{
		std::ofstream out(tmp, std::ios::trunc);
		for (const auto &[n, v] : saved)
			out << n << " " << v << "\n";
		out.flush();
		if (!out)
			return Error(EIO, "writing " + tmp);
	}
	if (std::rename(tmp.c_str(), path.c_str()) != 0)
		return Error(errno, "renaming " + tmp);
	return {};
}

} // namespace

std::vector<std::pair<std::string, uint32_t>> sysctlsOf(const config::ConntrackTuning &t)
{
	std::vector<std::pair<std::string, uint32_t>> out;
	if (t.max)
		out.emplace_back("net.netfilter.nf_conntrack_max", *t.max);
	if (t.buckets)
		out.emplace_back("net.netfilter.nf_conntrack_buckets", *t.buckets);
	if (t.tcpEstablished)
		out.emplace_back("net.netfilter.nf_conntrack_tcp_timeout_established", *t.tcpEstablished);
	if (t.tcpTimeWait)
		out.emplace_back("net.netfilter.nf_conntrack_tcp_timeout_time_wait", *t.tcpTimeWait);
	if (t.udp)
		out.emplace_back("net.netfilter.nf_conntrack_udp_timeout", *t.udp);
	if (t.udpStream)
		out.emplace_back("net.netfilter.nf_conntrack_udp_timeout_stream", *t.udpStream);
	return out;
}

Result<TuneReport> tune(const config::ConntrackTuning &tuning, const std::string &stateDir)
{
	TuneReport report;
	std::map<std::string, std::string> saved = loadSaved(stateDir);
	for (const auto &[name, value] : sysctlsOf(tuning)) {
		auto now = readSysctl(name);
		if (!now) {
			report.skipped.push_back(name + ": " + now.error().message());
			continue;
		}
		std::string v = std::to_string(value);
		if (*now == v)
			continue;
		if (access(procPath(name).c_str(), W_OK) != 0) {
			report.skipped.push_back(name + ": read-only in this network namespace");
			continue;
		}
		if (!saved.count(name)) {
			saved[name] = *now;
			// Saved before the write: a crash between the two still restores.
			Status st = storeSaved(stateDir, saved);
			if (!st)
				return st.error().wrap("tuning conntrack");
		}
		Status st = writeSysctl(name, v);
		if (!st)
			return st.error().wrap("tuning conntrack");
		report.changed.push_back(SysctlChange{name, saved[name], v});
	}
	// A key the config no longer sets gets back the value it had before
	// portslice first changed it.
	std::vector<std::pair<std::string, uint32_t>> wanted = sysctlsOf(tuning);
	for (auto it = saved.begin(); it != saved.end();) {
		const std::string &name = it->first;
		if (std::any_of(wanted.begin(), wanted.end(), [&](const auto &w) { return w.first == name; })) {
			++it;
			continue;
		}
		auto now = readSysctl(name);
		if (!now || *now != it->second) {
			Status st = writeSysctl(name, it->second);
			if (!st)
				return st.error().wrap("restoring " + name + ", which the config no longer sets");
			report.changed.push_back(SysctlChange{name, now ? *now : std::string("?"), it->second});
		}
		it = saved.erase(it);
		Status st = storeSaved(stateDir, saved);
		if (!st)
			return st.error().wrap("tuning conntrack");
	}
	return report;
}

Status restore(const std::string &stateDir)
{
	std::map<std::string, std::string> saved = loadSaved(stateDir);
	for (const auto &[name, value] : saved) {
		Status st = writeSysctl(name, value);
		if (!st)
			return st.error().wrap("restoring conntrack sysctls");
	}
	return storeSaved(stateDir, {});
}

TuningSnapshot snapshotTuning(const std::string &stateDir)
{
	TuningSnapshot snapshot;
	config::ConntrackTuning all{1, 1, 1, 1, 1, 1};
	for (const auto &[name, value] : sysctlsOf(all)) {
		(void)value;
		if (auto now = readSysctl(name))
			snapshot.values.emplace_back(name, *now);
	}
	snapshot.saved = loadSaved(stateDir);
	return snapshot;
}

Status restoreTuning(const TuningSnapshot &snapshot, const std::string &stateDir)
{
	for (const auto &[name, value] : snapshot.values) {
		auto now = readSysctl(name);
		if (now && *now == value)
			continue;
		if (Status st = writeSysctl(name, value); !st)
			return st.error().wrap("putting back " + name);
	}
	if (loadSaved(stateDir) != snapshot.saved)
		return storeSaved(stateDir, snapshot.saved);
	return {};
}

namespace {

// Walk the NAT entries of the plan's shared addresses: those on slices this
// server drains go to `draining` (if given), those outside the ports it still
// sends from are deleted when `deleteOutside` (and counted in deletedCount).
Status scan(const plan::Plan &plan, std::vector<DrainingFlow> *draining, bool deleteOutside, size_t *deletedCount)
{
	// address (network order) -> the address, and the ports this server still
	// sends from: its slices and those it drains as previous owner.
	struct Shared {
		const plan::PlannedAddress *address;
		const std::vector<config::PortRange> *keep; // myRuns, or drained below
		std::vector<config::PortRange> drained;     // guardRuns when this server drains a slice here
	};
	std::map<uint32_t, Shared> shared;
	for (const plan::PlannedAddress &a : plan.addresses) {
		Shared &entry = shared[a.address.networkOrder()];
		entry.address = &a;
		entry.keep = &a.myRuns;
		if (std::find(a.previous.begin(), a.previous.end(), static_cast<int32_t>(plan.serverIndex)) !=
		    a.previous.end()) {
			entry.drained = a.guardRuns(plan.serverIndex);
			entry.keep = &entry.drained;
		}
	}

	const auto self = plan.serverIndex;
	Result<size_t> deleted = walk([&](const Entry &e) {
		if (!e.srcNat || (e.l4proto != IPPROTO_TCP && e.l4proto != IPPROTO_UDP))
			return false;
		// The answer comes back to the NAT source: reply destination.
		auto it = shared.find(e.replyDst.networkOrder());
		if (it == shared.end())
			return false;
		uint16_t port = e.replyDstPort;
		for (const config::PortRange &run : *it->second.keep) {
			if (port < run.lo || port > run.hi)
				continue;
			std::optional<uint32_t> slice = it->second.address->sliceOf(port);
			if (draining && slice && it->second.address->drainedBy(*slice, self))
				draining->push_back({it->second.address->address, port, e.zone});
			return false;
		}
		return deleteOutside;
	});
	if (!deleted)
		return deleted.error();
	if (deletedCount)
		*deletedCount = *deleted;

	if (draining) {
		// One element per answer address and port: flows to several
		// destinations may share a port (in the same zone, as it is the
		// source's share that held the port).
		std::sort(draining->begin(), draining->end());
		draining->erase(std::unique(draining->begin(), draining->end(), [](const DrainingFlow &x, const DrainingFlow &y) {
			return x.address == y.address && x.port == y.port;
		}), draining->end());
	}

	return {};
}

} // namespace

bool drainsAny(const plan::Plan &plan)
{
	for (const plan::PlannedAddress &a : plan.addresses)
		if (std::find(a.previous.begin(), a.previous.end(), static_cast<int32_t>(plan.serverIndex)) !=
		    a.previous.end())
			return true;
	return false;
}

Result<std::vector<DrainingFlow>> drainingFlows(const plan::Plan &plan)
{
	std::vector<DrainingFlow> flows;
	if (Status s = scan(plan, &flows, false, nullptr); !s)
		return s.error();
	return flows;
}

Result<size_t> deleteMovedAway(const plan::Plan &plan, std::vector<DrainingFlow> *draining)
{
	if (draining)
		draining->clear();
	size_t deleted = 0;
	if (Status s = scan(plan, draining, true, &deleted); !s)
		return s.error();
	return deleted;
}

Result<size_t> walk(const std::function<bool(const Entry &)> &visit)
{
	NfctHandle dump(nfct_open(CONNTRACK, 0));
	if (!dump)
		return Error(errno, "opening conntrack");
	struct Ctx {
		const std::function<bool(const Entry &)> *visit;
		std::vector<NfConntrack> doomed;
	} ctx{&visit, {}};
	auto cb = [](enum nf_conntrack_msg_type, struct nf_conntrack *ct, void *data) -> int {
		auto *c = static_cast<Ctx *>(data);
		if (nfct_get_attr_u8(ct, ATTR_ORIG_L3PROTO) != AF_INET)
			return NFCT_CB_CONTINUE;
		Entry e;
		e.l4proto = nfct_get_attr_u8(ct, ATTR_ORIG_L4PROTO);
		e.zone = nfct_attr_is_set(ct, ATTR_ZONE) > 0 ? nfct_get_attr_u16(ct, ATTR_ZONE) : 0;
		e.srcNat = (nfct_get_attr_u32(ct, ATTR_STATUS) & IPS_SRC_NAT) != 0;
		e.replyDst = Ipv4{ntohl(nfct_get_attr_u32(ct, ATTR_REPL_IPV4_DST))};
		if (nfct_attr_is_set(ct, ATTR_REPL_PORT_DST) > 0)
			e.replyDstPort = ntohs(nfct_get_attr_u16(ct, ATTR_REPL_PORT_DST));
		if ((*c->visit)(e))
			c->doomed.emplace_back(nfct_clone(ct));
		return NFCT_CB_CONTINUE;
	};
	nfct_callback_register(dump.get(), NFCT_T_ALL, cb, &ctx);
	uint32_t family = AF_INET;
	if (nfct_query(dump.get(), NFCT_Q_DUMP, &family) < 0)
		return Error(errno, "dumping conntrack");
	if (ctx.doomed.empty())
		return size_t{0};
	size_t deleted = 0;
	NfctHandle del(nfct_open(CONNTRACK, 0));
	if (!del)
		return Error(errno, "opening conntrack");
	for (const NfConntrack &ct : ctx.doomed) {
		if (nfct_query(del.get(), NFCT_Q_DESTROY, ct.get()) == 0)
			deleted++;
		else if (errno != ENOENT) // gone by itself meanwhile
			return Error(errno, "deleting a conntrack entry");
	}
	return deleted;
}

} // namespace portslice::conntrack
