// SPDX-License-Identifier: MIT
// Runs the README's demo end to end and checks its report: flows succeed within each server's slices, nothing leaks, the move is clean.
#include <fstream>
#include <regex>
#include <sstream>

#include "lab_fixture.h"

namespace {

std::string readFile(const std::string &path)
{
	std::ifstream in(path);
	std::stringstream s;
	s << in.rdbuf();
	return s.str();
}

// The integers captured by the first match of pattern in text, or empty.
std::vector<long> numbers(const std::string &text, const std::string &pattern)
{
	std::smatch m;
	std::vector<long> out;
	if (std::regex_search(text, m, std::regex(pattern)))
		for (size_t i = 1; i < m.size(); ++i)
			out.push_back(std::stol(m[i].str()));
	return out;
}

void expectFleetPhase(const std::string &text);

TEST(Demo, EveryWorkloadLeavesInsideItsServersSlicesAndTheMoveLosesNoFlow)
{
	if (geteuid() != 0)
		GTEST_SKIP() << "the demo needs root: it builds network namespaces";
	std::string report = "/tmp/portslice-demo-report-" + std::to_string(getpid());
	auto r = portslice::lab::runArgv({portslice::lab::sourcePath("tests/lab/demo.sh"), "--build-dir",
					  PORTSLICE_BUILD_ROOT, "--report", report},
					 170);
	std::string text = readFile(report);
	std::remove(report.c_str());
	ASSERT_FALSE(text.empty()) << "no report; demo output:\n" << r.output;
	SCOPED_TRACE(text);

	// Six workloads (conntrack and stateless behind each server), 40 TCP + 40 UDP each.
	auto phase1 = numbers(text, R"(check: phase 1 flows completed: (\d+)/(\d+))");
	ASSERT_EQ(phase1.size(), 2u);
	EXPECT_EQ(phase1[1], 6 * 80);
	EXPECT_EQ(phase1[0], phase1[1]);
	// Every workload's line says "yes": all ports seen at inet lie in its server's slices.
	EXPECT_EQ(numbers(text, R"(check: phase 1 ports outside their server's slices: (\d+))"), std::vector<long>{0});
	for (const char *w : {"w1", "v1", "w2", "v2", "w3", "v3"})
		EXPECT_TRUE(std::regex_search(text, std::regex(std::string("\n") + w + R"( +s\d .* yes +\d+/\d+)")))
			<< w;
	EXPECT_EQ(numbers(text, R"(check: leak-guard drops: (\d+))"), std::vector<long>{0});
	// The router hashes by address only, so some answers land on a server that
	// does not own their slice and only the XDP forwarder gets them home.
	auto forwarded = numbers(text, R"(check: return packets forwarded between servers: (\d+))");
	ASSERT_EQ(forwarded.size(), 1u);
	EXPECT_GT(forwarded[0], 0);

	auto move = numbers(text, R"(check: flows during the slice move: (\d+): completed (\d+), cleanly refused (\d+), )"
				  R"(timed out (\d+), errors (\d+), answered outside their server's slices (\d+))");
	ASSERT_EQ(move.size(), 6u) << "no slice move in the report";
	EXPECT_EQ(move[0], 6 * 80);
	EXPECT_EQ(move[1] + move[2] + move[3], move[0]);
	EXPECT_GT(move[1], 0);
	EXPECT_EQ(move[4], 0) << "errors";
	EXPECT_EQ(move[5], 0) << "answered with a port of another server's slice";
	// The move took effect in the datapath: s2's workload answered from the
	// moved slice 0, s1's left through its other slice, 3.
	auto w2Moved = numbers(text, R"(\nw2 +s2 .*\.1 slice 0: (\d+))");
	ASSERT_EQ(w2Moved.size(), 1u) << "w2 never used the slice it gained";
	EXPECT_GT(w2Moved[0], 0);
	auto w1Other = numbers(text, R"(\nw1 +s1 .*\.1 slice 3: (\d+))");
	ASSERT_EQ(w1Other.size(), 1u) << "w1 never moved to its remaining slice";
	EXPECT_GT(w1Other[0], 0);
	// The old owner drains the slice (SetSliceOwner names it `previous`): a
	// flow in flight on the moved slice completes, through the new owner's
	// second hop and the old owner's drain_zone. None may time out.
	// Answers that land on the old owner or a bystander between its set-owner
	// and the new owner's reach a new owner that has not heard of the move
	// yet: its forwarder sends them on to the owner it knows, once.
	EXPECT_EQ(move[3], 0) << "flows timed out during the move";
	EXPECT_EQ(numbers(text, R"(check: timed out during the move outside the moved slice's workloads \(w1 w2\): (\d+))"),
		  std::vector<long>{0});

	// Phase 3, fleet mode (etcd started by the demo, portslice-fleetd on every
	// server), in every build that has portslice-fleetd: s3 is killed; s1 and s2
	// take each of its four slices within lease + 1 s, their new flows work and
	// none of their long-lived flows breaks.
	if (access((std::string(PORTSLICE_BUILD_ROOT) + "/src/fleet/portslice-fleetd").c_str(), X_OK) == 0)
		expectFleetPhase(text);
	else
		EXPECT_EQ(text.find("phase 3, fleet mode"), std::string::npos);

	EXPECT_NE(text.find("table inet portslice {"), std::string::npos) << "no nft table in the report";
	auto elapsed = numbers(text, R"(elapsed: (\d+) s)");
	ASSERT_EQ(elapsed.size(), 1u);
	EXPECT_LT(elapsed[0], 120) << "the demo must run in under two minutes";
	EXPECT_NE(text.find("RESULT: PASS"), std::string::npos);
	EXPECT_EQ(r.status, 0) << r.output;
}

void expectFleetPhase(const std::string &text)
{
	auto taken = numbers(text, R"(check: fleet slices of s3 taken over: (\d+)/(\d+), later than lease \+ 1 s \(3\.0 s\): (\d+))");
	ASSERT_EQ(taken.size(), 3u) << "no fleet phase in the report";
	EXPECT_EQ(taken[1], 4) << "s3 owns slices 2 and 5 of both addresses";
	EXPECT_EQ(taken[0], taken[1]) << "slices of the dead server were not taken over";
	EXPECT_EQ(taken[2], 0) << "a takeover came later than lease + 1 s";
	EXPECT_TRUE(std::regex_search(text, std::regex(R"(198\.51\.100\.1 slice 2 \(ports 12000-12999\): taken over by s[12] at \+\d+\.\d+ s)")));
	auto fresh = numbers(text, R"(check: fleet new flows of w1 w2 after the takeover: (\d+)/(\d+) completed)");
	ASSERT_EQ(fresh.size(), 2u);
	EXPECT_EQ(fresh[1], 80);
	EXPECT_EQ(fresh[0], fresh[1]);
	auto held = numbers(text, R"(check: fleet long-lived flows of s1 and s2 \(w1 v1 w2 v2\) broken: (\d+) of (\d+))");
	ASSERT_EQ(held.size(), 2u);
	EXPECT_EQ(held[1], 32);
	EXPECT_EQ(held[0], 0) << "a flow of a live server broke when s3 died";
}

} // namespace
