// SPDX-License-Identifier: MIT
// Lab: the table portsliced applies is what the dump says and what the real `nft -f` makes of it, byte for byte; failures change nothing; --remove leaves nothing.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>
#include <random>
#include <sched.h>
#include <signal.h>
#include <sstream>
#include <unistd.h>

#include "config/config.h"
#include "lab_fixture.h"
#include "nat_fleet.h"
#include "nft/apply.h"
#include "nft/model.h"
#include "nft/render.h"
#include "plan/plan.h"

namespace portslice {
namespace {

using lab::buildPath;
using lab::runShell;
using lab::shellQuote;
using lab::sourcePath;

// Each test runs in a network namespace of its own, made by unshare(): the
// kernel frees it with the test process's reference, so nothing can leak
// into the host's nftables or sysctls, and nothing needs cleaning up.
class NatApply : public ::testing::Test {
protected:
	void SetUp() override
	{
		if (geteuid() != 0)
			GTEST_SKIP() << "needs root for a network namespace of its own";
		ASSERT_EQ(unshare(CLONE_NEWNET), 0) << std::strerror(errno);
		dir_ = std::filesystem::temp_directory_path() / ("psn-" + std::to_string(getpid()) + "-" +
								 ::testing::UnitTest::GetInstance()->current_test_info()->name());
		std::filesystem::remove_all(dir_);
		std::filesystem::create_directories(dir_);
	}
	void TearDown() override
	{
		if (!dir_.empty())
			std::filesystem::remove_all(dir_);
	}

	lab::CommandResult daemon(const std::string &args)
	{
		return runShell(shellQuote(buildPath("src/daemon/portsliced")) + " --state-dir " +
				shellQuote(dir_.string() + "/state") + " --no-xdp " + args + " 2>&1");
	}
	std::string list()
	{
		auto r = runShell("nft -s list table inet portslice 2>&1");
		return r.output;
	}
	std::string path(const std::string &name) const { return (dir_ / name).string(); }

	std::filesystem::path dir_;
};

// The kernel lists hash sets in hash order: sort the elements of every
// `elements = { ... }` so that two listings of the same content compare equal.
std::string sortElements(const std::string &listing)
{
	std::string out;
	size_t pos = 0;
	const std::string open = "elements = { ";
	for (;;) {
		size_t start = listing.find(open, pos);
		if (start == std::string::npos) {
			out += listing.substr(pos);
			return out;
		}
		size_t end = listing.find(" }", start);
		out += listing.substr(pos, start - pos + open.size());
		std::string body = listing.substr(start + open.size(), end - start - open.size());
		std::vector<std::string> items;
		std::string item;
		std::istringstream in(std::regex_replace(body, std::regex(",\\s*"), ","));
		while (std::getline(in, item, ','))
			items.push_back(item);
		std::sort(items.begin(), items.end());
		for (size_t i = 0; i < items.size(); i++)
			out += (i ? ", " : "") + items[i];
		pos = end;
	}
}

// The table's comment names the generation and plan of the last full
// replace (the kernel keeps it through deltas): take them out.
std::string withoutCommentGeneration(const std::string &listing)
{
	return std::regex_replace(listing, std::regex("comment \"portslice generation [0-9]+ plan [0-9a-f]{16}"),
				  "comment \"portslice");
}

std::vector<std::string> exampleConfigs()
{
	std::vector<std::string> out;
	for (const auto &e : std::filesystem::directory_iterator(sourcePath("rules")))
		if (e.path().extension() == ".toml")
			out.push_back(e.path().string());
	std::sort(out.begin(), out.end());
	return out;
}

TEST_F(NatApply, TableEqualsWhatNftMakesOfTheDumpForEveryExample)
{
	auto configs = exampleConfigs();
	ASSERT_FALSE(configs.empty());
	for (const std::string &config : configs) {
		SCOPED_TRACE(config);
		auto dump = runShell(shellQuote(buildPath("src/ctl/portslicectl")) + " dump --config " +
				     shellQuote(config) + " > " + path("dump.nft"));
		ASSERT_TRUE(dump.ok()) << dump.output;
		auto loaded = runShell("nft -f " + path("dump.nft") + " 2>&1");
		ASSERT_TRUE(loaded.ok()) << loaded.output;
		std::string byNft = list();
		ASSERT_TRUE(runShell("nft delete table inet portslice").ok());

		auto applied = daemon("--config " + shellQuote(config) + " --apply-once");
		ASSERT_TRUE(applied.ok()) << applied.output;
		std::string byPortslice = list();
		// Byte for byte, the elements of concatenated interval sets in the
		// order they were added included: the dump is what nft lists.
		EXPECT_EQ(byNft, byPortslice);
		std::ifstream dumped(path("dump.nft"));
		EXPECT_EQ(std::string(std::istreambuf_iterator<char>(dumped), {}), byPortslice);
		ASSERT_TRUE(daemon("--remove").ok());
	}
}

// Where no table is live, a large one is made dormant and filled in
// transactions of about a megabyte; the last one wakes it. What the kernel
// then holds is what nft makes of the dump, and it acts (not dormant).
TEST_F(NatApply, ALargeTableMadeWhereNoneIsLiveIsFilledInPiecesAndEqualsTheDump)
{
	std::string big = path("big.toml");
	std::ofstream(big) << testing::generatedFleet(2600); // 96,200 elements, 3.9 MB of netlink
	auto dump = runShell(shellQuote(buildPath("src/ctl/portslicectl")) + " dump --config " + shellQuote(big) +
			     " > " + path("dump.nft"));
	ASSERT_TRUE(dump.ok()) << dump.output;
	ASSERT_TRUE(runShell("nft -f " + path("dump.nft") + " 2>&1").ok());
	std::string byNft = sortElements(list());
	ASSERT_TRUE(runShell("nft delete table inet portslice").ok());

	auto applied = daemon("--config " + shellQuote(big) + " --apply-once");
	ASSERT_TRUE(applied.ok()) << applied.output;
	std::smatch m;
	ASSERT_TRUE(std::regex_search(applied.output, m, std::regex(", in ([0-9]+) transactions\\)"))) << applied.output;
	EXPECT_GE(std::stoi(m[1]), 3) << applied.output;
	std::string byPortslice = list();
	EXPECT_EQ(byPortslice.find("dormant"), std::string::npos);
	EXPECT_EQ(byNft, sortElements(byPortslice));
	// The egress table comes with the last transaction.
	EXPECT_TRUE(runShell("nft list table netdev portslice_egress").ok());

	// A live table is replaced in one transaction, as before.
	auto again = daemon("--config " + shellQuote(sourcePath("rules/one-server.toml")) + " --apply-once");
	ASSERT_TRUE(again.ok()) << again.output;
	EXPECT_EQ(again.output.find("transactions"), std::string::npos) << again.output;
}

// Killed while it makes a table where none was live, --apply-once leaves
// no table, a dormant one (its chains hook nothing), or the whole new
// table; never one that acts half-made. The next apply makes it whole.
TEST_F(NatApply, KilledWhileMakingATableItLeavesNothingThatActsHalfMade)
{
	std::string big = path("big.toml");
	std::ofstream(big) << testing::generatedFleet(2600);
	auto t0 = std::chrono::steady_clock::now();
	ASSERT_TRUE(daemon("--config " + shellQuote(big) + " --apply-once").ok());
	int applyMs = static_cast<int>(
		std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count());
	auto withoutGeneration = [](const std::string &l) {
		std::string out = std::regex_replace(l, std::regex("generation [0-9]+ "), "generation G ");
		return std::regex_replace(out, std::regex("(set generation \\{\n\t\ttypeof meta cgroup\n\t\telements = \\{ )[0-9]+"),
					  "$1G");
	};
	std::string whole = withoutGeneration(sortElements(list()));

	std::mt19937 rng(2026);
	std::uniform_int_distribution<int> when(0, applyMs);
	int sawNone = 0, sawDormant = 0, sawWhole = 0;
	for (int i = 0; i < 20; i++) {
		SCOPED_TRACE("kill " + std::to_string(i));
		ASSERT_TRUE(daemon("--remove").ok());
		std::string cmd = "exec " + buildPath("src/daemon/portsliced") + " --no-xdp --state-dir " + path("state") +
				  " --config " + big + " --apply-once >/dev/null 2>&1";
		pid_t pid = lab::spawnProcess({"sh", "-c", cmd}, "/dev/null");
		ASSERT_GT(pid, 0);
		std::this_thread::sleep_for(std::chrono::milliseconds(when(rng)));
		lab::stopProcess(pid, SIGKILL);

		auto tables = runShell("nft list tables inet");
		if (tables.output.find("portslice") == std::string::npos) {
			sawNone++;
			continue;
		}
		std::string listing = list();
		if (listing.find("flags dormant") != std::string::npos) {
			sawDormant++;
			// A dormant table holds no applied state: the next apply makes the whole table.
			auto applied = daemon("--config " + shellQuote(big) + " --apply-once");
			ASSERT_TRUE(applied.ok()) << applied.output;
			EXPECT_EQ(withoutGeneration(sortElements(list())), whole);
		} else {
			sawWhole++;
			EXPECT_EQ(withoutGeneration(sortElements(listing)), whole);
		}
	}
	std::printf("kills: %d left no table, %d a dormant one, %d the whole table (apply takes %d ms here)\n", sawNone,
		    sawDormant, sawWhole, applyMs);
	EXPECT_GT(sawDormant, 0);
}

TEST_F(NatApply, BadConfigExitsOneWithLocatedErrorsAndLeavesTheTableUntouched)
{
	std::string good = sourcePath("rules/one-server.toml");
	ASSERT_TRUE(daemon("--config " + shellQuote(good) + " --apply-once").ok());
	std::string before = runShell("nft -a -s list ruleset").output;

	std::filesystem::copy_file(good, path("bad.toml"));
	{
		std::ofstream f(path("bad.toml"), std::ios::app);
		f << "\n[[sources]]\nname = \"typo\"\nmatch = { sadr = \"100.64.9.0/24\" }\nwant = {}\n";
	}
	auto r = daemon("--config " + path("bad.toml") + " --apply-once");
	EXPECT_EQ(r.status, 1) << r.output;
	EXPECT_NE(r.output.find(path("bad.toml") + ":"), std::string::npos) << r.output;
	EXPECT_NE(r.output.find("error"), std::string::npos) << r.output;
	EXPECT_EQ(runShell("nft -a -s list ruleset").output, before);
}

TEST_F(NatApply, ReapplyBumpsTheGenerationAndRemoveLeavesNothing)
{
	std::filesystem::copy_file(sourcePath("rules/one-server.toml"), path("tuned.toml"));
	{
		std::ofstream f(path("tuned.toml"), std::ios::app);
		f << "\n[conntrack]\nudp_timeout = 17\ntcp_timeout_time_wait = 33\nmax = 123456\n";
	}
	std::string udpBefore = runShell("cat /proc/sys/net/netfilter/nf_conntrack_udp_timeout").output;
	std::string twBefore = runShell("cat /proc/sys/net/netfilter/nf_conntrack_tcp_timeout_time_wait").output;

	auto first = daemon("--config " + path("tuned.toml") + " --apply-once");
	ASSERT_TRUE(first.ok()) << first.output;
	EXPECT_NE(list().find("comment \"portslice generation 1 plan "), std::string::npos);
	EXPECT_EQ(runShell("cat /proc/sys/net/netfilter/nf_conntrack_udp_timeout").output, "17\n");
	EXPECT_EQ(runShell("cat /proc/sys/net/netfilter/nf_conntrack_tcp_timeout_time_wait").output, "33\n");
	// nf_conntrack_max is the host's to set: reported, not failed.
	EXPECT_NE(first.output.find("not set: net.netfilter.nf_conntrack_max"), std::string::npos) << first.output;

	auto second = daemon("--config " + path("tuned.toml") + " --apply-once");
	ASSERT_TRUE(second.ok()) << second.output;
	EXPECT_NE(list().find("comment \"portslice generation 2 plan "), std::string::npos);

	auto removed = daemon("--remove");
	ASSERT_TRUE(removed.ok()) << removed.output;
	EXPECT_EQ(runShell("nft list ruleset").output, "");
	EXPECT_EQ(runShell("cat /proc/sys/net/netfilter/nf_conntrack_udp_timeout").output, udpBefore);
	EXPECT_EQ(runShell("cat /proc/sys/net/netfilter/nf_conntrack_tcp_timeout_time_wait").output, twBefore);
	EXPECT_TRUE(daemon("--remove").ok()) << "removing twice is not an error";
}

plan::Plan planOf(const config::Config &c)
{
	plan::PlanResult p = plan::makePlan(c);
	EXPECT_TRUE(p.ok());
	return *p.plan;
}

TEST_F(NatApply, SliceMoveIsAnElementDeltaThatEndsEqualToAFreshTable)
{
	config::LoadResult loaded = config::loadFile(sourcePath("rules/three-servers.toml"));
	ASSERT_TRUE(loaded.ok());
	config::Config before = *loaded.config;
	plan::Plan planBefore = planOf(before);

	// Give this server one more slice of the first address that has a free one.
	config::Config after = before;
	bool moved = false;
	for (config::Address &a : after.addresses) {
		for (uint32_t i = 0; i < a.sliceCount() && !moved; i++)
			if (a.owners.count(i) && a.owners[i] != after.serverName) {
				a.owners[i] = after.serverName;
				moved = true;
			}
		if (moved)
			break;
	}
	ASSERT_TRUE(moved);
	plan::Plan planAfter = planOf(after);

	auto nft = nft::NftApplier::open();
	ASSERT_TRUE(nft.ok()) << nft.error().message();
	auto full = nft->apply(planBefore, nullptr, 1);
	ASSERT_TRUE(full.ok()) << full.error().message();
	EXPECT_TRUE(full->fullReplace);
	auto delta = nft->apply(planAfter, &planBefore, 2);
	ASSERT_TRUE(delta.ok()) << delta.error().message();
	EXPECT_FALSE(delta->fullReplace);
	EXPECT_GT(delta->elementsAdded, 0u);
	EXPECT_LT(delta->messages, 40u);
	std::string incremental = list();

	// The kernel keeps a table's comment on update: it still names the
	// generation and plan of the last full replace; the set `generation`
	// names the delta's.
	EXPECT_NE(incremental.find("\tset generation {\n\t\ttypeof meta cgroup\n\t\telements = { 2 }\n\t}\n"),
		  std::string::npos) << incremental;
	EXPECT_NE(incremental.find("comment \"portslice generation 1 plan"), std::string::npos) << incremental;
	auto state = nft->readState();
	ASSERT_TRUE(state.ok());
	ASSERT_TRUE(state->has_value());
	EXPECT_EQ((*state)->generation, 2u);
	EXPECT_EQ((*state)->planHash, planBefore.hash());

	// The same plan from scratch through the real nft.
	ASSERT_TRUE(nft->remove().ok());
	{
		std::ofstream f(path("after.nft"));
		f << nft::render(nft::buildModel(planAfter, 2));
	}
	auto loadedNft = runShell("nft -f " + path("after.nft") + " 2>&1");
	ASSERT_TRUE(loadedNft.ok()) << loadedNft.output;
	EXPECT_EQ(withoutCommentGeneration(sortElements(list())), withoutCommentGeneration(sortElements(incremental)));
}

TEST_F(NatApply, RemovingAndAddingASourceIsAnElementDeltaWithItsCounters)
{
	config::LoadResult loaded = config::loadFile(sourcePath("rules/three-servers.toml"));
	ASSERT_TRUE(loaded.ok());
	config::Config with = *loaded.config;
	config::Config without = with;
	// warp-gb goes; stateless-gb keeps the saddr shape in use.
	std::erase_if(without.sources, [](const config::Source &s) { return s.name == "warp-gb"; });
	plan::Plan pWith = planOf(with), pWithout = planOf(without);

	auto nft = nft::NftApplier::open();
	ASSERT_TRUE(nft.ok());
	ASSERT_TRUE(nft->apply(pWith, nullptr, 1).ok());
	for (auto [from, to] : {std::pair{&pWith, &pWithout}, std::pair{&pWithout, &pWith}}) {
		auto delta = nft->apply(*to, from, 2);
		ASSERT_TRUE(delta.ok()) << delta.error().message();
		EXPECT_FALSE(delta->fullReplace);
		std::string incremental = list();
		EXPECT_EQ(incremental.find("counter src_warp-gb") == std::string::npos, to == &pWithout);

		ASSERT_TRUE(nft->remove().ok());
		std::ofstream(path("fresh.nft")) << nft::render(nft::buildModel(*to, 2));
		ASSERT_TRUE(runShell("nft -f " + path("fresh.nft")).ok());
		// Counters added by a delta come last; compare them as a set.
		auto norm = [](std::string l) {
			l = withoutCommentGeneration(l);
			std::vector<std::string> counters;
			std::regex counter("\tcounter [^ ]+ \\{\n\t\\}\n\n");
			for (auto it = std::sregex_iterator(l.begin(), l.end(), counter); it != std::sregex_iterator(); ++it)
				counters.push_back(it->str());
			std::sort(counters.begin(), counters.end());
			std::string rest = std::regex_replace(l, counter, "");
			for (const std::string &c : counters)
				rest += c;
			return rest;
		};
		EXPECT_EQ(norm(sortElements(list())), norm(sortElements(incremental)));
		// Back to the state the next delta starts from.
		ASSERT_TRUE(nft->remove().ok());
		ASSERT_TRUE(nft->apply(*to, nullptr, 1).ok());
	}
}

TEST_F(NatApply, ADeltaOnATableSomeoneChangedFallsBackToAFullReplace)
{
	config::LoadResult loaded = config::loadFile(sourcePath("rules/three-servers.toml"));
	ASSERT_TRUE(loaded.ok());
	config::Config after = *loaded.config;
	after.addresses[0].owners[1] = after.serverName;
	plan::Plan p1 = planOf(*loaded.config), p2 = planOf(after);
	auto nft = nft::NftApplier::open();
	ASSERT_TRUE(nft.ok());
	ASSERT_TRUE(nft->apply(p1, nullptr, 1).ok());
	// The delta deletes nat_port elements of warp-gb's old share; gone, the
	// delta fails and the applier replaces the table.
	ASSERT_TRUE(runShell("nft flush map inet portslice nat_port").ok());
	auto r = nft->apply(p2, &p1, 2);
	ASSERT_TRUE(r.ok()) << r.error().message();
	EXPECT_TRUE(r->fullReplace);
	std::string fixed = list();
	ASSERT_TRUE(nft->remove().ok());
	std::ofstream(path("p2.nft")) << nft::render(nft::buildModel(p2, 2));
	ASSERT_TRUE(runShell("nft -f " + path("p2.nft")).ok());
	EXPECT_EQ(sortElements(list()), sortElements(fixed));
}

TEST_F(NatApply, CountersAreReadBackByName)
{
	ASSERT_TRUE(daemon("--config " + shellQuote(sourcePath("rules/one-server.toml")) + " --apply-once").ok());
	auto nft = nft::NftApplier::open();
	ASSERT_TRUE(nft.ok());
	auto counters = nft->readCounters();
	ASSERT_TRUE(counters.ok()) << counters.error().message();
	std::vector<std::string> names;
	for (const nft::CounterValue &c : *counters)
		names.push_back(c.name);
	EXPECT_NE(std::find(names.begin(), names.end(), "guard_other"), names.end());
	EXPECT_NE(std::find(names.begin(), names.end(), "addr_198.51.100.1"), names.end());
}

// SIGKILL `portsliced --apply-once` of a ~100k-element table at random
// moments, 100 times: the kernel takes a batch whole or not at all, so the
// table is always the complete old one or the complete new one.
TEST_F(NatApply, KilledAtRandomMomentsTheTableIsAlwaysTheWholeOldOrTheWholeNewGeneration)
{
	std::string small = sourcePath("rules/one-server.toml");
	std::string big = path("big.toml");
	std::ofstream(big) << testing::generatedFleet(2600); // 96,200 elements

	// The two possible tables, as nft lists them (generation aside).
	auto generationFree = [](const std::string &l) {
		std::string out = std::regex_replace(l, std::regex("generation [0-9]+ "), "generation G ");
		return std::regex_replace(out, std::regex("(set generation \\{\n\t\ttypeof meta cgroup\n\t\telements = \\{ )[0-9]+"),
					  "$1G");
	};
	ASSERT_TRUE(daemon("--config " + shellQuote(big) + " --apply-once").ok());
	std::string bigListing = generationFree(sortElements(list()));
	ASSERT_TRUE(daemon("--remove").ok());
	ASSERT_TRUE(daemon("--config " + shellQuote(small) + " --apply-once").ok());
	std::string smallListing = generationFree(sortElements(list()));
	std::smatch m;
	ASSERT_TRUE(std::regex_search(bigListing, m, std::regex("plan ([0-9a-f]{16})")));
	std::string bigHash = m[1];

	// How long a whole apply takes here, to spread the kills over it.
	auto t0 = std::chrono::steady_clock::now();
	ASSERT_TRUE(daemon("--config " + shellQuote(big) + " --apply-once").ok());
	int applyMs = static_cast<int>(
		std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count());

	std::mt19937 rng(12345);
	std::uniform_int_distribution<int> when(0, applyMs + applyMs / 4);
	int sawOld = 0, sawNew = 0;
	for (int i = 0; i < 100; i++) {
		SCOPED_TRACE("kill " + std::to_string(i));
		ASSERT_TRUE(daemon("--config " + shellQuote(small) + " --apply-once").ok());
		std::string cmd = "exec " + buildPath("src/daemon/portsliced") + " --no-xdp --state-dir " +
				  path("state") + " --config " + big + " --apply-once >/dev/null 2>&1";
		pid_t pid = lab::spawnProcess({"sh", "-c", cmd}, "/dev/null");
		ASSERT_GT(pid, 0);
		std::this_thread::sleep_for(std::chrono::milliseconds(when(rng)));
		lab::stopProcess(pid, SIGKILL);

		std::string comment = runShell("nft list table inet portslice | sed -n 2p").output;
		if (comment.find(bigHash) != std::string::npos) {
			sawNew++;
			// Whole new table: check the full listing now and then (nft
			// takes a second on it), the largest set's size every time.
			if (i % 25 == 0) {
				EXPECT_EQ(generationFree(sortElements(list())), bigListing);
			} else {
				// 41,600 stateless blocks of 128 ports: one element
				// each in the hash maps of the unit form (nft/model.h),
				// source i's in part i mod 16: 162 sources in part 15.
				auto n = runShell("nft list map inet portslice sl_egress_15 | grep -o ' : 198[.]18[.]' | wc -l");
				EXPECT_EQ(n.output, "2592\n");
			}
		} else {
			sawOld++;
			EXPECT_EQ(generationFree(sortElements(list())), smallListing);
		}
	}
	std::printf("kills: %d left the old table, %d the new one (apply takes %d ms here)\n", sawOld, sawNew, applyMs);
	EXPECT_GT(sawOld, 0);
	EXPECT_GT(sawNew, 0);
}

} // namespace
} // namespace portslice
