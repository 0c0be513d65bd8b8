// SPDX-License-Identifier: MIT
// NAT failures per source: new_NAME less left_NAME, never going down between reads, adding up across table replaces; the egress table follows the main one.
// Counter totals: a series outlives its table (deleted, replaced) while the plan has its counter.
// Conntrack use: the slices this server drains show with their flows.
#include <gtest/gtest.h>

#include <map>

#include "common/net.h"
#include "config/config.h"
#include "daemon/kernel_stats.h"
#include "nft/model.h"
#include "nft/render.h"
#include "plan/plan.h"

namespace {

using portslice::daemon::CounterTotals;
using portslice::daemon::NatFailures;
using portslice::nft::CounterValue;

std::map<std::string, uint64_t> failures(const NatFailures &f)
{
	std::vector<portslice::service::StatRow> rows;
	f.addRows(rows);
	std::map<std::string, uint64_t> out;
	for (const auto &r : rows) {
		EXPECT_EQ(r.kind, "source");
		EXPECT_EQ(r.counter, "nat_failures");
		out[r.name] = r.value;
	}
	return out;
}

std::vector<CounterValue> counters(std::map<std::string, uint64_t> packets)
{
	std::vector<CounterValue> out;
	for (const auto &[name, n] : packets)
		out.push_back({ name, n, n * 60 });
	return out;
}

// The counters of a plan whose conntrack sources are `sources`.
std::vector<std::string> planned(std::vector<std::string> sources)
{
	std::vector<std::string> out;
	for (const std::string &s : sources)
		for (const char *prefix : { "src_", "guard_", "new_" })
			out.push_back(prefix + s);
	out.push_back("addr_198.51.100.1");
	out.push_back("guard_other");
	return out;
}

TEST(NatFailures, AreNewFlowsLessThoseThatLeftPerSource)
{
	NatFailures f;
	f.update(counters({ { "new_a", 400 }, { "new_b", 7 }, { "src_a", 999 }, { "guard_a", 3 } }),
		 counters({ { "left_a", 158 }, { "left_b", 7 } }), planned({ "a", "b" }));
	EXPECT_EQ(failures(f), (std::map<std::string, uint64_t>{ { "a", 242 }, { "b", 0 } }));
}

TEST(NatFailures, NeverGoDownAndAddUpAcrossReplaces)
{
	NatFailures f;
	f.update(counters({ { "new_a", 10 } }), counters({ { "left_a", 4 } }), planned({ "a" }));
	// A read where a flow counted new had not yet been seen leaving, and the
	// next where it had: the value stays.
	f.update(counters({ { "new_a", 12 } }), counters({ { "left_a", 5 } }), planned({ "a" }));
	EXPECT_EQ(failures(f)["a"], 7u);
	f.update(counters({ { "new_a", 12 } }), counters({ { "left_a", 6 } }), planned({ "a" }));
	EXPECT_EQ(failures(f)["a"], 7u);
	// The daemon replaced the tables: counters from 0, the total goes on.
	f.rebase();
	f.update(counters({ { "new_a", 3 } }), counters({ { "left_a", 1 } }), planned({ "a" }));
	EXPECT_EQ(failures(f)["a"], 9u);
	// Replaced without the daemon knowing (a rollback): new_a went down.
	f.update(counters({ { "new_a", 1 } }), counters({ { "left_a", 0 } }), planned({ "a" }));
	EXPECT_EQ(failures(f)["a"], 10u);
}

TEST(NatFailures, NothingWithoutTheEgressTableAndNoRowForAGoneSource)
{
	NatFailures f;
	f.update(counters({ { "new_a", 10 } }), {}, planned({ "a" }));
	EXPECT_TRUE(failures(f).empty()); // not 10: nothing left is not known
	f.update(counters({ { "new_a", 10 }, { "new_b", 1 } }), counters({ { "left_a", 10 }, { "left_b", 0 } }),
		 planned({ "a", "b" }));
	// b is gone from the plan (a reload): its row goes.
	f.update(counters({ { "new_a", 10 } }), counters({ { "left_a", 10 } }), planned({ "a" }));
	EXPECT_EQ(failures(f), (std::map<std::string, uint64_t>{ { "a", 0 } }));
}

TEST(NatFailures, ASourceKeepsItsTotalWhileTheMainTableIsGone)
{
	NatFailures f;
	f.update(counters({ { "new_a", 10 }, { "new_b", 3 } }), counters({ { "left_a", 4 }, { "left_b", 3 } }),
		 planned({ "a", "b" }));
	ASSERT_EQ(failures(f), (std::map<std::string, uint64_t>{ { "a", 6 }, { "b", 0 } }));
	// `nft delete table inet portslice`: no new_ counter, the egress table still there.
	f.update({}, counters({ { "left_a", 4 }, { "left_b", 3 } }), planned({ "a", "b" }));
	EXPECT_EQ(failures(f), (std::map<std::string, uint64_t>{ { "a", 6 }, { "b", 0 } }));
	f.update({}, {}, planned({ "a", "b" }));
	EXPECT_EQ(failures(f), (std::map<std::string, uint64_t>{ { "a", 6 }, { "b", 0 } }));
	// Repaired (both tables made anew): the new tables' failures add on.
	f.rebase();
	f.update(counters({ { "new_a", 2 }, { "new_b", 1 } }), counters({ { "left_a", 1 }, { "left_b", 1 } }),
		 planned({ "a", "b" }));
	EXPECT_EQ(failures(f), (std::map<std::string, uint64_t>{ { "a", 7 }, { "b", 0 } }));
	// The egress table alone gone: what was known stays.
	f.update(counters({ { "new_a", 5 }, { "new_b", 1 } }), {}, planned({ "a", "b" }));
	EXPECT_EQ(failures(f), (std::map<std::string, uint64_t>{ { "a", 7 }, { "b", 0 } }));
}

// addCounterRows of CounterTotals as "kind name counter" -> value.
std::map<std::string, uint64_t> totals(const CounterTotals &t)
{
	std::vector<portslice::service::StatRow> rows;
	t.addRows(rows);
	std::map<std::string, uint64_t> out;
	for (const auto &r : rows)
		out[r.kind + " " + r.name + " " + r.counter] = r.value;
	return out;
}

TEST(CounterTotals, ACounterMissingFromTheTableKeepsItsRowAndTotalAndAddsOnWhenBack)
{
	CounterTotals t;
	t.update(counters({ { "src_a", 5 }, { "guard_a", 1 }, { "addr_198.51.100.1", 5 }, { "guard_other", 0 } }),
		 planned({ "a" }));
	const std::map<std::string, uint64_t> first = {
		{ "source a packets", 5 }, { "source a bytes", 300 }, { "guard a drops", 1 },
		{ "address 198.51.100.1 packets", 5 }, { "address 198.51.100.1 bytes", 300 }, { "guard other drops", 0 } };
	EXPECT_EQ(totals(t), first);
	// The table deleted by hand (--no-repair, or read before the repair): every row stays.
	t.update({}, planned({ "a" }));
	EXPECT_EQ(totals(t), first);
	// One counter missing, the others read: only it reads as 0 since a reset.
	t.update(counters({ { "src_a", 7 }, { "addr_198.51.100.1", 7 }, { "guard_other", 0 } }), planned({ "a" }));
	EXPECT_EQ(totals(t)["source a packets"], 12u);
	EXPECT_EQ(totals(t)["guard a drops"], 1u);
	// Back, from 0: its counts add to the total, none counted twice.
	t.update(counters({ { "src_a", 8 }, { "guard_a", 2 }, { "addr_198.51.100.1", 8 }, { "guard_other", 0 } }),
		 planned({ "a" }));
	EXPECT_EQ(totals(t)["source a packets"], 13u);
	EXPECT_EQ(totals(t)["guard a drops"], 3u);
	EXPECT_EQ(totals(t)["address 198.51.100.1 packets"], 13u);
}

TEST(CounterTotals, OnlyTheCountersOfThePlanHaveRows)
{
	CounterTotals t;
	t.update(counters({ { "src_a", 5 }, { "src_b", 6 } }), planned({ "a", "b" }));
	EXPECT_EQ(totals(t)["source b packets"], 6u);
	// b left the plan (a reload): its series goes, whatever the table still holds.
	t.update(counters({ { "src_a", 5 }, { "src_b", 6 } }), planned({ "a" }));
	EXPECT_EQ(totals(t).count("source b packets"), 0u);
	EXPECT_EQ(totals(t)["source a packets"], 5u);
}

TEST(CounterTotals, ThePlannedCountersAreThoseOfTheTableModel)
{
	for (const char *file : { "/one-server.toml", "/three-servers.toml", "/overlapping-tenants.toml" }) {
		auto loaded = portslice::config::loadFile(std::string(RULES_DIR) + file);
		ASSERT_TRUE(loaded.ok()) << file;
		auto made = portslice::plan::makePlan(*loaded.config);
		ASSERT_TRUE(made.ok()) << file;
		EXPECT_EQ(portslice::daemon::plannedCounters(*made.plan), portslice::nft::buildModel(*made.plan, 1).counters)
			<< file;
	}
}

// s1 owns slices 0 and 1 of 198.51.100.1 (ports 1024-1039) and drains slice
// 2 (1040-1047), which s2 owns now; warp-a still has flows there.
const char *kDraining = R"(
[server]
name = "s1"
uplink = "up0"

[[datacenters]]
name = "lab1"
gateway = "192.0.2.1"

[[servers]]
name = "s1"
address = "192.0.2.11"
datacenter = "lab1"

[[servers]]
name = "s2"
address = "192.0.2.12"
datacenter = "lab1"

[[addresses]]
address = "198.51.100.1"
datacenter = "lab1"
port_range = "1024-1055"
slice_size = 8
tags = { country = "GB" }
slices = { s1 = [0, 1], s2 = [2, 3] }
previous = { s1 = 2 }

[[sources]]
name = "warp-a"
match = { saddr = "100.64.1.0/25" }
want = { country = "GB" }

[[sources]]
name = "warp-b"
match = { saddr = "100.64.1.128/25" }
want = { country = "GB" }
)";

TEST(ConntrackUse, ASliceThisServerDrainsHasItsRowsAndItsFlowsCountForTheirSource)
{
	auto loaded = portslice::config::loadString(kDraining, "draining.toml");
	ASSERT_TRUE(loaded.ok());
	auto made = portslice::plan::makePlan(*loaded.config);
	ASSERT_TRUE(made.ok());
	const portslice::plan::Plan &plan = *made.plan;
	ASSERT_EQ(plan.sources.size(), 2u);
	uint16_t zoneA = plan.sources[0].zone, zoneB = plan.sources[1].zone;
	portslice::Ipv4 address = *portslice::Ipv4::parse("198.51.100.1");
	auto flow = [&](uint16_t zone, uint16_t port) {
		portslice::conntrack::Entry e;
		e.l4proto = 17;
		e.zone = zone;
		e.srcNat = true;
		e.replyDst = address;
		e.replyDstPort = port;
		return e;
	};
	// warp-a: 3 distinct ports of the drained slice (one of them twice), 1
	// of its own range; warp-b: 1 of its own range.
	uint16_t ownA = plan.sources[0].shares.at(0).ports.lo, ownB = plan.sources[1].shares.at(0).ports.lo;
	std::vector<portslice::conntrack::Entry> entries = { flow(zoneA, 1040), flow(zoneA, 1041), flow(zoneA, 1041),
							     flow(zoneA, 1047), flow(zoneA, ownA), flow(zoneB, ownB) };
	std::map<std::string, uint64_t> rows;
	for (const auto &r : portslice::daemon::conntrackUseRows(plan, entries))
		rows[r.kind + " " + r.name + " " + r.counter] = r.value;
	EXPECT_EQ(rows["slice 198.51.100.1/2 ports_in_use"], 3u);
	EXPECT_EQ(rows["slice 198.51.100.1/2 ports"], 8u);
	EXPECT_EQ(rows["slice 198.51.100.1/2 percent_in_use"], 37u);
	EXPECT_EQ(rows.count("slice 198.51.100.1/3 ports"), 0u); // s2's, never this server's
	EXPECT_EQ(rows["source_address warp-a 198.51.100.1 ports_in_use"], 4u);
	EXPECT_EQ(rows["source_address warp-b 198.51.100.1 ports_in_use"], 1u);
	EXPECT_EQ(rows["source warp-a conntrack_entries"], 5u);
	// Its own slices as before.
	EXPECT_EQ(rows["slice 198.51.100.1/0 ports"], 8u);
	EXPECT_EQ(rows["slice 198.51.100.1/0 ports_in_use"] + rows["slice 198.51.100.1/1 ports_in_use"], 2u);
}

TEST(EgressTable, CountsEveryConntrackSourceByItsMarkAndGivesTheMarkBack)
{
	auto loaded = portslice::config::loadFile(RULES_DIR "/one-server.toml");
	ASSERT_TRUE(loaded.ok());
	auto planned = portslice::plan::makePlan(*loaded.config);
	ASSERT_TRUE(planned.ok());
	auto model = portslice::nft::buildModel(*planned.plan, 1);
	std::string text = portslice::nft::render(portslice::nft::egressModel(model));
	EXPECT_EQ(text, "table netdev portslice_egress {\n"
			"\tcomment \"portslice: new flows of each conntrack source that left eth0 (new_NAME - left_NAME: "
			"refused by conntrack)\"\n"
			"\tcounter left_warp {\n\t}\n\n"
			"\tmap left_mark {\n\t\ttype mark : counter\n\t\telements = { 0x5053ee97 : \"left_warp\" }\n\t}\n\n"
			"\tmap orig_mark {\n\t\ttype mark : mark\n\t\telements = { 0x5053ee97 : 0x00000000 }\n\t}\n\n"
			"\tchain egress {\n"
			"\t\ttype filter hook egress device \"eth0\" priority filter; policy accept;\n"
			"\t\tcounter name meta mark map @left_mark meta mark set meta mark map @orig_mark\n"
			"\t}\n}\n");
}

} // namespace
