// SPDX-License-Identifier: MIT
// NAT failures per source: new_NAME less left_NAME, never going down between reads, adding up across table replaces; the egress table follows the main one.
#include <gtest/gtest.h>

#include <map>

#include "config/config.h"
#include "daemon/kernel_stats.h"
#include "nft/model.h"
#include "nft/render.h"
#include "plan/plan.h"

namespace {

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

TEST(NatFailures, AreNewFlowsLessThoseThatLeftPerSource)
{
	NatFailures f;
	f.update(counters({ { "new_a", 400 }, { "new_b", 7 }, { "src_a", 999 }, { "guard_a", 3 } }),
		 counters({ { "left_a", 158 }, { "left_b", 7 } }));
	EXPECT_EQ(failures(f), (std::map<std::string, uint64_t>{ { "a", 242 }, { "b", 0 } }));
}

TEST(NatFailures, NeverGoDownAndAddUpAcrossReplaces)
{
	NatFailures f;
	f.update(counters({ { "new_a", 10 } }), counters({ { "left_a", 4 } }));
	// A read where a flow counted new had not yet been seen leaving, and the
	// next where it had: the value stays.
	f.update(counters({ { "new_a", 12 } }), counters({ { "left_a", 5 } }));
	EXPECT_EQ(failures(f)["a"], 7u);
	f.update(counters({ { "new_a", 12 } }), counters({ { "left_a", 6 } }));
	EXPECT_EQ(failures(f)["a"], 7u);
	// The daemon replaced the tables: counters from 0, the total goes on.
	f.rebase();
	f.update(counters({ { "new_a", 3 } }), counters({ { "left_a", 1 } }));
	EXPECT_EQ(failures(f)["a"], 9u);
	// Replaced without the daemon knowing (a rollback): new_a went down.
	f.update(counters({ { "new_a", 1 } }), counters({ { "left_a", 0 } }));
	EXPECT_EQ(failures(f)["a"], 10u);
}

TEST(NatFailures, NothingWithoutTheEgressTableAndNoRowForAGoneSource)
{
	NatFailures f;
	f.update(counters({ { "new_a", 10 } }), {});
	EXPECT_TRUE(failures(f).empty()); // not 10: nothing left is not known
	f.update(counters({ { "new_a", 10 }, { "new_b", 1 } }), counters({ { "left_a", 10 }, { "left_b", 0 } }));
	f.update(counters({ { "new_a", 10 } }), counters({ { "left_a", 10 } }));
	EXPECT_EQ(failures(f), (std::map<std::string, uint64_t>{ { "a", 0 } }));
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
