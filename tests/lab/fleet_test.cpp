// SPDX-License-Identifier: MIT
// Fleet mode in the lab with real etcd: a cut-off server's slices carry the survivors' new flows within lease + 1 s and come home with a drain, no two servers translate into one slice, no flow of a live server breaks, etcd's own failures move nothing.
#include "fleet_lab.h"

using portslice::lab::buildPath;
using portslice::lab::FleetClock;
using portslice::lab::shellQuote;
using portslice::lab::FleetLab;
using portslice::lab::sliceId;
using portslice::lab::SliceId;

namespace {

// s3's slices in the lab fleet: 2 and 5 of each address; the workloads use 198.51.100.1.
const std::set<SliceId> kS3Slices = {"198.51.100.1/2", "198.51.100.1/5", "198.51.100.2/2", "198.51.100.2/5"};
// Inside addresses spread over each workload's prefix: every slice of its server gets some.
std::string spread(int k)
{
	std::string n = std::to_string(k);
	return "100.64." + n + ".2,100.64." + n + ".70,100.64." + n + ".130,100.64." + n + ".190,100.64." + n + ".250";
}

double since(FleetClock::time_point t0)
{
	return std::chrono::duration<double>(FleetClock::now() - t0).count();
}

class Fleet : public FleetLab {
protected:
	// Waits until `pred` holds (polled every 100 ms) or `seconds` pass; returns
	// the seconds since t0 when it held, or -1.
	template <class Pred> double waitFor(Pred pred, double seconds, FleetClock::time_point t0)
	{
		auto deadline = FleetClock::now() + std::chrono::duration<double>(seconds);
		while (FleetClock::now() < deadline) {
			if (pred())
				return since(t0);
			std::this_thread::sleep_for(std::chrono::milliseconds(100));
		}
		return -1;
	}

	// Ends the long-lived flows and returns their logs.
	std::string endHolds(const std::vector<pid_t> &pids)
	{
		run("touch " + labDir() + "/hold.stop");
		std::string logs;
		// They see the stop file within a round and print their summary.
		for (int i = 0; i < 80; ++i) {
			bool done = true;
			for (const char *w : {"w1", "w2", "w3"})
				done = done && (!run("test -f " + labDir() + "/" + w + ".hold.log").ok() ||
						run("grep -q '^summary' " + labDir() + "/" + w + ".hold.log").ok());
			if (done)
				break;
			std::this_thread::sleep_for(std::chrono::milliseconds(100));
		}
		for (pid_t pid : pids)
			stopInNode(pid, std::chrono::seconds(2));
		for (const char *w : {"w1", "w2", "w3"})
			if (run("test -f " + labDir() + "/" + w + ".hold.log").ok())
				logs += std::string("--- ") + w + ":\n" + holdReport(w);
		return logs;
	}

	static int brokenCount(const std::string &logs)
	{
		int total = 0;
		std::regex summary(R"(summary held \d+ broken (\d+))");
		int summaries = 0;
		for (std::sregex_iterator it(logs.begin(), logs.end(), summary), end; it != end; ++it, ++summaries)
			total += std::stoi((*it)[1]);
		return summaries ? total : -1;
	}

	std::string stopFile() const { return labDir() + "/hold.stop"; }
};

TEST_F(Fleet, CutOffServersSlicesCarryTheSurvivorsNewFlowsWithinLeasePlusOneSecondAndComeHomeWithADrain)
{
	startHoldServer();
	for (const char *s : {"s1", "s2", "s3"}) {
		auto c = claims(s);
		EXPECT_TRUE(c.ok) << s << "'s daemon does not answer Plan()";
		EXPECT_EQ(std::includes(c.mine.begin(), c.mine.end(), kS3Slices.begin(), kS3Slices.end()),
			  std::string(s) == "s3")
			<< s << " before the cut";
	}
	std::vector<pid_t> holds = {holdFlows("w1", spread(1), 6, 4, stopFile()),
				    holdFlows("w2", spread(2), 6, 4, stopFile())};
	startSampler({"s1", "s2", "s3"});
	std::this_thread::sleep_for(std::chrono::milliseconds(500));

	// The cut: s3's daemons die, its uplink goes down, the router withdraws it.
	auto cut = FleetClock::now();
	double cutOnSampler = samplerSeconds();
	killServer("s3");
	ASSERT_TRUE(inNode("s3", "ip link set eth0 down").ok());
	ASSERT_TRUE(steer("hash:s1,s2").ok());

	// Every slice of s3 is claimed by a survivor (each survivor's own Plan()).
	std::map<SliceId, double> takenAt;
	std::map<SliceId, std::string> takenBy;
	double all = waitFor(
		[&] {
			for (const char *s : {"s1", "s2"})
				for (const SliceId &slice : claims(s).mine)
					if (kS3Slices.count(slice) && !takenAt.count(slice)) {
						takenAt[slice] = since(cut);
						takenBy[slice] = s;
					}
			return takenAt.size() == kS3Slices.size();
		},
		15, cut);
	for (const auto &[slice, at] : takenAt)
		std::printf("fleet failover: %s taken over by %s %.2f s after the cut\n", slice.c_str(),
			    takenBy[slice].c_str(), at);
	ASSERT_GE(all, 0) << "s3's slices were not all taken over within 15 s; taken: " << takenAt.size()
			  << "\n" << run("tail -n 20 " + logPath("s1", "fleetd") + " " + logPath("s2", "fleetd")).output;
	RecordProperty("takeover_seconds", std::to_string(all));
	// The claims are polled: a poll round of two servers is the measurement's grain.
	EXPECT_LE(all, kLeaseSeconds + 1.0 + 0.5) << "slower than lease + 1 s";

	// New flows of the survivors' workloads leave in the slices they took.
	std::map<SliceId, double> usedAt;
	int failed = 0;
	auto flowsStart = FleetClock::now();
	while (since(flowsStart) < 20 && usedAt.size() < 2) {
		for (const char *w : {"w1", "w2"}) {
			int f = 0;
			std::string server = std::string("s") + w[1];
			// 20 flows: labtraffic changes the source every round of the four targets.
			auto got = flows(w, spread(w[1] - '0'), 20, &f);
			std::string line;
			for (const auto &[address, port] : got)
				line += " " + address.substr(11) + ":" + std::to_string(port);
			if (getenv("FLEET_LAB_VERBOSE"))
				std::printf("fleet failover: +%.2f s %s:%s\n", since(cut), w, line.c_str());
			for (const auto &[address, port] : got) {
				SliceId slice = sliceId(address, sliceOf(port));
				EXPECT_TRUE(takenBy.count(slice) == 0 || takenBy[slice] == server)
					<< w << " left in " << slice << ", which " << takenBy[slice] << " took";
				if (takenBy.count(slice) && !usedAt.count(slice))
					usedAt[slice] = since(cut);
			}
			failed += f;
		}
	}
	for (const auto &[slice, at] : usedAt)
		std::printf("fleet failover: first new flow in %s (via %s) answered %.2f s after the cut\n", slice.c_str(),
			    takenBy[slice].c_str(), at);
	EXPECT_EQ(usedAt.size(), 2u) << "new flows did not use both of s3's former slices of 198.51.100.1; "
					"the survivors' assignments:\n"
				     << run("for s in s1 s2; do busctl --address=unix:path=" + labDir() +
					    "/$s/bus/system_bus_socket --json=short call org.portslice.Egress1 "
					    "/org/portslice/Egress1 org.portslice.Egress1 Plan | jq -c '.data[0] | fromjson | "
					    "[.sources[] | .assignments[]]'; done")
					    .output
				     << inNode("w1", buildPath("tests/lab/labtraffic") +
							     " send --to 203.0.113.10:7000 --tcp 4 --udp 0 --from 100.64.1.250")
					    .output;
	EXPECT_EQ(failed, 0) << "new flows of the survivors failed after the failover";

	// s3 returns: uplink up, daemons started; the router sends it traffic once
	// it is live again. After return_home_seconds its slices come back, and
	// the interim owners drain them.
	auto back = FleetClock::now();
	ASSERT_TRUE(inNode("s3", "ip link set eth0 up && ip route replace 203.0.113.0/24 via 192.0.2.1 dev eth0").ok());
	ASSERT_NO_FATAL_FAILURE(startServer("s3"));
	// Until its fleetd has caught up, the restarted daemon applies its last
	// state (its file's slices): s3 is no live server then.
	double yielded = waitFor(
		[&] {
			auto c = claims("s3");
			for (const SliceId &slice : kS3Slices)
				if (c.mine.count(slice))
					return false;
			return c.ok;
		},
		10, back);
	std::printf("fleet return: restarted s3 handed the fleet's owners to its daemon %.2f s after it came back\n",
		    yielded);
	EXPECT_GE(yielded, 0) << "s3 kept its file's slices while not live";
	double liveAt = waitFor([&] { return liveServers().count("s3") > 0; }, returnHomeSeconds() + 15, back);
	double liveOnSampler = samplerSeconds();
	ASSERT_GE(liveAt, 0) << "s3 never entered live again";
	std::printf("fleet return: s3 in live again %.2f s after it came back (return_home_seconds %d)\n", liveAt,
		    returnHomeSeconds());
	// `since` in the member key is whole Unix seconds: up to 1 s early.
	EXPECT_GE(liveAt, returnHomeSeconds() - 1.0) << "s3 entered live before return_home_seconds";
	double home = waitFor(
		[&] {
			auto c = claims("s3");
			if (!std::includes(c.mine.begin(), c.mine.end(), kS3Slices.begin(), kS3Slices.end()))
				return false;
			for (const char *s : {"s1", "s2"})
				for (const SliceId &slice : claims(s).mine)
					if (kS3Slices.count(slice))
						return false;
			return true;
		},
		10, back);
	ASSERT_GE(home, 0) << "s3 did not get its slices back\n" << run("tail -n 20 " + logPath("s3", "fleetd")).output;
	std::printf("fleet return: s3 owns its slices again %.2f s after it came back\n", home);
	// The interim owners drain: their Plan() names them the previous owner.
	for (const std::string server : {"s1", "s2"}) {
		bool interim = false;
		for (const auto &[slice, by] : takenBy)
			interim = interim || by == server;
		if (!interim)
			continue;
		auto plan = inNode(server, "busctl --system --json=short call org.portslice.Egress1 /org/portslice/Egress1 "
					   "org.portslice.Egress1 Plan | jq -r '.data[0]'");
		EXPECT_NE(plan.output.find("\"previous\""), std::string::npos)
			<< server << " gave s3's slices back without a drain";
	}
	ASSERT_TRUE(steer("hash").ok());
	// Neighbour entries of s3 went stale while its link was down: resolve them
	// again before s3's answers are sent its way (not what this test is about).
	for (const char *n : {"rtr", "s1", "s2"})
		(void)inNode(n, "ping -c1 -W1 192.0.2.13");
	// s3's new flows leave in its own slices.
	int f3 = 0;
	auto own = flows("w3", spread(3), 20, &f3);
	EXPECT_EQ(f3, 0) << "flows of s3's workload failed after its return";
	EXPECT_FALSE(own.empty());
	for (const auto &[address, port] : own)
		EXPECT_TRUE(kS3Slices.count(sliceId(address, sliceOf(port)))) << "w3 left in " << address << ":" << port;
	std::this_thread::sleep_for(std::chrono::milliseconds(500));

	stopSampler();
	std::string logs = endHolds(holds);
	EXPECT_EQ(brokenCount(logs), 0) << "established flows of s1 or s2 broke during the failover or the return:\n"
					<< logs;
	std::printf("fleet: %zu samples of the three servers' claims\n", sampleCount());
	// s3 counts as a live server while it is in `live`: until the cut and from its return.
	auto both = overlaps({{"s3", {cutOnSampler, liveOnSampler}}});
	EXPECT_TRUE(both.empty()) << both.size() << " overlaps, first: " << (both.empty() ? "" : both.front());
}

TEST_F(Fleet, MovesStillApplyAfterTheEtcdLeaderIsKilled)
{
	auto leader = etcd({"leader"});
	ASSERT_TRUE(leader.ok()) << leader.output;
	std::string old = leader.output.substr(0, leader.output.find('\n'));
	ASSERT_TRUE(etcd({"kill", old.substr(4)}).ok());
	auto t0 = FleetClock::now();
	// set-owner --fleet through the remaining members: slice 0 of 198.51.100.1 from s1 to s2.
	auto set = inNode("s2", ctl() + " set-owner 198.51.100.1 0 s2 --fleet --config " + configPath("s2"), 30);
	ASSERT_TRUE(set.ok()) << set.output;
	double moved = waitFor(
		[&] {
			return claims("s2").mine.count("198.51.100.1/0") && !claims("s1").mine.count("198.51.100.1/0") &&
			       ownersSeenBy("s3")["198.51.100.1/0"] == "s2";
		},
		15, t0);
	std::printf("fleet: etcd leader %s killed; set-owner --fleet applied on every daemon %.2f s later\n", old.c_str(),
		    moved);
	EXPECT_GE(moved, 0) << "the move did not reach every daemon after the etcd leader died";
	auto now = etcd({"leader"});
	EXPECT_NE(now.output.substr(0, now.output.find('\n')), old);
}

TEST_F(Fleet, EtcdWhollyDownKeepsEveryFlowAndStatusSaysWhyAndItsReturnMovesNothing)
{
	startHoldServer();
	std::vector<pid_t> holds = {holdFlows("w1", spread(1), 4, 4, stopFile()),
				    holdFlows("w2", spread(2), 4, 4, stopFile()),
				    holdFlows("w3", spread(3), 4, 4, stopFile())};
	std::map<std::string, std::set<SliceId>> before;
	for (const char *s : {"s1", "s2", "s3"})
		before[s] = claims(s).mine;
	std::string liveBefore = etcdGet("live");
	for (const char *k : {"1", "2", "3"})
		ASSERT_TRUE(etcd({"stop", k}).ok());
	// Longer than a lease: nothing may expire on the servers' side.
	std::this_thread::sleep_for(std::chrono::seconds(kLeaseSeconds * 2 + 1));
	for (const char *s : {"s1", "s2", "s3"}) {
		auto st = inNode(s, ctl() + " status --fleet-status " + statusFile(s));
		EXPECT_NE(st.output.find("fleet: etcd unreachable"), std::string::npos) << s << ":\n" << st.output;
		EXPECT_NE(st.output.find("no move can happen"), std::string::npos) << s << ":\n" << st.output;
		EXPECT_EQ(claims(s).mine, before[s]) << s << " changed its slices while etcd was down";
		int failed = 0;
		auto ok = flows(std::string("w") + s[1], spread(s[1] - '0'), 5, &failed);
		EXPECT_EQ(failed, 0) << "new flows of " << s << "'s workload failed with etcd down";
		EXPECT_EQ(ok.size(), 10u);
	}
	for (const char *k : {"1", "2", "3"})
		ASSERT_TRUE(etcd({"start", k}).ok());
	ASSERT_TRUE(etcd({"wait", "30"}).ok());
	auto t0 = FleetClock::now();
	double relinked = waitFor(
		[&] {
			for (const char *s : {"s1", "s2", "s3"})
				if (!run("jq -e .etcd_reachable " + statusFile(s) + " >/dev/null").ok())
					return false;
			return true;
		},
		20, t0);
	EXPECT_GE(relinked, 0) << "fleetd did not reach etcd again";
	startSampler({"s1", "s2", "s3"});
	std::this_thread::sleep_for(std::chrono::seconds(kLeaseSeconds * 2 + 1));
	stopSampler();
	EXPECT_EQ(etcdGet("live"), liveBefore) << "live changed over etcd's absence";
	for (const char *s : {"s1", "s2", "s3"})
		EXPECT_EQ(claims(s).mine, before[s]) << s << "'s slices moved when etcd came back";
	EXPECT_TRUE(overlaps().empty());
	std::string logs = endHolds(holds);
	EXPECT_EQ(brokenCount(logs), 0) << "established flows broke while etcd was down or when it returned:\n" << logs;
}

// The behaviour of docs/operations.md "Fleet mode: what fails and what
// happens": a server that loses etcd alone keeps its applied state (it cannot
// tell this from etcd being down), the rest take its slices after the lease,
// and when the link heals it yields them at once and gets them back after
// return_home_seconds, with no overlap from then on.
TEST_F(Fleet, ServerCutOffFromEtcdAloneKeepsItsStateTheRestTakeItsSlicesAndItYieldsWhenTheLinkHeals)
{
	auto generation = [&](const std::string &s) {
		return run("busctl --address=" + shellQuote(busAddress(s)) +
			   " get-property org.portslice.Egress1 /org/portslice/Egress1 org.portslice.Egress1 Generation")
			.output;
	};
	std::string before = generation("s3");
	auto cut = FleetClock::now();
	// s3's packets to and from the etcd members' client port are dropped both
	// ways (a watch stream still flows in when only the way out is cut); the
	// data network is untouched.
	ASSERT_TRUE(inNode("s3", "nft -f - <<'EOF'\n"
				 "table ip etcdcut {\n"
				 "  chain out { type filter hook output priority 0; ip daddr 192.0.2.100-192.0.2.102 tcp dport 2379 drop; }\n"
				 "  chain in { type filter hook input priority 0; ip saddr 192.0.2.100-192.0.2.102 tcp sport 2379 drop; }\n"
				 "}\nEOF")
			    .ok());
	std::set<SliceId> taken;
	double all = waitFor(
		[&] {
			for (const char *s : {"s1", "s2"})
				for (const SliceId &slice : claims(s).mine)
					if (kS3Slices.count(slice))
						taken.insert(slice);
			return taken.size() == kS3Slices.size();
		},
		15, cut);
	std::printf("fleet partition: s3 cut off from etcd; s1 and s2 hold its slices %.2f s later\n", all);
	EXPECT_GE(all, 0) << "the rest did not take the slices of a server whose lease expired";
	EXPECT_LE(all, kLeaseSeconds + 1.0 + 0.5);
	EXPECT_FALSE(liveServers().count("s3")) << "s3 is still in live";
	// s3 itself keeps what it had applied: the data plane never waits for etcd.
	auto c3 = claims("s3");
	EXPECT_TRUE(std::includes(c3.mine.begin(), c3.mine.end(), kS3Slices.begin(), kS3Slices.end()))
		<< "s3 changed its slices without etcd";
	EXPECT_EQ(generation("s3"), before) << "s3's daemon applied something without etcd";
	EXPECT_TRUE(run("jq -e '.etcd_reachable == false' " + statusFile("s3")).ok())
		<< run("cat " + statusFile("s3")).output;

	// The link heals: s3 yields its slices at once, then comes home after return_home_seconds.
	ASSERT_TRUE(inNode("s3", "nft delete table ip etcdcut").ok());
	auto healed = FleetClock::now();
	double yielded = waitFor(
		[&] {
			auto c = claims("s3");
			for (const SliceId &slice : kS3Slices)
				if (c.mine.count(slice))
					return false;
			return c.ok;
		},
		15, healed);
	std::printf("fleet partition: link healed; s3 gave its slices up %.2f s later\n", yielded);
	EXPECT_GE(yielded, 0) << "s3 kept translating into slices the fleet gave away\n"
			      << run("tail -n 20 " + logPath("s3", "fleetd")).output;
	startSampler({"s1", "s2", "s3"});
	double home = waitFor(
		[&] {
			auto c = claims("s3");
			return std::includes(c.mine.begin(), c.mine.end(), kS3Slices.begin(), kS3Slices.end());
		},
		returnHomeSeconds() + 15, healed);
	std::printf("fleet partition: s3 owns its slices again %.2f s after the link healed\n", home);
	EXPECT_GE(home, returnHomeSeconds() - 1.0);
	std::this_thread::sleep_for(std::chrono::milliseconds(500));
	stopSampler();
	auto both = overlaps();
	EXPECT_TRUE(both.empty()) << both.size() << " overlaps after the link healed, first: "
				  << (both.empty() ? "" : both.front());
}

} // namespace
