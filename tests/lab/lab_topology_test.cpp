// SPDX-License-Identifier: MIT
// The lab itself, without portslice: plain routing works, the router steers without ports, and teardown leaves nothing.
#include <map>
#include <set>
#include <sstream>

#include "lab_fixture.h"

using portslice::lab::CommandResult;
using portslice::lab::LabFixture;
using portslice::lab::LabOptions;

namespace {

std::set<std::string> labNamespaces(const std::string &labName)
{
	std::set<std::string> found;
	std::istringstream in(portslice::lab::runShell("ip netns list").output);
	for (std::string line; std::getline(in, line);) {
		std::string name = line.substr(0, line.find(' '));
		if (name.rfind(labName + "-", 0) == 0)
			found.insert(name);
	}
	return found;
}

class Topology : public LabFixture {
protected:
	LabOptions labOptions() const override
	{
		LabOptions o;
		o.prefix = "psl";
		return o;
	}
};

TEST_F(Topology, RouterReachesEveryServerAndTheInternetHost)
{
	for (const char *target : {"192.0.2.11", "192.0.2.12", "192.0.2.13", "203.0.113.10"}) {
		auto r = inNode("rtr", std::string("ping -c1 -W2 ") + target);
		EXPECT_TRUE(r.ok()) << "rtr -> " << target << ":\n" << r.output;
	}
}

TEST_F(Topology, EachWorkloadReachesItsServerButNotTheInternetWithoutNat)
{
	for (int n = 1; n <= 3; ++n) {
		std::string w = "w" + std::to_string(n);
		auto r = inNode(w, "ping -c1 -W2 100.64." + std::to_string(n) + ".1");
		EXPECT_TRUE(r.ok()) << w << " -> its server:\n" << r.output;
		// Inside addresses are not routed by the router: only portslice's NAT
		// will give them a way out and back.
		auto out = inNode(w, "ping -c1 -W1 203.0.113.10");
		EXPECT_FALSE(out.ok()) << w << " reached the internet host without NAT:\n" << out.output;
	}
}

TEST_F(Topology, EveryNamespaceCarriesTheLabNameAndDownRemovesThemAll)
{
	std::set<std::string> expected;
	for (const char *node : {"inet", "rtr", "dc", "s1", "s2", "s3", "w1", "w2", "w3"})
		expected.insert(ns(node));
	EXPECT_EQ(labNamespaces(labName()), expected);
	EXPECT_TRUE(run("test -S " + labDir() + "/s2/bus/system_bus_socket").ok()) << "no private bus for s2";
	auto bus = inNode("s2", "busctl --system call org.freedesktop.DBus /org/freedesktop/DBus "
			  "org.freedesktop.DBus GetId");
	EXPECT_TRUE(bus.ok()) << bus.output;

	down();
	EXPECT_TRUE(labNamespaces(labName()).empty());
	EXPECT_FALSE(run("test -e " + labDir()).ok()) << labDir() << " is still there";
	// "[d]" keeps pgrep from finding the shell that runs it.
	EXPECT_FALSE(run("pgrep -f '[d]bus-daemon --config-file=" + labDir() + "'").ok())
		<< "a bus of the lab is still running";
}

// Counts, per server, ICMP echoes to the shared range from each inet address.
class Steering : public LabFixture {
protected:
	LabOptions labOptions() const override
	{
		LabOptions o;
		o.prefix = "psl";
		o.steer = "hash";
		o.inetAddrs = 8;
		o.bus = false;
		return o;
	}

	void installProbes()
	{
		for (const char *s : {"s1", "s2", "s3"}) {
			std::string rules = "add table ip probe\n"
					    "add chain ip probe pre { type filter hook prerouting priority -300; }\n";
			for (int a = 10; a < 18; ++a)
				rules += "add rule ip probe pre ip saddr 203.0.113." + std::to_string(a) +
					 " ip daddr 198.51.100.0/24 counter comment \"src" + std::to_string(a) + "\"\n";
			auto r = inNode(s, "nft -f - <<'EOF'\n" + rules + "EOF");
			ASSERT_TRUE(r.ok()) << r.output;
		}
	}

	// counts[server][source] for sources 203.0.113.10..17
	std::map<std::string, std::map<int, int>> counts()
	{
		std::map<std::string, std::map<int, int>> result;
		for (const char *s : {"s1", "s2", "s3"}) {
			auto r = inNode(s, "nft list chain ip probe pre");
			std::istringstream in(r.output);
			for (std::string line; std::getline(in, line);) {
				auto c = line.find("counter packets ");
				auto m = line.find("comment \"src");
				if (c == std::string::npos || m == std::string::npos)
					continue;
				result[s][std::stoi(line.substr(m + 12))] = std::stoi(line.substr(c + 16));
			}
		}
		return result;
	}

	void sendFromEverySource(int perSource)
	{
		// The servers drop these (no portslice): only the arrival counts.
		// All sources at once, each waiting at most a second for no answer.
		std::string cmd;
		for (int a = 10; a < 18; ++a)
			cmd += "ping -q -c" + std::to_string(perSource) + " -i 0.05 -W1 -I 203.0.113." +
			       std::to_string(a) + " 198.51.100.7 >/dev/null & ";
		(void)inNode("inet", cmd + "wait");
	}
};

TEST_F(Steering, HashesBySourceAddressAndKeepsEachSourceOnOneServer)
{
	installProbes();
	sendFromEverySource(3);
	auto c = counts();
	std::set<std::string> used;
	for (int a = 10; a < 18; ++a) {
		int servers = 0, total = 0;
		for (const char *s : {"s1", "s2", "s3"}) {
			if (c[s][a] > 0) {
				++servers;
				used.insert(s);
			}
			total += c[s][a];
		}
		EXPECT_EQ(total, 3) << "source 203.0.113." << a;
		EXPECT_EQ(servers, 1) << "source 203.0.113." << a << " was split across servers";
	}
	EXPECT_GE(used.size(), 2u) << "the hash sent every source to one server";
}

TEST_F(Steering, AllToOneServerAfterResteering)
{
	ASSERT_TRUE(steer("s3").ok());
	installProbes();
	sendFromEverySource(2);
	auto c = counts();
	for (int a = 10; a < 18; ++a) {
		EXPECT_EQ(c["s3"][a], 2) << "source 203.0.113." << a;
		EXPECT_EQ(c["s1"][a] + c["s2"][a], 0) << "source 203.0.113." << a;
	}
}

TEST(LabScript, AFailedUpRemovesWhatItMade)
{
	if (geteuid() != 0)
		GTEST_SKIP() << "lab tests need root: they build network namespaces";
	std::string id = std::to_string(getpid()) + "bad";
	// The second workload's prefix is outside the lab ranges: server.sh refuses
	// it after the namespaces, links and the first servers exist.
	auto r = portslice::lab::runArgv({PORTSLICE_LAB_SCRIPT, "up", "--prefix", "psl", "--id", id, "--workload",
					  "s1:w1:100.64.1.0/24", "--workload", "s2:w2:10.1.2.0/24"});
	EXPECT_NE(r.status, 0);
	EXPECT_NE(r.output.find("outside the lab ranges"), std::string::npos) << r.output;
	EXPECT_TRUE(labNamespaces("psl-" + id).empty());
	EXPECT_FALSE(portslice::lab::runShell("test -e /tmp/psl-" + id).ok());
}

} // namespace
