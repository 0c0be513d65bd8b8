// SPDX-License-Identifier: MIT
// Failover in the lab: server 3 dies, orchestration gives its slices to servers 1 and 2, which carry new flows within 5 s; nothing goes towards s3.
#include <chrono>
#include <cstdio>
#include <algorithm>
#include <map>
#include <set>
#include <regex>
#include <sstream>
#include <tuple>

#include "lab_fixture.h"

using portslice::lab::buildPath;
using portslice::lab::CommandResult;
using portslice::lab::LabFixture;
using portslice::lab::LabOptions;
using portslice::lab::shellQuote;
using portslice::lab::sourcePath;

namespace {

using Clock = std::chrono::steady_clock;

// Ports of the slices s3 owns in the lab fleet (tests/lab/lib/fleet.sh):
// slices 2 and 5 of 10000-15999 in 1000-port slices, on both addresses.
constexpr int kSlice2Lo = 12000, kSlice2Hi = 12999;
constexpr int kSlice5Lo = 15000, kSlice5Hi = 15999;

class Failover : public LabFixture {
protected:
	LabOptions labOptions() const override
	{
		LabOptions o;
		o.prefix = "psl";
		o.steer = "hash";
		// 250 inside addresses each: the upper half of every prefix is the
		// share that grows into the dead server's slices.
		o.workloads = {"s1:w1:100.64.1.0/24:250", "s2:w2:100.64.2.0/24:250", "s3:w3:100.64.3.0/24:1"};
		return o;
	}

	std::string ctl() const { return buildPath("src/ctl/portslicectl"); }

	void startServer(const std::string &s)
	{
		std::string config = labDir() + "/" + s + "/portslice.toml";
		auto r = run(sourcePath("tests/lab/lib/fleet.sh") + " --server " + s + " > " + config);
		ASSERT_TRUE(r.ok()) << r.output;
		daemons_[s] = startInNode(s, buildPath("src/daemon/portsliced") + " --config " + config +
						     " --state-dir \"$LAB_STATE_DIR\"",
					  labDir() + "/" + s + "/portsliced.log");
		for (int i = 0; i < 100; ++i) {
			if (inNode(s, ctl() + " status").ok())
				return;
			std::this_thread::sleep_for(std::chrono::milliseconds(100));
		}
		FAIL() << s << ": portsliced not ready:\n" << run("cat " + labDir() + "/" + s + "/portsliced.log").output;
	}

	// Sends flows from a workload; returns the source ports inet saw, and how many flows failed.
	std::vector<int> flows(const std::string &workload, const std::string &from, int count, int *failed,
			       const std::string &to = "203.0.113.10:7000,203.0.113.11:7000,203.0.113.12:7000,203.0.113.13:7000",
			       int udp = -1)
	{
		auto r = inNode(workload, buildPath("tests/lab/labtraffic") + " send --to " + to +
						  " --tcp " + std::to_string(count) + " --udp " + std::to_string(udp < 0 ? count : udp) +
						  " --parallel 8 --timeout-ms 1000 --from " + from);
		std::vector<int> ports;
		std::regex ok(R"((tcp|udp) ok 198\.51\.100\.\d+:(\d+))");
		*failed = 0;
		std::istringstream in(r.output);
		for (std::string line; std::getline(in, line);) {
			std::smatch m;
			if (std::regex_search(line, m, ok))
				ports.push_back(std::stoi(m[2]));
			else if (line.rfind("summary", 0) != 0)
				++*failed;
		}
		return ports;
	}

	// Frames that the router, s1 or s2 put on the DC bridge towards s3's MAC.
	long towardsDeadServer()
	{
		auto r = inNode("dc", "nft list table netdev probe");
		long total = 0;
		std::regex counter(R"(counter packets (\d+))");
		for (std::sregex_iterator it(r.output.begin(), r.output.end(), counter), end; it != end; ++it)
			total += std::stol((*it)[1]);
		return total;
	}

	std::map<std::string, pid_t> daemons_;
};

TEST_F(Failover, SurvivorsCarryTheDeadServersSlicesWithinFiveSeconds)
{
	for (const char *s : {"s1", "s2", "s3"})
		ASSERT_NO_FATAL_FAILURE(startServer(s));
	startInNode("inet", buildPath("tests/lab/labtraffic") + " serve --port 7000 --ports 2 --seconds 60 --client-closes", labDir() + "/inet.log");
	std::this_thread::sleep_for(std::chrono::milliseconds(300));

	int failed = 0;
	auto before = flows("w3", "100.64.3.2", 10, &failed);
	EXPECT_EQ(failed, 0) << "s3's workload before the failure";
	EXPECT_EQ(before.size(), 20u);

	// s3 dies: its daemon stops, its uplink goes down, the router withdraws it.
	stopInNode(daemons_["s3"]);
	ASSERT_TRUE(inNode("s3", "ip link set eth0 down").ok());
	ASSERT_TRUE(steer("hash:s1,s2").ok());

	// Orchestration gives slices 2 and 5 of both addresses to s1 and s2.
	auto t0 = Clock::now();
	// Each slice to its new owner last, so the other survivor forwards its
	// answers already. The second pass ends the drain the first started: a
	// dead server has no flows to drain, nothing may be sent on to it.
	for (int pass = 0; pass < 2; ++pass)
		for (const char *address : {"198.51.100.1", "198.51.100.2"})
			for (auto [server, slice, owner] : {std::tuple{"s2", "2", "s1"}, {"s1", "2", "s1"},
							    {"s1", "5", "s2"}, {"s2", "5", "s2"}}) {
				auto a = inNode(server, ctl() + " set-owner " + address + " " + slice + " " + owner);
				ASSERT_TRUE(a.ok()) << server << ": " << a.output;
			}
	for (const char *s : {"s1", "s2"}) {
		// The applied plan (D-Bus Plan()): no slice names a previous owner.
		auto plan = inNode(s, "busctl --system call org.portslice.Egress1 /org/portslice/Egress1 "
				      "org.portslice.Egress1 Plan");
		ASSERT_NE(plan.output.find("owners"), std::string::npos) << s << ": " << plan.output;
		EXPECT_EQ(plan.output.find("previous"), std::string::npos) << s << ": a drain is left:\n" << plan.output;
	}
	auto moved = Clock::now();
	// From now on no IPv4 packet (plain or IPIP) may travel towards s3's MAC
	// on the bridge; ARP probes of a neighbour entry going stale are not traffic.
	std::string probe = "add table netdev probe\n";
	for (const char *port : {"rtr", "s1", "s2"})
		probe += std::string("add chain netdev probe ") + port + " { type filter hook ingress device \"" + port +
			 "\" priority 0; }\nadd rule netdev probe " + port + " ether daddr 02:00:00:00:00:13 ether type ip counter\n";
	ASSERT_TRUE(inNode("dc", "nft -f - <<'EOF'\n" + probe + "EOF").ok());

	// New flows from the upper halves of w1 and w2 until they land in slices 2 and 5.
	double s1Seconds = -1, s2Seconds = -1;
	int lateFailures = 0;
	while (Clock::now() - moved < std::chrono::seconds(5) && (s1Seconds < 0 || s2Seconds < 0)) {
		int f1 = 0, f2 = 0;
		for (int port : flows("w1", "100.64.1.200,100.64.1.250", 10, &f1))
			if (s1Seconds < 0 && port >= kSlice2Lo && port <= kSlice2Hi)
				s1Seconds = std::chrono::duration<double>(Clock::now() - moved).count();
		for (int port : flows("w2", "100.64.2.200,100.64.2.250", 10, &f2))
			if (s2Seconds < 0 && port >= kSlice5Lo && port <= kSlice5Hi)
				s2Seconds = std::chrono::duration<double>(Clock::now() - moved).count();
		lateFailures += f1 + f2;
	}
	// A source that needs more ports than its own slices hold: 1,500 TCP
	// connections from one inside address of w1's upper half to ONE
	// destination (each holds its port in TIME_WAIT). Before the failover that
	// share was slice 3 alone, 1,000 ports; now it is slices 2 and 3.
	int burstFailed = 0;
	auto burst = flows("w1", "100.64.1.200", 1500, &burstFailed, "203.0.113.10:7001", 0);
	double burstSeconds = std::chrono::duration<double>(Clock::now() - moved).count();
	std::set<int> distinct(burst.begin(), burst.end());
	long inSlice2 = std::count_if(burst.begin(), burst.end(), [](int p) { return p >= kSlice2Lo && p <= kSlice2Hi; });
	EXPECT_EQ(burst.size(), 1500u) << burstFailed << " of 1,500 connections to one destination failed";
	EXPECT_GT(distinct.size(), 1000u) << "the burst fit in the source's own 1,000 ports: it proves nothing";
	EXPECT_GT(inSlice2, 0);
	EXPECT_LE(burstSeconds, 5.0);
	std::printf("failover: 1,500 connections of one inside address to one destination: %zu answered, %zu distinct "
		    "ports, %ld in s3's former slice 2, done %.3f s after the last set-owner\n",
		    burst.size(), distinct.size(), inSlice2, burstSeconds);

	std::printf("failover: set-owner x16 (moves, then drains ended) took %.3f s; after the last one, the first answered flow in s3's former "
		    "slice 2 via s1 came %.3f s later, slice 5 via s2 %.3f s later; failed flows meanwhile: %d\n",
		    std::chrono::duration<double>(moved - t0).count(), s1Seconds, s2Seconds, lateFailures);
	RecordProperty("slice2_seconds", std::to_string(s1Seconds));
	RecordProperty("slice5_seconds", std::to_string(s2Seconds));
	EXPECT_GE(s1Seconds, 0) << "no flow of s1 used s3's former slice 2 within 5 s";
	EXPECT_LE(s1Seconds, 5.0);
	EXPECT_GE(s2Seconds, 0) << "no flow of s2 used s3's former slice 5 within 5 s";
	EXPECT_LE(s2Seconds, 5.0);
	EXPECT_EQ(lateFailures, 0) << "flows of the survivors failed after the failover";
	long towards = towardsDeadServer();
	EXPECT_EQ(towards, 0) << "frames were sent towards the dead server";
	// Control: the probe does see a frame that s1 sends to s3's MAC.
	(void)inNode("s1", "ip neigh replace 192.0.2.13 lladdr 02:00:00:00:00:13 dev eth0 nud permanent; "
			   "ping -c1 -W1 192.0.2.13");
	EXPECT_EQ(towardsDeadServer(), towards + 1) << "the probe on the bridge counts nothing";
}

} // namespace
