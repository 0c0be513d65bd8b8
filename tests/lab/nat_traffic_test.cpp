// SPDX-License-Identifier: MIT
// Lab: real TCP and UDP through the table portsliced applies: both NAT modes, overlapping tenants, and the leak guard.
#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "lab_fixture.h"

namespace portslice {
namespace {

using lab::buildPath;
using lab::sourcePath;

// Every address and port an internet host saw in `labtraffic send` output
// ("tcp ok 198.51.100.1:10023").
struct Seen {
	int ok = 0;
	std::vector<std::pair<std::string, int>> sources;
};

Seen parseSeen(const std::string &output)
{
	Seen s;
	std::regex line(R"((tcp|udp) ok ([0-9.]+):([0-9]+))");
	for (auto it = std::sregex_iterator(output.begin(), output.end(), line); it != std::sregex_iterator(); ++it) {
		s.ok++;
		s.sources.emplace_back((*it)[2], std::stoi((*it)[3]));
	}
	return s;
}

class NatTraffic : public lab::LabFixture {
protected:
	// s1 has the lab fleet's two sources: warp-gb1 (conntrack, w1,
	// 100.64.1.0/24) and corp-us1 (stateless, v1, 100.64.11.0/28, block 100).
	// The stateless workload's host 100.64.11.2 keeps to its block through
	// its namespace's ip_local_port_range.
	lab::LabOptions labOptions() const override
	{
		lab::LabOptions o;
		o.prefix = "psn";
		o.servers = 3;
		o.bus = false;
		o.workloads = {"s1:w1:100.64.1.0/24", "s1:v1:100.64.11.0/28:1:10200-10299"};
		return o;
	}

	std::string config(const std::string &server = "s1")
	{
		std::string path = labDir() + "/" + server + "/portslice.toml";
		auto r = run(sourcePath("tests/lab/lib/fleet.sh") + " --server " + server + " > " + path);
		EXPECT_TRUE(r.ok()) << r.output;
		return path;
	}
	// A third shared address and a stateless /24 source of `block`-port
	// blocks on it: 256 more inside addresses make the fleet a large one
	// (docs/nat.md).
	void appendBulkSource(const std::string &cfg, int block)
	{
		std::ofstream(cfg, std::ios::app) << "\n[[addresses]]\naddress = \"198.51.100.3\"\ndatacenter = \"lab1\"\n"
						     "tags = { product = \"bulk\" }\nslices = { s1 = [0, 3], s2 = [1, 4], s3 = [2, 5] }\n"
						     "\n[[sources]]\nname = \"bulk\"\nmatch = { saddr = \"100.64.200.0/24\" }\n"
						     "want = { product = \"bulk\" }\nnat = \"stateless\"\nblock = "
						  << block << "\n";
	}
	lab::CommandResult applyOnce(const std::string &cfg, const std::string &server = "s1")
	{
		return inNode(server, buildPath("src/daemon/portsliced") + " --no-xdp --config " + cfg +
					      " --state-dir \"$LAB_STATE_DIR\" --apply-once 2>&1");
	}
	void serve(int seconds = 40)
	{
		startInNode("inet", buildPath("tests/lab/labtraffic") + " serve --port 7000 --ports 2 --seconds " +
					    std::to_string(seconds),
			    labDir() + "/inet.log");
		std::this_thread::sleep_for(std::chrono::milliseconds(300));
	}
	lab::CommandResult send(const std::string &node, int tcp, int udp, const std::string &extra = "")
	{
		return inNode(node, buildPath("tests/lab/labtraffic") + " send --to 203.0.113.10:7000 --tcp " +
					    std::to_string(tcp) + " --udp " + std::to_string(udp) + " --timeout-ms 2000 " +
					    extra + " 2>&1");
	}
	int conntrackCount(const std::string &node, const std::string &filter)
	{
		auto r = inNode(node, "conntrack -L " + filter + " 2>/dev/null | wc -l");
		return std::stoi(r.output);
	}
	// All 10 TCP and 10 UDP flows of `workload` answered, every one seen from
	// `address` with a port that `inRange` accepts.
	void expectFlowsFrom(const std::string &workload, const std::string &address,
			     const std::function<bool(int)> &inRange)
	{
		auto r = send(workload, 10, 10);
		EXPECT_TRUE(r.ok()) << r.output;
		Seen seen = parseSeen(r.output);
		EXPECT_EQ(seen.ok, 20) << r.output;
		for (const auto &[addr, port] : seen.sources) {
			EXPECT_EQ(addr, address);
			EXPECT_TRUE(inRange(port)) << port;
		}
	}
	// v1's host 100.64.11.2 sends 3 TCP and 3 UDP flows from its local
	// ports `ports` ("FIRST LAST"), none its own: none is answered, and
	// corp-us1's guard counts their packets.
	void expectGuardDropsFrom(const std::string &ports)
	{
		auto r = inNode("v1", "sysctl -qw net.ipv4.ip_local_port_range='" + ports + "' && " +
					      buildPath("tests/lab/labtraffic") +
					      " send --to 203.0.113.10:7000 --tcp 3 --udp 3 --timeout-ms 800 2>&1");
		EXPECT_FALSE(r.ok()) << r.output;
		EXPECT_EQ(parseSeen(r.output).ok, 0) << r.output;
		auto guard = inNode("s1", "nft list counter inet portslice guard_corp-us1");
		std::smatch m;
		ASSERT_TRUE(std::regex_search(guard.output, m, std::regex("packets ([0-9]+)"))) << guard.output;
		EXPECT_GE(std::stoi(m[1]), 6);
	}
	// v1's host 100.64.11.2 (corp-us1, stateless): 10 TCP and 10 UDP flows
	// answered, every one from 198.51.100.2 in its block 10200-10299, and
	// none of them in the connection table, either way.
	void statelessFlowsLeaveFromTheirBlockUntracked()
	{
		expectFlowsFrom("v1", "198.51.100.2", [](int port) { return port >= 10200 && port <= 10299; });
		EXPECT_EQ(conntrackCount("s1", "-s 100.64.11.0/28"), 0);
		EXPECT_EQ(conntrackCount("s1", "-d 198.51.100.2"), 0);
	}
};

// s1's slices in the lab fleet (fleet.sh, three servers): 0 and 3 of each address.
bool inS1Slices(int port) { return (port >= 10000 && port <= 10999) || (port >= 13000 && port <= 13999); }

TEST_F(NatTraffic, ConntrackAndStatelessSourcesReachTheInternetWithTheSharedAddressAndTheirPorts)
{
	std::string cfg = config();
	auto applied = applyOnce(cfg);
	ASSERT_TRUE(applied.ok()) << applied.output;
	// The abuse desk's view of the stateless block the workload uses.
	auto owner = run(buildPath("src/ctl/portslicectl") + " owner 198.51.100.2:10250 --config " + cfg);
	ASSERT_TRUE(owner.ok()) << owner.output;
	ASSERT_NE(owner.output.find("100.64.11.2"), std::string::npos) << owner.output;
	serve();

	expectFlowsFrom("w1", "198.51.100.1", inS1Slices);

	statelessFlowsLeaveFromTheirBlockUntracked();

	// Conntrack flows are tracked (in their zone).
	EXPECT_GT(conntrackCount("s1", "-s 100.64.1.0/24"), 0);

	// Counted per source and per address.
	auto counters = inNode("s1", "nft list counter inet portslice src_warp-gb1; nft list counter inet portslice addr_198.51.100.2");
	EXPECT_EQ(counters.output.find("packets 0 "), std::string::npos) << counters.output;
}

// With more than 256 stateless inside addresses the stateless maps come in
// shards behind verdict maps (docs/nat.md): a /24 source on a third address
// makes 272, two shards. corp-us1's packets now jump to their shard's chain
// both ways, and still leave from their block and get their answers.
TEST_F(NatTraffic, StatelessTrafficGoesThroughTheShardsOfALargeFleet)
{
	std::string cfg = config();
	appendBulkSource(cfg, 4);
	auto applied = applyOnce(cfg);
	ASSERT_TRUE(applied.ok()) << applied.output;
	auto table = inNode("s1", "nft list table inet portslice");
	ASSERT_TRUE(table.ok()) << table.output;
	EXPECT_NE(table.output.find("ip saddr vmap @sl_egress_shard"), std::string::npos) << table.output;
	EXPECT_NE(table.output.find("100.64.11.0/28 : jump sl_egress_1"), std::string::npos) << table.output;
	EXPECT_NE(table.output.find("198.51.100.2 : jump sl_return_1"), std::string::npos) << table.output;
	EXPECT_EQ(table.output.find("map sl_egress {"), std::string::npos) << table.output;
	// The leak guard's my_ports too: the guard goes to the address's shard.
	EXPECT_NE(table.output.find("ip saddr vmap @my_ports_shard"), std::string::npos) << table.output;
	EXPECT_NE(table.output.find("198.51.100.2 : goto my_ports_1"), std::string::npos) << table.output;
	EXPECT_EQ(table.output.find("set my_ports {"), std::string::npos) << table.output;
	serve();

	statelessFlowsLeaveFromTheirBlockUntracked();

	// Ports of s1's slices that are not in a whole 1024-port block of them
	// (10000-10239) pass the guard only through my_ports_0; a port of s2's
	// slice (11500) is dropped there and counted in guard_other.
	std::string script = labDir() + "/guard.py";
	std::ofstream(script) << R"PY(
import socket, sys
for port in (10100, 11500):
    got = 0
    for i in range(3):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("198.51.100.1", port))
        s.settimeout(0.5)
        try:
            s.sendto(b"x", ("203.0.113.10", 7000))  # a drop in output: EPERM
            s.recv(100)
            got += 1
        except OSError:
            pass
        s.close()
    print(port, got)
)PY";
	auto guardOther = [&] {
		auto c = inNode("s1", "nft list counter inet portslice guard_other");
		std::smatch m;
		EXPECT_TRUE(std::regex_search(c.output, m, std::regex("packets ([0-9]+)"))) << c.output;
		return m.empty() ? -1 : std::stoi(m[1]);
	};
	int before = guardOther();
	ASSERT_TRUE(inNode("s1", "ip addr add 198.51.100.1/32 dev lo").ok());
	auto sent = inNode("s1", "python3 " + script);
	ASSERT_TRUE(sent.ok()) << sent.output;
	EXPECT_NE(sent.output.find("10100 3"), std::string::npos) << sent.output;
	EXPECT_NE(sent.output.find("11500 0"), std::string::npos) << sent.output;
	EXPECT_EQ(guardOther() - before, 3);
}

// The same large fleet where every block and slice is made of aligned units
// (slices of 1024 ports from 8192, corp-us1's blocks of 64, bulk's of 8):
// the unit form (docs/nat.md). The stateless maps are hash maps keyed on the
// first port of an 8-port unit, in 16 parts picked by address bits; v1's
// host 100.64.11.2 (block 8320-8383 of s1's slice 0 of 198.51.100.2, in part
// 0 of sl_egress and part 2 of sl_return) leaves from its block and gets its
// answers, untracked, and a port of its neighbour's block is dropped.
TEST_F(NatTraffic, StatelessTrafficGoesThroughTheHashMapsOfTheUnitForm)
{
	std::string cfg = config();
	ASSERT_TRUE(run("sed -i -e 's/^port_range = .*/port_range = \"8192-16383\"/' -e 's/^slice_size = .*/slice_size = 1024/' "
			"-e 's/^block = 100$/block = 64/' " + cfg)
			    .ok());
	appendBulkSource(cfg, 8);
	auto applied = applyOnce(cfg);
	ASSERT_TRUE(applied.ok()) << applied.output;
	auto table = inNode("s1", "nft list table inet portslice");
	ASSERT_TRUE(table.ok()) << table.output;
	EXPECT_NE(table.output.find("meta l4proto { tcp, udp } ip saddr & 0.0.0.240 vmap @sl_egress_shard"),
		  std::string::npos)
		<< table.output;
	EXPECT_NE(table.output.find("meta l4proto { tcp, udp } ip daddr & 0.0.0.15 vmap @sl_return_shard"),
		  std::string::npos)
		<< table.output;
	EXPECT_NE(table.output.find("ip saddr set th sport & 65528 . ip saddr map @sl_egress_15"), std::string::npos)
		<< table.output;
	EXPECT_NE(table.output.find("ip daddr set th dport & 65528 . ip daddr map @sl_return_15 notrack"),
		  std::string::npos)
		<< table.output;
	EXPECT_EQ(table.output.find("my_ports_shard"), std::string::npos) << table.output;
	// Host 100.64.11.2's block is eight units, each an element of both maps.
	auto egress = inNode("s1", "nft list map inet portslice sl_egress_0");
	auto answers = inNode("s1", "nft list map inet portslice sl_return_2");
	EXPECT_NE(egress.output.find("typeof th sport . ip saddr : ip saddr"), std::string::npos) << egress.output;
	EXPECT_EQ(egress.output.find("flags interval"), std::string::npos) << egress.output;
	for (int unit = 8320; unit < 8384; unit += 8) {
		EXPECT_NE(egress.output.find(std::to_string(unit) + " . 100.64.11.2 : 198.51.100.2"), std::string::npos)
			<< unit << "\n" << egress.output;
		EXPECT_NE(answers.output.find(std::to_string(unit) + " . 198.51.100.2 : 100.64.11.2"), std::string::npos)
			<< unit << "\n" << answers.output;
	}
	serve();

	auto inBlock = [](int port) { return port >= 8320 && port <= 8383; };
	ASSERT_TRUE(inNode("v1", "sysctl -qw net.ipv4.ip_local_port_range='8320 8383'").ok());
	expectFlowsFrom("v1", "198.51.100.2", inBlock);
	EXPECT_EQ(conntrackCount("s1", "-s 100.64.11.0/28"), 0);
	EXPECT_EQ(conntrackCount("s1", "-d 198.51.100.2"), 0);

	// The next unit past its block is 100.64.11.3's: not this host's, dropped.
	expectGuardDropsFrom("8384 8391");
}

TEST_F(NatTraffic, AStatelessHostOutsideItsBlockIsDroppedAndCountedNotLeaked)
{
	ASSERT_TRUE(applyOnce(config()).ok());
	serve();
	// Ports outside 100.64.11.2's block: the guard drops them on s1.
	expectGuardDropsFrom("20000 20099");
}

// Local sockets of s1 hold every tuple of warp-gb1's share (and a few ports
// outside s1's slices) towards the peer while w1's NATed flows go to the same
// peer: whatever conntrack does with the clashes, nothing with the shared
// address and a port outside s1's slices reaches the wire.
TEST_F(NatTraffic, LocalSocketsClashingWithNatedFlowsNeverPutAPortOutsideTheSliceOnTheWire)
{
	ASSERT_TRUE(applyOnce(config()).ok());
	serve();
	std::string pcap = labDir() + "/inet.pcap";
	pid_t dump = startInNode("inet", "tcpdump -i eth0 -n -w " + pcap + " src 198.51.100.1", labDir() + "/tcpdump.log");
	std::this_thread::sleep_for(std::chrono::milliseconds(800));

	std::string script = labDir() + "/clash.py";
	std::ofstream(script) << R"PY(
import socket, sys, time
socks = []
ports = list(range(10000, 11000)) + list(range(13000, 14000)) + list(range(20000, 20020))
for p in ports:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("198.51.100.1", p))
    except OSError:
        continue
    s.connect(("203.0.113.10", 7000))
    try:
        s.send(b"x")
    except OSError:
        pass
    socks.append(s)
print("held", len(socks))
sys.stdout.flush()
time.sleep(float(sys.argv[1]))
)PY";
	// The shared address is local on s1 for these sockets only.
	ASSERT_TRUE(inNode("s1", "ip addr add 198.51.100.1/32 dev lo").ok());
	pid_t holder = startInNode("s1", "python3 " + script + " 8", labDir() + "/clash.log");
	std::this_thread::sleep_for(std::chrono::milliseconds(1500));
	auto flows = send("w1", 10, 40, "--parallel 8");
	(void)flows; // some answers may go to the local sockets: delivery is not the point here
	stopInNode(holder);
	std::this_thread::sleep_for(std::chrono::milliseconds(500));
	stopInNode(dump);

	auto ports = run("tcpdump -n -r " + pcap + " 2>/dev/null | sed -n 's/.* 198\\.51\\.100\\.1\\.\\([0-9]*\\) > .*/\\1/p'");
	std::istringstream in(ports.output);
	int seen = 0, outside = 0;
	for (std::string p; std::getline(in, p);) {
		seen++;
		if (!inS1Slices(std::stoi(p)))
			outside++;
	}
	EXPECT_GT(seen, 2000) << run("cat " + labDir() + "/clash.log").output;
	EXPECT_EQ(outside, 0);
	// The out-of-slice local sockets were stopped by the guard, and counted.
	auto guard = inNode("s1", "nft list counter inet portslice guard_other");
	std::smatch m;
	ASSERT_TRUE(std::regex_search(guard.output, m, std::regex("packets ([0-9]+)"))) << guard.output;
	EXPECT_GE(std::stoi(m[1]), 20);
}

TEST_F(NatTraffic, RemoveLeavesNoTableRouteOrRule)
{
	ASSERT_TRUE(applyOnce(config()).ok());
	auto removed = inNode("s1", buildPath("src/daemon/portsliced") + " --no-xdp --state-dir \"$LAB_STATE_DIR\" --remove 2>&1");
	ASSERT_TRUE(removed.ok()) << removed.output;
	EXPECT_EQ(inNode("s1", "nft list ruleset").output, "");
	EXPECT_EQ(inNode("s1", "ip rule | grep -c 0x5053 || true").output, "0\n");
}

// Two tenants with the same inside prefix behind two interfaces of s1, each
// its own source (iifname + saddr) and conntrack zone: both egress at once,
// and each gets its own answers back (fwmark routing out of its interface).
class OverlappingTenants : public NatTraffic {
protected:
	lab::LabOptions labOptions() const override
	{
		lab::LabOptions o = NatTraffic::labOptions();
		o.prefix = "psno";
		o.workloads = {"s1:ta:100.64.5.0/24", "s1:tb:100.64.5.0/24"};
		return o;
	}
};

TEST_F(OverlappingTenants, BothTenantsEgressAtTheSameTimeWithoutALostFlow)
{
	std::string cfg = labDir() + "/s1/tenants.toml";
	{
		std::string fleet = run(sourcePath("tests/lab/lib/fleet.sh") + " --server s1").output;
		// The lab fleet without its own sources, plus the two tenants.
		fleet = fleet.substr(0, fleet.find("[[sources]]"));
		std::ofstream(cfg) << fleet
				   << "[[sources]]\nname = \"tenant-a\"\nmatch = { iifname = \"ta\", saddr = \"100.64.5.0/24\" }\n"
				      "want = { country = \"GB\" }\nzone = 501\n\n"
				      "[[sources]]\nname = \"tenant-b\"\nmatch = { iifname = \"tb\", saddr = \"100.64.5.0/24\" }\n"
				      "want = { country = \"GB\" }\nzone = 502\n";
	}
	auto applied = applyOnce(cfg);
	ASSERT_TRUE(applied.ok()) << applied.output;
	EXPECT_EQ(applied.output.find("no return route"), std::string::npos) << applied.output;
	serve();

	// Both at once, the same inside address and the same source ports.
	auto both = run(execWords("ta") + " " + buildPath("tests/lab/labtraffic") +
			" send --to 203.0.113.10:7000 --tcp 20 --udp 20 --parallel 4 --timeout-ms 3000 > " + labDir() +
			"/ta.out 2>&1 & " + execWords("tb") + " " + buildPath("tests/lab/labtraffic") +
			" send --to 203.0.113.10:7000 --tcp 20 --udp 20 --parallel 4 --timeout-ms 3000 > " + labDir() +
			"/tb.out 2>&1 & wait");
	std::string a = run("cat " + labDir() + "/ta.out").output, b = run("cat " + labDir() + "/tb.out").output;
	Seen sa = parseSeen(a), sb = parseSeen(b);
	EXPECT_EQ(sa.ok, 40) << a;
	EXPECT_EQ(sb.ok, 40) << b;
	// Each tenant in its own zone on s1.
	EXPECT_GT(conntrackCount("s1", "-w 501"), 0);
	EXPECT_GT(conntrackCount("s1", "-w 502"), 0);
}

} // namespace
} // namespace portslice
