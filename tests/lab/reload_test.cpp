// SPDX-License-Identifier: MIT
// Reload applies every change: each config key, changed alone, changes what the kernel holds (nft, sysctls, routes, XDP maps) with a new generation.
#include "ns_lab.h"

#include <functional>

namespace portslice::dbuslab {
namespace {

// Two data centres (a remote address uses lab2's gateway), MACs given for
// s2, an iifname source (return routes) and every [conntrack] timeout.
const std::string kWalkFleet = portslice::test::fixture("reload-walk.toml");

struct Change {
	const char *key;  // as a person names it
	const char *from; // text of kWalkFleet (every occurrence is replaced)
	const char *to;
	// What the change reaches: the kernel; names reach only Plan() (a new
	// generation all the same); another server's data centre nothing the
	// daemon applies (it is checked, and used by the fleet), so the reload
	// keeps the generation (docs/operations.md).
	enum Effect { Kernel, Plan, Nothing } effect = Kernel;
};

// Every key of the config, changed alone.
const Change kChanges[] = {
	{"[server] name", "name = \"s1\"\nuplink", "name = \"s2\"\nuplink"},
	{"[server] uplink", "uplink = \"up0\"", "uplink = \"up2\""},
	{"[defaults] port_range", "port_range = \"1024-9215\"\nslice_size = 2048\n\n[conntrack]",
	 "port_range = \"2048-10239\"\nslice_size = 2048\n\n[conntrack]"},
	{"[defaults] slice_size", "slice_size = 2048\n\n[conntrack]", "slice_size = 1024\n\n[conntrack]"},
	{"[conntrack] tcp_timeout_established", "tcp_timeout_established = 3600", "tcp_timeout_established = 7200"},
	{"[conntrack] tcp_timeout_time_wait", "tcp_timeout_time_wait = 60", "tcp_timeout_time_wait = 30"},
	{"[conntrack] udp_timeout", "udp_timeout = 40", "udp_timeout = 45"},
	{"[conntrack] udp_timeout_stream", "udp_timeout_stream = 150", "udp_timeout_stream = 160"},
	{"[[datacenters]] gateway", "gateway = \"192.0.2.2\"", "gateway = \"192.0.2.3\""},
	{"[[servers]] address", "address = \"192.0.2.12\"", "address = \"192.0.2.22\""},
	{"[[servers]] mac (changed)", "mac = \"02:00:00:00:00:12\"", "mac = \"02:00:00:00:00:22\""},
	{"[[servers]] mac (added)", "address = \"192.0.2.13\"\ndatacenter = \"lab1\"",
	 "address = \"192.0.2.13\"\ndatacenter = \"lab1\"\nmac = \"02:00:00:00:00:13\""},
	{"[[servers]] datacenter", "address = \"192.0.2.13\"\ndatacenter = \"lab1\"",
	 "address = \"192.0.2.13\"\ndatacenter = \"lab2\"", Change::Nothing},
	{"[[servers]] name", "s3", "s9", Change::Plan},
	{"[[datacenters]] name", "lab2", "lab9", Change::Plan},
	{"[[addresses]] address", "address = \"198.51.100.2\"", "address = \"198.51.100.3\""},
	{"[[addresses]] datacenter", "address = \"198.51.100.9\"\ndatacenter = \"lab2\"",
	 "address = \"198.51.100.9\"\ndatacenter = \"lab1\""},
	// 198.51.100.2 gets a tag source warp-gb wants too: it becomes a candidate.
	{"[[addresses]] tags", "tags = { country = \"FR\" }", "tags = { country = \"GB\" }"},
	{"[[addresses]] slices", "slices = { s1 = 0, s2 = 1, s3 = [2, 3] }", "slices = { s1 = [0, 2], s2 = 1, s3 = 3 }"},
	{"[[addresses]] previous", "previous = { s3 = 1 }", "previous = { s2 = 2 }"},
	{"[[addresses]] port_range", "port_range = \"2048-10239\"", "port_range = \"4096-12287\""},
	{"[[addresses]] slice_size", "slice_size = 4096\nslices", "slice_size = 2048\nslices"},
	{"[[sources]] name", "name = \"warp-gb\"", "name = \"warp-uk\""},
	{"[[sources]] match.saddr", "saddr = \"100.64.1.0/24\"", "saddr = \"100.64.1.0/25\""},
	{"[[sources]] match.mark", "mark = 7", "mark = 8"},
	{"[[sources]] match.uid", "uid = 1000", "uid = 1001"},
	{"[[sources]] match.cgroup", "cgroup = 5", "cgroup = 6"},
	{"[[sources]] match.iifname", "iifname = \"up1\"", "iifname = \"up2\""},
	{"[[sources]] want", "saddr = \"100.64.2.0/24\" }\nwant = { country = \"GB\" }",
	 "saddr = \"100.64.2.0/24\" }\nwant = { country = \"FR\" }"},
	{"[[sources]] zone", "zone = 10", "zone = 12"},
	{"[[sources]] weight", "weight = 2", "weight = 3"},
	{"[[sources]] nat", "nat = \"stateless\"\nblock = 32", "nat = \"conntrack\""},
	{"[[sources]] block", "block = 32", "block = 16"},
};

class ReloadLab : public DbusLab {
protected:
	// What the kernel holds of portslice in the namespace: the table (its
	// comment aside: a delta keeps the last replace's), conntrack sysctls,
	// routing rules and routes, XDP program and maps.
	std::string kernel() const
	{
		std::string pins = pinDir();
		Outcome all = inNs("nft list table inet portslice; echo ===; sysctl "
				   "net.netfilter.nf_conntrack_tcp_timeout_established "
				   "net.netfilter.nf_conntrack_tcp_timeout_time_wait net.netfilter.nf_conntrack_udp_timeout "
				   "net.netfilter.nf_conntrack_udp_timeout_stream; ip rule; ip route show table all | "
				   "grep -v 'table local'; ip link show up0 | grep -o 'prog/xdp'");
		size_t split = all.output.find("===\n");
		// Lines sorted: objects created in another order list in another order.
		std::vector<std::string> lines;
		std::istringstream listed(withoutGeneration(normalized(all.output.substr(0, split))));
		for (std::string line; std::getline(listed, line);)
			if (line.find("comment \"") == std::string::npos)
				lines.push_back(line);
		std::sort(lines.begin(), lines.end());
		std::string nft;
		for (const std::string &line : lines)
			nft += line + "\n";
		Outcome rest{0, split == std::string::npos ? "" : all.output.substr(split)};
		return nft + "\n" + rest.output + forwarderMaps(pins);
	}

	std::string planJson() const
	{
		Outcome r = call("Plan");
		return r.output;
	}

	bool reload(uint64_t expect)
	{
		Outcome r = call("Reload");
		if (!r.ok()) {
			ADD_FAILURE() << r.output << readFile(logPath());
			return false;
		}
		EXPECT_EQ(r.output, "t " + std::to_string(expect) + "\n") << readFile(logPath());
		return true;
	}
};

TEST_F(ReloadLab, EveryConfigKeyChangedAloneChangesTheKernelAfterReload)
{
	ASSERT_TRUE(inNs("ip link add up2 type veth peer name up3 && ip link set up2 up && ip link set up3 up").ok());
	writeConfig(kWalkFleet);
	startDaemon();
	uint64_t generation = 1;
	ASSERT_EQ(this->generation(), generation);
	std::string base = kernel();
	ASSERT_NE(base.find("prog/xdp"), std::string::npos) << base;
	ASSERT_NE(base.find("udp_timeout = 40"), std::string::npos) << base;

	for (const Change &c : kChanges) {
		SCOPED_TRACE(c.key);
		std::string text = kWalkFleet;
		std::string from = c.from;
		ASSERT_NE(text.find(from), std::string::npos) << from;
		for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + 1))
			text.replace(at, from.size(), c.to);
		writeConfig(text);
		std::string plan = c.effect == Change::Kernel ? "" : planJson();
		if (c.effect == Change::Nothing) {
			ASSERT_TRUE(reload(generation));
			EXPECT_EQ(planJson(), plan);
			EXPECT_EQ(kernel(), base);
			continue;
		}
		ASSERT_TRUE(reload(++generation));
		if (c.effect == Change::Kernel)
			EXPECT_NE(kernel(), base) << "the kernel did not change";
		else
			EXPECT_NE(planJson(), plan) << "Plan() did not change";
		writeConfig(kWalkFleet);
		ASSERT_TRUE(reload(++generation));
	}
	// Back to the first file: the kernel is as it was.
	EXPECT_EQ(kernel(), base);
}

TEST_F(ReloadLab, ConntrackMaxAndBucketsAreReportedNotSetInANetworkNamespace)
{
	// nf_conntrack_max and _buckets are the host's: a namespace cannot set
	// them (docs/config.md); the reload applies a generation and says so.
	writeConfig(kWalkFleet);
	startDaemon();
	std::string text = kWalkFleet;
	text.replace(text.find("max = 65536"), 11, "max = 65537");
	writeConfig(text);
	ASSERT_TRUE(reload(2));
	EXPECT_NE(readFile(logPath()).find("nf_conntrack_max: read-only"), std::string::npos) << readFile(logPath());
}

} // namespace
} // namespace portslice::dbuslab
