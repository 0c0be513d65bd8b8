// SPDX-License-Identifier: MIT
// Stats rows from nft counters, and one libnetfilter_conntrack table dump for use per zone and per slice.
#include "daemon/kernel_stats.h"

#include <arpa/inet.h>
#include <cerrno>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>
#include <linux/netfilter.h>
#include <map>
#include <set>
#include <unistd.h>

#include "common/handle.h"

namespace portslice::daemon {

namespace {

using NfctHandle = Handle<nfct_handle, nfct_close>;

} // namespace

// src_NAME -> (source, NAME), addr_A -> (address, A), guard_X -> (guard, X).
void addCounterRows(std::vector<service::StatRow> &rows, const std::string &name, uint64_t packets, uint64_t bytes)
{
	struct Prefix {
		const char *prefix;
		const char *kind;
	};
	for (Prefix p : {Prefix{"src_", "source"}, Prefix{"addr_", "address"}, Prefix{"guard_", "guard"}}) {
		std::string_view prefix = p.prefix;
		if (!name.starts_with(prefix))
			continue;
		std::string what = name.substr(prefix.size());
		if (std::string_view(p.kind) == "guard") {
			rows.push_back({p.kind, what, "drops", packets});
		} else {
			rows.push_back({p.kind, what, "packets", packets});
			rows.push_back({p.kind, what, "bytes", bytes});
		}
		return;
	}
	rows.push_back({"counter", name, "packets", packets});
}

namespace {

struct ConntrackScan {
	std::map<uint16_t, uint64_t> perZone;
	// (address in host order, port) -> seen, for the reply direction's destination
	std::map<uint32_t, std::set<uint16_t>> portsByAddress;
};

int conntrackCallback(nf_conntrack_msg_type, nf_conntrack *ct, void *data)
{
	auto *scan = static_cast<ConntrackScan *>(data);
	uint16_t zone = nfct_attr_is_set(ct, ATTR_ZONE) > 0 ? nfct_get_attr_u16(ct, ATTR_ZONE) : 0;
	++scan->perZone[zone];
	if (nfct_get_attr_u8(ct, ATTR_L3PROTO) == AF_INET && nfct_attr_is_set(ct, ATTR_REPL_PORT_DST) > 0) {
		uint32_t address = ntohl(nfct_get_attr_u32(ct, ATTR_REPL_IPV4_DST));
		scan->portsByAddress[address].insert(ntohs(nfct_get_attr_u16(ct, ATTR_REPL_PORT_DST)));
	}
	return NFCT_CB_CONTINUE;
}

} // namespace

Result<std::vector<service::StatRow>> readConntrackUse(const plan::Plan &plan)
{
	NfctHandle handle(nfct_open(CONNTRACK, 0));
	if (!handle)
		return Error(errno, "opening conntrack");
	ConntrackScan scan;
	nfct_callback_register(handle.get(), NFCT_T_ALL, conntrackCallback, &scan);
	uint32_t family = AF_INET;
	if (nfct_query(handle.get(), NFCT_Q_DUMP, &family) < 0)
		return Error(errno, "dumping conntrack");

	std::vector<service::StatRow> rows;
	std::set<uint16_t> zones;
	for (const plan::PlannedSource &s : plan.sources)
		if (s.mode == plan::NatMode::Conntrack)
			zones.insert(s.zone);
	for (uint16_t zone : zones)
		rows.push_back({"zone", std::to_string(zone), "entries", scan.perZone[zone]});
	for (const plan::PlannedAddress &a : plan.addresses) {
		const std::set<uint16_t> &used = scan.portsByAddress[a.address.value];
		for (uint32_t slice : a.mySlices) {
			plan::PortRange range = a.slice(slice);
			auto from = used.lower_bound(range.lo);
			auto to = used.upper_bound(range.hi);
			uint64_t inUse = static_cast<uint64_t>(std::distance(from, to));
			std::string name = a.address.str() + "/" + std::to_string(slice);
			rows.push_back({"slice", name, "ports_in_use", inUse});
			rows.push_back({"slice", name, "percent_in_use", inUse * 100 / range.size()});
		}
	}
	return rows;
}

} // namespace portslice::daemon
