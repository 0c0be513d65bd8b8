// SPDX-License-Identifier: MIT
// Lab fixture for portsliced --apply-once runs: one network namespace with an uplink veth, a bpffs of the test's own, and the kernel's portslice state as text.
#pragma once

#include "dbus_lab.h"

#include <bpf/bpf.h>
#include <cstdint>
#include <cstdio>
#include <map>
#include <set>

namespace portslice::dbuslab {

// What the forwarder's pinned maps say, independent of where the loader put
// things: per address its fields and, slice by slice, the owner, previous
// owner and zones as their targets' and zone sets' contents (not slot
// numbers; a free slot or a run no address names means nothing); the
// peers and config as they are. Counters and the flows the egress program
// noted (fwd_flows) aside.
inline std::string forwarderMaps(const std::string &pins)
{
	using Bytes = std::vector<unsigned char>;
	// Small maps whole; fwd_slices, fwd_targets and fwd_zones (large
	// arrays) only where an address or a slice points.
	std::map<std::string, std::map<Bytes, Bytes>> dumped;
	std::map<std::string, int> fds;
	std::map<std::string, bpf_map_info> infos;
	std::error_code ec;
	for (const auto &e : fs::directory_iterator(pins, ec)) {
		std::string name = e.path().filename().string();
		if (name.rfind("fwd_", 0) != 0 || name == "fwd_counters" || name == "fwd_flows")
			continue; // what traffic writes, not what the plan says
		int fd = bpf_obj_get(e.path().c_str());
		if (fd < 0)
			continue;
		bpf_map_info info{};
		uint32_t size = sizeof(info);
		if (bpf_obj_get_info_by_fd(fd, &info, &size) != 0) {
			::close(fd);
			continue;
		}
		fds[name] = fd;
		infos[name] = info;
		if (name == "fwd_slices" || name == "fwd_targets" || name == "fwd_zones")
			continue;
		auto &entries = dumped[name];
		Bytes key(info.key_size), next(info.key_size), value(info.value_size);
		bool first = true;
		while (bpf_map_get_next_key(fd, first ? nullptr : key.data(), next.data()) == 0) {
			first = false;
			key = next;
			if (bpf_map_lookup_elem(fd, key.data(), value.data()) == 0 &&
			    std::any_of(value.begin(), value.end(), [](unsigned char c) { return c != 0; }))
				entries[key] = value;
		}
	}
	// Entry `index` of an array map, or empty.
	auto entry = [&](const std::string &map, uint32_t index) -> Bytes {
		auto fd = fds.find(map);
		if (fd == fds.end())
			return {};
		Bytes value(infos[map].value_size);
		if (bpf_map_lookup_elem(fd->second, &index, value.data()) != 0 ||
		    std::none_of(value.begin(), value.end(), [](unsigned char c) { return c != 0; }))
			return {};
		return value;
	};
	auto hex = [](const Bytes &b, size_t from = 0, size_t to = SIZE_MAX) {
		std::string out;
		char h[4];
		for (size_t i = from; i < b.size() && i < to; i++) {
			std::snprintf(h, sizeof(h), "%02x", b[i]);
			out += h;
		}
		return out;
	};
	auto u16 = [](const Bytes &b, size_t at) { return static_cast<uint32_t>(b[at] | b[at + 1] << 8); };
	auto u32 = [](const Bytes &b, size_t at) {
		return static_cast<uint32_t>(b[at] | b[at + 1] << 8 | b[at + 2] << 16 | static_cast<uint32_t>(b[at + 3]) << 24);
	};
	auto slot = [&](const char *map, uint32_t index) -> std::string {
		if (index == 0)
			return "-";
		Bytes value = entry(map, index);
		return value.empty() ? "empty" : hex(value);
	};
	std::string out;
	for (const char *addresses : {"fwd_addr_index", "fwd_addrs"}) {
		out += std::string(addresses) + ":\n";
		for (const auto &[key, a] : dumped[addresses]) {
			// addr, then port_lo .. slice_shift; slice_base left out.
			out += hex(a, 0, 4) + " " + hex(a, 8, 16) + " gateway " + slot("fwd_targets", u16(a, 16)) + "\n";
			uint32_t base = u32(a, 4), count = u16(a, 12);
			for (uint32_t i = 0; i < count; i++) {
				Bytes w = entry("fwd_slices", base + i);
				if (w.empty()) {
					out += "  slice " + std::to_string(i) + ": empty\n";
					continue;
				}
				out += "  slice " + std::to_string(i) + ": owner " + slot("fwd_targets", u16(w, 0)) + " previous " +
				       slot("fwd_targets", u16(w, 2)) + " flags " + std::to_string(u16(w, 4)) + " zones " +
				       slot("fwd_zones", u16(w, 6)) + "\n";
			}
		}
	}
	for (const char *raw : {"fwd_peers", "fwd_config"}) {
		out += std::string(raw) + ":\n";
		for (const auto &[key, value] : dumped[raw])
			out += hex(key) + " = " + hex(value) + "\n";
	}
	for (const auto &[name, fd] : fds)
		::close(fd);
	return out;
}

class NsLab : public ::testing::Test {
protected:
	void SetUp() override
	{
		if (::geteuid() != 0)
			GTEST_SKIP() << "lab test: needs root for network namespaces, nftables and bpffs";
		lab::removeStaleNamespaces("pcr");
		std::string pattern = (fs::temp_directory_path() / "pcr-XXXXXX").string();
		ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
		dir_ = pattern;
		ns_ = "pcr-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++);
		// up0 is the uplink; up2 (up) and up4 (down) are interfaces for iifname sources.
		Outcome made = sh("ip netns add " + ns_ + " && ip -n " + ns_ + " link set lo up && ip -n " + ns_ +
				  " link add up0 type veth peer name up1 && ip -n " + ns_ + " link set up0 up && ip -n " +
				  ns_ + " link set up1 up && ip -n " + ns_ + " addr add 192.0.2.11/24 dev up0 && ip -n " +
				  ns_ + " link add up2 type veth peer name up3 && ip -n " + ns_ + " link set up2 up && ip -n " +
				  ns_ + " link set up3 up && ip -n " + ns_ + " link add up4 type veth peer name up5");
		ASSERT_TRUE(made.ok()) << made.output;
		fs::create_directory(dir_ / "bpf");
		Outcome mounted = sh("mount -t bpf bpf " + quote((dir_ / "bpf").string()));
		ASSERT_TRUE(mounted.ok()) << mounted.output;
	}

	void TearDown() override
	{
		if (!ns_.empty()) {
			(void)sh("ip netns del " + ns_);
			(void)sh("umount " + quote((dir_ / "bpf").string()));
		}
		if (!dir_.empty())
			fs::remove_all(dir_);
	}

	std::string bin(const std::string &relative) const { return std::string(PSD_BUILD_ROOT) + "/" + relative; }
	std::string configPath() const { return (dir_ / "c.toml").string(); }
	std::string pinDir() const { return (dir_ / "bpf" / "portslice").string(); }
	void writeConfig(const std::string &text) const { std::ofstream(configPath(), std::ios::trunc) << text; }

	// portsliced in the namespace; `wrap` runs before it in the same shell
	// (e.g. "unshare -m sh -c 'mount ...; exec \"$0\" \"$@\"'").
	Outcome daemon(const std::string &args, const std::string &pins = "", const std::string &wrap = "") const
	{
		return sh("ip netns exec " + ns_ + " " + wrap + " " + bin("src/daemon/portsliced") + " --config " +
			  quote(configPath()) + " --state-dir " + quote((dir_ / "state").string()) + " --xdp-pin-dir " +
			  quote(pins.empty() ? pinDir() : pins) + " " + args);
	}
	Outcome inNs(const std::string &command) const { return sh("ip netns exec " + ns_ + " sh -c " + quote(command)); }

	// Everything of portslice in the namespace's kernel: the table (sets in
	// sorted order), conntrack sysctls, routing rules and routes, whether an
	// XDP program is on up0, portslice's neighbour entries (protocol 80,
	// address and interface: their state follows ARP), and the forwarder's
	// pinned maps.
	std::string kernel() const
	{
		std::string pins = pinDir();
		Outcome rest = inNs(
			"nft list table inet portslice 2>&1; echo ===; sysctl net.netfilter.nf_conntrack_tcp_timeout_established "
			"net.netfilter.nf_conntrack_tcp_timeout_time_wait net.netfilter.nf_conntrack_udp_timeout "
			"net.netfilter.nf_conntrack_udp_timeout_stream; echo rules:; ip rule; echo routes:; "
			"ip route show table all | grep -v 'table local'; echo neighbours:; ip -d neigh show | "
			"awk '/ managed .*proto 80/ { print $1, $3 }' | sort; echo xdp:; ip -d link show up0 | grep -o 'prog/xdp'");
		size_t split = rest.output.find("===\n");
		return normalized(rest.output.substr(0, split)) + rest.output.substr(split) + forwarderMaps(pins);
	}

	static inline int counter_ = 0;
	fs::path dir_;
	std::string ns_;
};

} // namespace portslice::dbuslab
