// SPDX-License-Identifier: MIT
// Forwarding from the first packet without `mac` keys: portsliced keeps a managed neighbour entry for every forwarding target, so answers landing on one server reach the others' workloads right after the apply (issue 10.5).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "lab_fixture.h"

using portslice::lab::buildPath;
using portslice::lab::CommandResult;
using portslice::lab::LabFixture;
using portslice::lab::LabOptions;
using portslice::lab::shellQuote;
using portslice::lab::sourcePath;

namespace {

using Clock = std::chrono::steady_clock;

class Neighbours : public LabFixture {
protected:
	// Three servers, workloads w1..w3 behind them; every answer for the
	// shared range comes back to s1, which must send those of w2's and w3's
	// slices on to s2 and s3. A private bus per server (for the daemon).
	LabOptions labOptions() const override
	{
		LabOptions o;
		o.prefix = "psnb";
		o.steer = "s1";
		return o;
	}

	// The lab fleet without `mac` keys; `extra` goes to fleet.sh.
	std::string config(const std::string &server, const std::string &extra = "")
	{
		std::string path = labDir() + "/" + server + "/portslice.toml";
		auto r = run(sourcePath("tests/lab/lib/fleet.sh") + " --server " + server + " --no-mac " + extra + " > " +
			     shellQuote(path));
		EXPECT_TRUE(r.ok()) << r.output;
		return path;
	}
	CommandResult daemon(const std::string &server, const std::string &args)
	{
		return inNode(server, buildPath("src/daemon/portsliced") + " --state-dir \"$LAB_STATE_DIR\" " + args + " 2>&1");
	}
	CommandResult apply(const std::string &server, const std::string &cfg)
	{
		return daemon(server, "--config " + shellQuote(cfg) + " --apply-once");
	}

	// "ADDRESS STATE" of each managed entry on a server's uplink
	// (`ip -d neigh show`: "... managed extern_learn STATE proto 80").
	std::vector<std::string> managed(const std::string &server)
	{
		auto r = inNode(server, "ip -d neigh show dev eth0");
		EXPECT_TRUE(r.ok()) << r.output;
		std::vector<std::string> entries;
		std::istringstream in(r.output);
		for (std::string line; std::getline(in, line);) {
			if (line.find(" managed ") == std::string::npos)
				continue;
			EXPECT_NE(line.find("proto 80"), std::string::npos) << line;
			entries.push_back(line.substr(0, line.find(' ')));
		}
		std::sort(entries.begin(), entries.end());
		return entries;
	}
	std::string neighbourTable(const std::string &server)
	{
		return inNode(server, "ip -d neigh show dev eth0").output;
	}
	// Until managed(server) == want, at most 3 s.
	bool awaitManaged(const std::string &server, const std::vector<std::string> &want)
	{
		auto until = Clock::now() + std::chrono::seconds(3);
		while (managed(server) != want) {
			if (Clock::now() > until)
				return false;
			std::this_thread::sleep_for(std::chrono::milliseconds(50));
		}
		return true;
	}
};

TEST_F(Neighbours, AnswersForEveryServerAreForwardedFromTheFirstPacket)
{
	// The servers have never talked to each other: no neighbour entries.
	for (const char *s : {"s1", "s2", "s3"}) {
		ASSERT_TRUE(inNode(s, "ip neigh flush dev eth0").ok());
		for (const char *peer : {"192.0.2.11", "192.0.2.12", "192.0.2.13"})
			EXPECT_EQ(inNode(s, std::string("ip neigh show ") + peer + " dev eth0").output, "") << s;
	}
	startInNode("inet", buildPath("tests/lab/labtraffic") + " serve --port 7000 --ports 1 --seconds 60",
		    labDir() + "/inet.log");
	std::this_thread::sleep_for(std::chrono::milliseconds(300));

	// s1, which all answers reach, last.
	for (const char *s : {"s3", "s2", "s1"}) {
		auto r = apply(s, config(s));
		ASSERT_TRUE(r.ok()) << s << ": " << r.output;
	}
	auto applied = Clock::now();

	// Each workload's first flows: one TCP connection and one UDP exchange
	// each, no second try (a lost SYN-ACK would be resent only after 1 s).
	for (const char *w : {"w1", "w2", "w3"}) {
		std::string from = std::string("100.64.") + w[1] + ".2";
		auto r = inNode(w, buildPath("tests/lab/labtraffic") + " send --to 203.0.113.10:7000 --tcp 1 --udp 1 "
						"--timeout-ms 900 --from " + from + " 2>&1");
		double seconds = std::chrono::duration<double>(Clock::now() - applied).count();
		std::printf("neighbours: %s answered %.3f s after the last apply\n", w, seconds);
		EXPECT_TRUE(r.ok()) << w << "'s answers, all sent to s1, did not come back:\n"
				    << r.output << "s1's neighbours:\n" << neighbourTable("s1");
		EXPECT_NE(r.output.find("summary tcp 1/1 udp 1/1"), std::string::npos) << r.output;
		EXPECT_LE(seconds, 2.0) << w;
	}

	// What an operator sees: managed entries for the other servers, none for itself.
	EXPECT_EQ(managed("s1"), (std::vector<std::string>{"192.0.2.12", "192.0.2.13"})) << neighbourTable("s1");
	EXPECT_EQ(managed("s2"), (std::vector<std::string>{"192.0.2.11", "192.0.2.13"})) << neighbourTable("s2");
	EXPECT_EQ(managed("s3"), (std::vector<std::string>{"192.0.2.11", "192.0.2.12"})) << neighbourTable("s3");
	auto s1 = neighbourTable("s1");
	EXPECT_NE(s1.find("192.0.2.12 lladdr 02:00:00:00:00:12 managed extern_learn"), std::string::npos) << s1;

	// --remove takes them out with the rest.
	for (const char *s : {"s1", "s2", "s3"}) {
		auto r = daemon(s, "--remove");
		EXPECT_TRUE(r.ok()) << s << ": " << r.output;
		EXPECT_EQ(managed(s), std::vector<std::string>{}) << neighbourTable(s);
	}
}

TEST_F(Neighbours, AnEntryGoesWhenItsTargetLeavesThePlan)
{
	ASSERT_TRUE(apply("s1", config("s1")).ok());
	ASSERT_EQ(managed("s1"), (std::vector<std::string>{"192.0.2.12", "192.0.2.13"})) << neighbourTable("s1");

	// s3 leaves the fleet.
	auto r = apply("s1", config("s1", "--servers 2"));
	ASSERT_TRUE(r.ok()) << r.output;
	EXPECT_EQ(managed("s1"), std::vector<std::string>{"192.0.2.12"}) << neighbourTable("s1");

	// s2 gets a `mac`: the forwarder has its MAC, the entry is not needed.
	std::string path = config("s1", "--servers 2");
	auto withMac = run("sed -i '/^address = \"192.0.2.12\"/a mac = \"02:00:00:00:00:12\"' " + shellQuote(path) +
			   " && grep -c '^mac' " + shellQuote(path));
	ASSERT_EQ(withMac.output, "1\n") << withMac.output;
	r = apply("s1", path);
	ASSERT_TRUE(r.ok()) << r.output;
	EXPECT_EQ(managed("s1"), std::vector<std::string>{}) << neighbourTable("s1");

	// And back: an apply that adds them again.
	ASSERT_TRUE(apply("s1", config("s1")).ok());
	EXPECT_EQ(managed("s1"), (std::vector<std::string>{"192.0.2.12", "192.0.2.13"})) << neighbourTable("s1");
	ASSERT_TRUE(daemon("s1", "--remove").ok());
	EXPECT_EQ(managed("s1"), std::vector<std::string>{}) << neighbourTable("s1");
}

TEST_F(Neighbours, TheDaemonFollowsAMoveAndAReload)
{
	// s3 is in another data centre and owns nothing here: no entry for it.
	std::string path = config("s1", "--move 198.51.100.1:2:s1 --move 198.51.100.1:5:s1 "
					"--move 198.51.100.2:2:s1 --move 198.51.100.2:5:s1");
	std::string text = run("cat " + shellQuote(path)).output;
	auto replace = [&](const std::string &from, const std::string &to) {
		size_t at = text.find(from);
		ASSERT_NE(at, std::string::npos) << from;
		text.replace(at, from.size(), to);
	};
	replace("address = \"192.0.2.13\"\ndatacenter = \"lab1\"", "address = \"192.0.2.13\"\ndatacenter = \"lab2\"");
	replace("\n[[servers]]", "\n[[datacenters]]\nname = \"lab2\"\n\n[[servers]]");
	std::ofstream(path, std::ios::trunc) << text;
	std::string ctl = buildPath("src/ctl/portslicectl");
	pid_t served = startInNode("s1", buildPath("src/daemon/portsliced") + " --config " + shellQuote(path) +
						  " --state-dir \"$LAB_STATE_DIR\"",
				   labDir() + "/s1/portsliced.log");
	bool ready = false;
	for (int i = 0; i < 100 && !ready; ++i) {
		ready = inNode("s1", ctl + " status").ok();
		if (!ready)
			std::this_thread::sleep_for(std::chrono::milliseconds(100));
	}
	ASSERT_TRUE(ready) << run("cat " + labDir() + "/s1/portsliced.log").output;
	EXPECT_EQ(managed("s1"), std::vector<std::string>{"192.0.2.12"}) << neighbourTable("s1");

	// A move makes s3 the owner of a slice here: the forwarder may send to it.
	auto moved = inNode("s1", ctl + " set-owner 198.51.100.1 2 s3");
	ASSERT_TRUE(moved.ok()) << moved.output;
	EXPECT_TRUE(awaitManaged("s1", {"192.0.2.12", "192.0.2.13"})) << neighbourTable("s1");

	// A reload that gives s2 a `mac`: its entry goes, s3's stays.
	auto withMac = run("sed -i '/^address = \"192.0.2.12\"/a mac = \"02:00:00:00:00:12\"' " + shellQuote(path));
	ASSERT_TRUE(withMac.ok()) << withMac.output;
	auto reloaded = inNode("s1", ctl + " reload");
	ASSERT_TRUE(reloaded.ok()) << reloaded.output;
	EXPECT_TRUE(awaitManaged("s1", {"192.0.2.13"})) << neighbourTable("s1");

	// Stopping the daemon leaves them (the forwarder stays too); --remove takes them.
	stopInNode(served);
	EXPECT_EQ(managed("s1"), std::vector<std::string>{"192.0.2.13"}) << neighbourTable("s1");
	auto removed = daemon("s1", "--remove");
	EXPECT_TRUE(removed.ok()) << removed.output;
	EXPECT_EQ(managed("s1"), std::vector<std::string>{}) << neighbourTable("s1");
}

} // namespace
