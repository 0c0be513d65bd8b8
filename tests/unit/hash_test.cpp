// SPDX-License-Identifier: MIT
// FNV-1a against its published test vectors, and the conntrack zones it gives sources pinned: a zone must never renumber between versions (flows of a running server keep theirs).
#include <gtest/gtest.h>

#include <string>

#include "common/hash.h"
#include "config/config.h"
#include "plan/plan.h"
#include "fixture.h"

namespace {

using namespace portslice;

TEST(Hash, Fnv1aMatchesThePublishedTestVectors)
{
	// From the FNV reference (draft-eastlake-fnv): "", "a", "foobar".
	EXPECT_EQ(fnv1a32(""), 0x811c9dc5u);
	EXPECT_EQ(fnv1a32("a"), 0xe40c292cu);
	EXPECT_EQ(fnv1a32("foobar"), 0xbf9cf968u);
	EXPECT_EQ(fnv1a64(""), 0xcbf29ce484222325ull);
	EXPECT_EQ(fnv1a64("a"), 0xaf63dc4c8601ec8cull);
	EXPECT_EQ(fnv1a64("foobar"), 0x85944171f73967e8ull);
	Fnv1a64 pieces;
	pieces.add("foo");
	pieces.add("bar", 3);
	EXPECT_EQ(pieces.value(), fnv1a64("foobar"));
}

const std::string kFleet = portslice::test::fixture("zones.toml");

TEST(Hash, ConntrackZonesOfNamedSourcesNeverRenumber)
{
	config::LoadResult loaded = config::loadString(kFleet, "zones.toml");
	ASSERT_TRUE(loaded.ok());
	plan::PlanResult planned = plan::makePlan(*loaded.config);
	ASSERT_TRUE(planned.ok());
	// 1000 + FNV-1a 32 of the name mod 64000, as every version has given
	// them (rules/*.nft hold the same numbers). Changing one renumbers the
	// zones of live flows on upgrade: their answers lose their zone.
	std::map<std::string, uint16_t> zones;
	for (const plan::PlannedSource &s : planned.plan->sources)
		zones[s.name] = s.zone;
	EXPECT_EQ(zones["warp"], 61079);
	EXPECT_EQ(zones["tenant-a"], 37731);
	EXPECT_EQ(zones["batch"], 46563);
}

} // namespace
