// SPDX-License-Identifier: MIT
// The lab's etcd cluster: three members form one cluster on the data-centre network, every server reaches it, it survives its leader's death, and lab down removes it.
#include <regex>
#include <set>
#include <sstream>

#include "lab_fixture.h"

using portslice::lab::LabFixture;
using portslice::lab::LabOptions;

namespace {

class EtcdLab : public LabFixture {
protected:
	LabOptions labOptions() const override
	{
		LabOptions o;
		o.prefix = "psle";
		o.etcd = 3;
		o.bus = false;
		return o;
	}

	void SetUp() override
	{
		if (geteuid() == 0 && !portslice::lab::runShell("command -v etcd && command -v etcdctl").ok())
			GTEST_SKIP() << "no etcd/etcdctl (Debian etcd-server, etcd-client: .ci/install-deps)";
		LabFixture::SetUp();
	}

	std::string etcdctl(const std::string &args) const
	{
		return "ETCDCTL_API=3 etcdctl --endpoints " + etcdEndpoints() + " --dial-timeout 1s --command-timeout 3s " + args;
	}
};

TEST_F(EtcdLab, EveryServerReachesAllThreeMembersOfOneCluster)
{
	for (const char *s : {"s1", "s2", "s3"}) {
		auto r = inNode(s, etcdctl("endpoint health"), 20);
		EXPECT_TRUE(r.ok()) << s << ":\n" << r.output;
		for (const char *ep : {"192.0.2.100", "192.0.2.101", "192.0.2.102"})
			EXPECT_TRUE(std::regex_search(r.output, std::regex(std::string("http://") + ep + ":2379 is healthy")))
				<< s << " -> " << ep << ":\n" << r.output;
	}
	auto members = inNode("s1", etcdctl("member list"), 20);
	ASSERT_TRUE(members.ok()) << members.output;
	std::set<std::string> names;
	std::regex started(R"(, started, (etcd\d), )");
	for (std::sregex_iterator it(members.output.begin(), members.output.end(), started), end; it != end; ++it)
		names.insert((*it)[1]);
	EXPECT_EQ(names, (std::set<std::string>{"etcd1", "etcd2", "etcd3"})) << members.output;

	// One cluster, not three: what s1 writes through etcd1, s3 reads from etcd3 alone.
	ASSERT_TRUE(inNode("s1", "ETCDCTL_API=3 etcdctl --endpoints http://192.0.2.100:2379 put /lab/probe "
				 "written-by-s1").ok());
	auto got = inNode("s3", "ETCDCTL_API=3 etcdctl --endpoints http://192.0.2.102:2379 get --print-value-only "
				"--consistency=l /lab/probe");
	EXPECT_EQ(got.output, "written-by-s1\n");
	// The gRPC gateway that portslice-fleetd speaks answers JSON on /v3/.
	auto gw = inNode("s2", "curl -sS -m 3 -X POST http://192.0.2.101:2379/v3/kv/range -d '{\"key\":\"L2xhYi9wcm9iZQ==\"}'");
	EXPECT_NE(gw.output.find("\"value\":\"d3JpdHRlbi1ieS1zMQ==\""), std::string::npos) << gw.output;
}

TEST_F(EtcdLab, TheClusterElectsANewLeaderWhenItsLeaderIsKilledAndTheMemberRejoins)
{
	auto before = etcd({"leader"});
	ASSERT_TRUE(before.ok()) << before.output;
	std::string old = before.output.substr(0, before.output.find('\n'));
	ASSERT_TRUE(std::regex_match(old, std::regex("etcd[123]"))) << before.output;
	ASSERT_TRUE(etcd({"kill", old.substr(4)}).ok());
	std::string now;
	for (int i = 0; i < 50 && (now.empty() || now == old); ++i) {
		std::this_thread::sleep_for(std::chrono::milliseconds(200));
		auto r = etcd({"leader"});
		now = r.output.substr(0, r.output.find('\n'));
	}
	EXPECT_TRUE(std::regex_match(now, std::regex("etcd[123]"))) << "no leader after the kill";
	EXPECT_NE(now, old);
	auto put = inNode("s2", etcdctl("put /lab/after-kill yes"), 20);
	EXPECT_TRUE(put.ok()) << put.output;
	// Restarted on its own data directory, the killed member catches up.
	ASSERT_TRUE(etcd({"start", old.substr(4)}).ok());
	ASSERT_TRUE(etcd({"wait", "20"}).ok());
	std::string ip = "192.0.2." + std::to_string(99 + std::stoi(old.substr(4)));
	auto got = inNode("s3", "ETCDCTL_API=3 etcdctl --endpoints http://" + ip + ":2379 get --print-value-only "
				"--consistency=s /lab/after-kill");
	for (int i = 0; i < 20 && got.output != "yes\n"; ++i) {
		std::this_thread::sleep_for(std::chrono::milliseconds(200));
		got = inNode("s3", "ETCDCTL_API=3 etcdctl --endpoints http://" + ip + ":2379 get --print-value-only "
				 "--consistency=s /lab/after-kill");
	}
	EXPECT_EQ(got.output, "yes\n") << old << " did not catch up";
}

TEST_F(EtcdLab, DownStopsEveryMemberAndRemovesItsData)
{
	auto pids = run("cat " + labDir() + "/etcd1/pid " + labDir() + "/etcd2/pid " + labDir() + "/etcd3/pid");
	ASSERT_TRUE(pids.ok()) << pids.output;
	std::istringstream in(pids.output);
	std::vector<std::string> list;
	for (std::string pid; in >> pid;)
		list.push_back(pid);
	ASSERT_EQ(list.size(), 3u);
	for (const auto &pid : list)
		EXPECT_TRUE(run("grep -q '^etcd' /proc/" + pid + "/comm").ok()) << pid << " is not an etcd process";
	EXPECT_TRUE(run("test -d " + labDir() + "/etcd2/data/member").ok()) << "no data of etcd2 in the lab directory";

	down();
	for (const auto &pid : list)
		// A zombie waiting for its reaper (the init of the host) runs no more.
		EXPECT_FALSE(run("grep -q '^etcd' /proc/" + pid + "/comm 2>/dev/null && "
				 "! grep -q '^State:.*zombie' /proc/" + pid + "/status").ok())
			<< "etcd " << pid << " is still running";
	EXPECT_FALSE(run("pgrep -f '[e]tcd --name etcd. --data-dir " + labDir() + "/'").ok()) << "a member is still running";
	EXPECT_FALSE(run("test -e " + labDir()).ok()) << labDir() << " is still there";
	EXPECT_FALSE(run("ip netns list | grep -q '^" + labName() + "-etcd'").ok()) << "an etcd namespace is left";
}

} // namespace
