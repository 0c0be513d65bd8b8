// SPDX-License-Identifier: MIT
// Soak: 100,000 short TCP connections through the three lab servers; none lost, none leaked at the edge; prints connections per second.
#include <chrono>
#include <cstdio>
#include <regex>
#include <sstream>

#include "lab_fixture.h"

using portslice::lab::buildPath;
using portslice::lab::LabFixture;
using portslice::lab::LabOptions;
using portslice::lab::sourcePath;

namespace {

constexpr int kConnections = 100'002; // three workloads, 33,334 each
constexpr int kInetPorts = 16;        // x 4 inet addresses: 64 destinations, so no source port is needed twice per destination

long sumOf(const std::string &text, const std::string &pattern)
{
	long total = 0;
	std::regex re(pattern);
	for (std::sregex_iterator it(text.begin(), text.end(), re), end; it != end; ++it)
		total += std::stol((*it)[1]);
	return total;
}

class Soak : public LabFixture {
protected:
	LabOptions labOptions() const override
	{
		LabOptions o;
		o.prefix = "psl";
		o.steer = "hash"; // answers land on any server: the forwarder is in the loop
		o.bus = false;
		return o;
	}

	// The edge check at the router: every TCP/UDP packet leaving for the
	// internet must come from the MAC of the server that owns its source port.
	void installEdgeCheck()
	{
		std::string allowed;
		auto owners = run("for s in s1 s2 s3; do " + sourcePath("tests/lab/lib/fleet.sh") + " --server $s > " +
				  labDir() + "/$s/portslice.toml; " + buildPath("src/ctl/portslicectl") +
				  " plan --json --config " + labDir() + "/$s/portslice.toml | jq -r --arg s $s "
				  "'.addresses[] | .address as $a | .my_ports[] | \"\\($s) \\($a) \\(.first)-\\(.last)\"'; done");
		ASSERT_TRUE(owners.ok()) << owners.output;
		std::istringstream in(owners.output);
		for (std::string server, address, ports; in >> server >> address >> ports;) {
			std::string mac = "02:00:00:00:00:1" + server.substr(1);
			allowed += (allowed.empty() ? "" : ", ") + mac + " . " + address + " . " + ports;
		}
		std::string rules = "add table ip edge\n"
				    "add set ip edge allowed { type ether_addr . ipv4_addr . inet_service; flags interval; }\n"
				    "add element ip edge allowed { " + allowed + " }\n"
				    "add chain ip edge out { type filter hook forward priority 0; }\n"
				    "add rule ip edge out iifname \"eth1\" oifname \"eth0\" meta l4proto { tcp, udp } "
				    "ether saddr . ip saddr . th sport @allowed counter accept\n"
				    "add rule ip edge out iifname \"eth1\" oifname \"eth0\" counter drop comment \"leak\"\n";
		auto r = inNode("rtr", "nft -f - <<'EOF'\n" + rules + "EOF");
		ASSERT_TRUE(r.ok()) << r.output;
	}
};

TEST_F(Soak, HundredThousandShortConnectionsNoneLostNoneLeaked)
{
	ASSERT_NO_FATAL_FAILURE(installEdgeCheck());
	for (const char *s : {"s1", "s2", "s3"}) {
		auto r = inNode(s, buildPath("src/daemon/portsliced") + " --config " + labDir() + "/" + s +
					   "/portslice.toml --apply-once");
		ASSERT_TRUE(r.ok()) << s << ": " << r.output;
	}
	startInNode("inet", buildPath("tests/lab/labtraffic") + " serve --port 7000 --ports " + std::to_string(kInetPorts) +
				    " --seconds 280 --quiet",
		    labDir() + "/inet.log");
	std::this_thread::sleep_for(std::chrono::milliseconds(300));

	std::string targets;
	for (int a = 10; a < 14; ++a)
		for (int p = 7000; p < 7000 + kInetPorts; ++p)
			targets += (targets.empty() ? "" : ",") + std::string("203.0.113.") + std::to_string(a) + ":" +
				   std::to_string(p);
	std::string cmd;
	for (const char *w : {"w1", "w2", "w3"})
		cmd += execWords(w) + " " + buildPath("tests/lab/labtraffic") +
		       " send --to " + targets + " --tcp " + std::to_string(kConnections / 3) +
		       " --parallel 16 --timeout-ms 2000 --quiet > " + labDir() + "/" + w + ".soak 2>&1 & ";
	auto start = std::chrono::steady_clock::now();
	auto r = run(cmd + "wait; cat " + labDir() + "/w?.soak", 260);
	double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
	long ok = sumOf(r.output, R"(summary tcp (\d+)/)");
	long lost = kConnections - ok;

	long leaks = 0, passed = 0;
	{
		auto e = inNode("rtr", "nft list chain ip edge out");
		leaks = sumOf(e.output, R"(counter packets (\d+) bytes \d+ drop)");
		passed = sumOf(e.output, R"(counter packets (\d+) bytes \d+ accept)");
	}
	long guard = 0, exhaustion = 0;
	for (const char *s : {"s1", "s2", "s3"}) {
		guard += sumOf(inNode(s, "nft -j list counters table inet portslice | jq '.nftables[] | .counter? | "
					 "select(. != null) | select(.name | startswith(\"guard_\")) | .packets'")
				       .output,
			       R"((\d+))");
		// Port exhaustion shows as conntrack insertions that failed (no free tuple).
		exhaustion += sumOf(inNode(s, "conntrack -S").output, R"(insert_failed=(\d+))");
	}
	std::printf("soak: %d connections in %.1f s = %.0f connections/s; completed %ld, lost %ld, "
		    "port-exhaustion (conntrack insert_failed) %ld, leak-guard drops %ld, edge: %ld packets passed, %ld leaked\n",
		    kConnections, seconds, kConnections / seconds, ok, lost, exhaustion, guard, passed, leaks);
	RecordProperty("connections_per_second", std::to_string(static_cast<long>(kConnections / seconds)));
	// Control: a datagram with the server's own address is not a shared
	// address and port of its slices, so the edge must count exactly it.
	(void)inNode("s1", buildPath("tests/lab/labtraffic") + " send --to 203.0.113.10:7000 --udp 1 --timeout-ms 500");
	long control = sumOf(inNode("rtr", "nft list chain ip edge out").output, R"(counter packets (\d+) bytes \d+ drop)");
	EXPECT_EQ(control, leaks + 1) << "the edge check did not see a packet it must count";
	EXPECT_LE(lost, exhaustion) << "connections lost beyond the port-exhaustion counter:\n"
				    << r.output.substr(0, 4000);
	EXPECT_EQ(leaks, 0) << "packets left with a port of a slice their server does not own";
	EXPECT_EQ(guard, 0);
	EXPECT_GT(passed, 2L * kConnections) << "the edge saw too little traffic";
}

} // namespace
