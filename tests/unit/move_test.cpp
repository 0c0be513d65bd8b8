// SPDX-License-Identifier: MIT
// plan::moveSlice against makePlan of the changed config, for every slice, server and fleet; and the table delta it implies.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "config/config.h"
#include "nft/model.h"
#include "nft/render.h"
#include "plan/plan.h"
#include "../lab/nat_fleet.h"

using namespace portslice;

namespace {

config::Config loadFile(const std::string &path)
{
	config::LoadResult r = config::loadFile(path);
	for (const config::Diagnostic &d : r.diagnostics)
		if (d.severity == config::Diagnostic::Severity::Error)
			ADD_FAILURE() << d.str();
	return r.ok() ? *r.config : config::Config{};
}

config::Config loadText(const std::string &text)
{
	config::LoadResult r = config::loadString(text, "move.toml");
	for (const config::Diagnostic &d : r.diagnostics)
		if (d.severity == config::Diagnostic::Severity::Error)
			ADD_FAILURE() << d.str();
	return r.ok() ? *r.config : config::Config{};
}

// Several users per address: stateless blocks and weighted conntrack shares
// side by side, sources with two or three candidates, non-adjacent slices.
std::string mixedFleet()
{
	std::string t = R"([server]
name = "s1"
uplink = "eth0"
[defaults]
port_range = "1024-65535"
slice_size = 4096
[[datacenters]]
name = "dc"
[[datacenters]]
name = "far"
)";
	for (int s = 1; s <= 4; s++)
		t += "[[servers]]\nname = \"s" + std::to_string(s) + "\"\naddress = \"192.0.2." + std::to_string(10 + s) +
		     "\"\ndatacenter = \"" + (s == 4 ? "far" : "dc") + "\"\n";
	const char *owners[] = {
		"{ s1 = [0, 1, 5], s2 = [2, 3], s3 = 4 }",
		"{ s1 = 0, s2 = [1, 2, 3, 4, 5, 6], s3 = [7, 8] }",
		"{ s2 = [0, 1], s3 = 2 }",
		"{ s1 = [3, 4], s3 = [0, 1, 2], s4 = 5 }",
	};
	for (int a = 0; a < 4; a++)
		t += "[[addresses]]\naddress = \"198.51.100." + std::to_string(a + 1) + "\"\ndatacenter = \"dc\"\n" +
		     "tags = { kind = \"" + (a < 3 ? "web" : "mail") + "\", n = \"" + std::to_string(a) +
		     "\" }\nslices = " + owners[a] + "\n";
	t += R"([[sources]]
name = "web-a"
match = { saddr = "100.64.1.0/24" }
want = { kind = "web" }
weight = 3
[[sources]]
name = "web-sl"
match = { saddr = "100.64.2.0/29" }
want = { kind = "web" }
nat = "stateless"
block = 256
[[sources]]
name = "web-b"
match = { iifname = "wl-b", saddr = "100.64.3.0/26" }
want = { kind = "web" }
[[sources]]
name = "mail"
match = { mark = 7 }
want = { kind = "mail" }
[[sources]]
name = "mail-sl"
match = { saddr = "100.64.4.0/30" }
want = { kind = "mail" }
nat = "stateless"
block = 1024
[[sources]]
name = "any"
match = { uid = 1000 }
want = {}
weight = 2
)";
	return t;
}

// Stateless blocks that fill a server's share of an address exactly, and a
// conntrack source that gets no port there: it uses its other addresses, or
// is dropped where it has none (warnings, no error). Sources with several
// runs on one address (s1's slices 0 and 2 of .1) spread over addresses
// first, then runs.
std::string fullShareFleet()
{
	std::string t = R"([server]
name = "s1"
uplink = "eth0"
[defaults]
port_range = "1024-9215"
slice_size = 1024
[[datacenters]]
name = "dc"
)";
	for (int s = 1; s <= 3; s++)
		t += "[[servers]]\nname = \"s" + std::to_string(s) + "\"\naddress = \"192.0.2." + std::to_string(10 + s) +
		     "\"\ndatacenter = \"dc\"\n";
	const char *addresses[][2] = {
		{ "web", "{ s1 = [0, 2], s2 = [1, 3], s3 = [4, 5, 6, 7] }" },
		{ "web", "{ s1 = 0, s2 = [1, 2], s3 = 3 }" },
		{ "full", "{ s1 = 0, s2 = 1, s3 = [2, 3] }" },
		{ "full", "{ s2 = 0, s3 = 1 }" },
	};
	for (int a = 0; a < 4; a++)
		t += "[[addresses]]\naddress = \"198.51.100." + std::to_string(a + 1) + "\"\ndatacenter = \"dc\"\n" +
		     "tags = { kind = \"" + addresses[a][0] + "\", n = \"" + std::to_string(a) + "\" }\nslices = " +
		     addresses[a][1] + "\n";
	t += R"([[sources]]
name = "full-sl"
match = { saddr = "100.64.5.0/25" }
want = { kind = "full", n = "2" }
nat = "stateless"
block = 8
[[sources]]
name = "full-ct"
match = { saddr = "100.64.6.0/24" }
want = { kind = "full" }
[[sources]]
name = "web-sl"
match = { saddr = "100.64.2.0/28" }
want = { kind = "web" }
nat = "stateless"
block = 64
[[sources]]
name = "web-a"
match = { saddr = "100.64.1.0/24" }
want = { kind = "web" }
[[sources]]
name = "any"
match = { uid = 1000 }
want = {}
weight = 2
)";
	return t;
}

// The elements of `model` with the sets of `delta` changed from before to after.
std::vector<nft::Set> patched(const nft::TableModel &model, const nft::MoveDelta &delta)
{
	std::vector<nft::Set> out = model.sets;
	for (size_t i = 0; i < delta.after.size(); i++) {
		auto it = std::find_if(out.begin(), out.end(),
				       [&](const nft::Set &s) { return s.name == delta.after[i].name; });
		if (it == out.end()) {
			ADD_FAILURE() << "delta names set " << delta.after[i].name << " that the table lacks";
			continue;
		}
		std::vector<nft::Element> kept;
		for (const nft::Element &e : it->elements) {
			bool gone = std::any_of(delta.before[i].elements.begin(), delta.before[i].elements.end(),
						[&](const nft::Element &b) {
							return nft::formatElement(*it, b) == nft::formatElement(*it, e);
						});
			if (!gone)
				kept.push_back(e);
		}
		EXPECT_EQ(it->elements.size() - kept.size(), delta.before[i].elements.size())
			<< "set " << it->name << ": the delta deletes elements the table does not hold";
		kept.insert(kept.end(), delta.after[i].elements.begin(), delta.after[i].elements.end());
		it->elements = std::move(kept);
	}
	return out;
}

std::vector<std::string> rendered(const nft::Set &s)
{
	std::vector<std::string> out;
	for (const nft::Element &e : s.elements)
		out.push_back(nft::formatElement(s, e));
	std::sort(out.begin(), out.end());
	return out;
}

struct Tally {
	size_t fast = 0, full = 0;
	size_t lastSlice = 0, firstSlice = 0; // of those done incrementally: the candidates changed
};

// Whether a conntrack source of `p` gets no port of one of its candidates.
bool starved(const plan::Plan &p)
{
	for (const plan::PlannedSource &s : p.sources)
		if (s.mode == config::NatMode::Conntrack)
			for (uint32_t ai : s.candidates)
				if (std::none_of(s.shares.begin(), s.shares.end(),
						 [ai](const plan::Share &x) { return x.address == ai; }))
					return true;
	return false;
}

// Why a full plan is still needed: the move is an error, a conntrack source
// matched by iifname gets its first address or loses its last (its return
// route changes), or a conntrack source gets no port of an address (its
// warnings change; only where the plan before or after has such a source).
bool needsFullPlan(const plan::Plan &before, const plan::PlanResult &after)
{
	if (!after.ok())
		return true;
	if (starved(before) || starved(*after.plan))
		return true;
	for (size_t si = 0; si < before.sources.size(); si++) {
		const plan::PlannedSource &s = before.sources[si];
		if (s.mode == config::NatMode::Conntrack && s.match.iifname &&
		    s.dropped() != after.plan->sources[si].dropped())
			return true;
	}
	return false;
}

// The plan after `move` against makePlan of the changed config (`full`), and
// the move's table delta against the tables of both.
void expectSameAsFullPlan(const plan::Plan &p, const plan::SliceMove &move, const plan::Plan &full,
			  const nft::TableModel &originalModel)
{
	EXPECT_EQ(plan::toJson(p), plan::toJson(full));
	for (size_t si = 0; si < p.sources.size(); si++) {
		EXPECT_EQ(p.sources[si].shares, full.sources[si].shares) << p.sources[si].name;
		EXPECT_EQ(p.sources[si].candidates, full.sources[si].candidates) << p.sources[si].name;
	}
	ASSERT_EQ(p.warnings.size(), full.warnings.size());
	for (size_t i = 0; i < p.warnings.size(); i++)
		EXPECT_EQ(p.warnings[i].str(), full.warnings[i].str());
	// What a move reads instead of walking every source stays what makePlan makes.
	EXPECT_EQ(p.wanters, full.wanters);
	EXPECT_EQ(p.shape, full.shape);

	// The delta turns the old table into the new one.
	nft::MoveDelta delta = nft::moveDelta(p, move);
	ASSERT_EQ(delta.before.size(), delta.after.size());
	std::vector<nft::Set> sets = patched(originalModel, delta);
	nft::TableModel expected = nft::buildModel(full, 1);
	ASSERT_EQ(sets.size(), expected.sets.size());
	for (size_t i = 0; i < sets.size(); i++)
		EXPECT_EQ(rendered(sets[i]), rendered(expected.sets[i])) << "set " << sets[i].name;
}

// Every slice of every address (of the first `addresses`) to every server, planned as `server`.
void checkEveryMove(const config::Config &config, const std::string &server, Tally &tally,
		    uint32_t addresses = UINT32_MAX)
{
	plan::PlanResult first = plan::makePlan(config, server);
	ASSERT_TRUE(first.ok()) << server;
	const plan::Plan original = *first.plan;
	const std::string originalJson = plan::toJson(original);
	const nft::TableModel originalModel = nft::buildModel(original, 1);
	for (uint32_t ai = 0; ai < original.addresses.size() && ai < addresses; ai++) {
		for (uint32_t slice = 0; slice < original.addresses[ai].sliceCount; slice++) {
			for (uint32_t to = 0; to < original.servers.size(); to++) {
				SCOPED_TRACE(server + ": slice " + std::to_string(slice) + " of " +
					     original.addresses[ai].address.str() + " to " + original.servers[to].name);
				config::Config changed = config;
				changed.addresses[ai].owners[slice] = original.servers[to].name;
				plan::PlanResult full = plan::makePlan(changed, server);

				plan::Plan p = original;
				std::optional<plan::SliceMove> move =
					plan::moveSlice(p, ai, slice, static_cast<int32_t>(to));
				if (!move) {
					tally.full++;
					EXPECT_EQ(plan::toJson(p), originalJson) << "a refused move changed the plan";
					EXPECT_TRUE(needsFullPlan(original, full)) << "a move refused for no reason";
					continue;
				}
				tally.fast++;
				ASSERT_TRUE(full.ok()) << "moveSlice accepted a move that makePlan rejects";
				if (move->candidatesChanged)
					(p.addresses[ai].mySlices.empty() ? tally.lastSlice : tally.firstSlice)++;
				expectSameAsFullPlan(p, *move, *full.plan, originalModel);
				plan::undoMove(p, std::move(*move));
				EXPECT_EQ(plan::toJson(p), originalJson) << "undoMove did not restore the plan";
			}
		}
	}
}

} // namespace

TEST(MoveSlice, EqualsAFullPlanForEverySliceServerAndExampleFleet)
{
	Tally tally;
	for (const auto &entry : std::filesystem::directory_iterator(RULES_DIR)) {
		if (entry.path().extension() != ".toml")
			continue;
		SCOPED_TRACE(entry.path().filename().string());
		config::Config config = loadFile(entry.path());
		for (const config::Server &s : config.servers)
			checkEveryMove(config, s.name, tally);
	}
	// A server's last slice of an address leaving is planned incrementally
	// too (a first slice arriving needs a server without one: see the
	// moves in a row below).
	EXPECT_GT(tally.lastSlice, 0u);
	std::printf("moves planned incrementally: %zu (last slice of an address %zu, first slice %zu), by a full "
		    "plan: %zu\n", tally.fast, tally.lastSlice, tally.firstSlice, tally.full);
}

TEST(MoveSlice, EqualsAFullPlanWithSharedAddressesAndWeights)
{
	Tally tally;
	config::Config config = loadText(mixedFleet());
	for (const config::Server &s : config.servers)
		checkEveryMove(config, s.name, tally);
	EXPECT_GT(tally.lastSlice, 0u);
	EXPECT_GT(tally.firstSlice, 0u);
	std::printf("moves planned incrementally: %zu (last slice of an address %zu, first slice %zu), by a full "
		    "plan: %zu\n", tally.fast, tally.lastSlice, tally.firstSlice, tally.full);
}

// docs/performance.md's generated fleet (every server one slice of every address,
// every source one candidate): every slice of two addresses to every
// server, planned as the first server and the last.
TEST(MoveSlice, EqualsAFullPlanWithAConntrackSourceLeftWithoutPorts)
{
	Tally tally;
	config::Config config = loadText(fullShareFleet());
	plan::PlanResult s1 = plan::makePlan(config, "s1");
	ASSERT_TRUE(s1.ok());
	ASSERT_EQ(s1.plan->warnings.size(), 3u); // full-ct: none of .3, dropped; any: none of .3
	EXPECT_TRUE(s1.plan->sources[1].dropped());
	for (const config::Server &s : config.servers)
		checkEveryMove(config, s.name, tally);
	EXPECT_GT(tally.fast, 0u);
	EXPECT_GT(tally.full, 0u);
	EXPECT_GT(tally.firstSlice, 0u);
	std::printf("moves planned incrementally: %zu (last slice of an address %zu, first slice %zu), by a full "
		    "plan: %zu\n", tally.fast, tally.lastSlice, tally.firstSlice, tally.full);
}

TEST(MoveSlice, EqualsAFullPlanInTheGeneratedFleet)
{
	Tally tally;
	config::Config config = loadText(portslice::testing::generatedFleet(2));
	for (const char *server : {"s1", "s31"})
		checkEveryMove(config, server, tally);
	// Per server and address one move takes its only slice away (to each of
	// 30 others) and none gives a first one: every server holds one already.
	EXPECT_EQ(tally.lastSlice, 2u * 2u * 30u);
	EXPECT_EQ(tally.full, 0u);
	std::printf("moves planned incrementally: %zu (last slice of an address %zu), by a full plan: %zu\n",
		    tally.fast, tally.lastSlice, tally.full);
}

// Every slice move of s1 and of s31 of a generated fleet against the full
// plan: all of them incremental.
void expectEveryMoveIncremental(const config::Config &config)
{
	Tally tally;
	for (const char *server : {"s1", "s31"})
		checkEveryMove(config, server, tally, 3);
	EXPECT_EQ(tally.lastSlice, 2u * 3u * 30u);
	EXPECT_EQ(tally.full, 0u);
}

// s1 loses slice 0 of address 5 of a generated fleet, its only slice there.
nft::MoveDelta lossOfAddress5(const plan::Plan &p)
{
	plan::Plan moved = p;
	std::optional<plan::SliceMove> move = plan::moveSlice(moved, 5, 0, 1);
	EXPECT_TRUE(move);
	return move ? nft::moveDelta(moved, *move) : nft::MoveDelta{};
}

// A generated fleet large enough for the stateless maps to come in shards
// (40 sources of a /28: 640 blocks, 4 shards of sl_egress, sl_return and
// my_ports, nft/model.h; blocks of 100 ports, which no unit form fits): a
// source's blocks leave and come back in its shards only, the slice in its
// address's shard of my_ports, and the delta still turns the old table into
// the full plan's.
TEST(MoveSlice, EqualsAFullPlanWithTheStatelessMapsInShards)
{
	config::Config config = loadText(portslice::testing::generatedFleet(40, 100));
	const plan::Plan p = *plan::makePlan(config, "s1").plan;
	ASSERT_EQ(nft::portForm(p).shards, 4u);
	ASSERT_EQ(nft::portForm(p).unit, 0u);
	const nft::TableModel model = nft::buildModel(p, 1);
	ASSERT_NE(model.find("sl_egress_3"), nullptr);
	ASSERT_NE(model.find("sl_return_3"), nullptr);
	ASSERT_NE(model.find("my_ports_3"), nullptr);
	ASSERT_EQ(model.find("sl_egress"), nullptr);
	ASSERT_EQ(model.find("my_ports"), nullptr);
	expectEveryMoveIncremental(config);
	// A loss touches the moved address's users' shards and nothing else.
	std::vector<std::string> names;
	for (const nft::Set &s : lossOfAddress5(p).after)
		names.push_back(s.name);
	EXPECT_EQ(names, (std::vector<std::string>{ "my_blocks", "sl_egress_1", "sl_return_1", "my_ports_1" }));
}

// The same fleet with blocks of 128 ports: every block and slice is made of
// aligned units of 128 ports, so the large fleet takes the unit form
// (nft/model.h): sl_egress_K and sl_return_K are hash maps keyed on a
// unit's first port, in 16 parts by address bits; my_ports is empty and
// has no shard. Every move still equals the full plan, and a loss deletes
// the source's 16 blocks from one part of each map.
TEST(MoveSlice, EqualsAFullPlanWithTheStatelessMapsInTheUnitForm)
{
	config::Config config = loadText(portslice::testing::generatedFleet(40));
	const plan::Plan p = *plan::makePlan(config, "s1").plan;
	ASSERT_EQ(nft::portForm(p).shards, nft::kUnitParts);
	ASSERT_EQ(nft::portForm(p).unit, 128u);
	const nft::TableModel model = nft::buildModel(p, 1);
	// Source i (100.64.0.0 + 16 i /28) is in part i mod 16, its address's
	// answers too (198.18.0.i).
	size_t blocks = 0;
	for (uint32_t k = 0; k < nft::kUnitParts; k++) {
		const nft::Set *egress = model.find("sl_egress_" + std::to_string(k));
		ASSERT_NE(egress, nullptr);
		EXPECT_FALSE(egress->interval);
		EXPECT_EQ(egress->elements.size(), (k < 8 ? 3u : 2u) * 16u) << egress->name;
		blocks += egress->elements.size();
	}
	EXPECT_EQ(blocks, 640u) << "one element per inside address: 40 sources of 16";
	const nft::Set *pick = model.find("sl_egress_shard");
	ASSERT_NE(pick, nullptr);
	EXPECT_EQ(pick->elements.size(), nft::kUnitParts);
	ASSERT_NE(model.find("my_ports"), nullptr);
	EXPECT_TRUE(model.find("my_ports")->elements.empty());
	EXPECT_EQ(model.find("my_ports_0"), nullptr);
	EXPECT_EQ(model.find("my_ports_shard"), nullptr);
	expectEveryMoveIncremental(config);
	nft::MoveDelta delta = lossOfAddress5(p);
	std::vector<std::string> names;
	for (const nft::Set &s : delta.after)
		names.push_back(s.name);
	ASSERT_EQ(names, (std::vector<std::string>{ "my_blocks", "sl_egress_5", "sl_return_5" }));
	// The source of address 5 loses its 16 blocks, in both maps.
	EXPECT_EQ(delta.before[1].elements.size(), 16u);
	EXPECT_TRUE(delta.after[1].elements.empty());
	EXPECT_EQ(delta.before[2].elements.size(), 16u);
	EXPECT_TRUE(delta.after[2].elements.empty());
}

// Moves one after another on the same plan (a slice lost, then another,
// then given back: the first-slice case of a server that had none), each
// against makePlan of the config as it is by then.
void walk(config::Config config, const std::string &server, uint32_t steps, uint32_t seed, Tally &tally)
{
	std::mt19937 random(seed);
	plan::Plan p = *plan::makePlan(config, server).plan;
	for (uint32_t step = 0; step < steps; step++) {
		auto ai = static_cast<uint32_t>(random() % p.addresses.size());
		auto slice = static_cast<uint32_t>(random() % p.addresses[ai].sliceCount);
		// Half the moves go to or from the planned server.
		uint32_t to = random() % 2 ? p.serverIndex : static_cast<uint32_t>(random() % p.servers.size());
		if (random() % 4 == 0 && !p.addresses[ai].mySlices.empty()) {
			slice = p.addresses[ai].mySlices[random() % p.addresses[ai].mySlices.size()];
			to = static_cast<uint32_t>(random() % p.servers.size());
		}
		SCOPED_TRACE(server + " step " + std::to_string(step) + ": slice " + std::to_string(slice) + " of " +
			     p.addresses[ai].address.str() + " to " + p.servers[to].name);
		config::Config changed = config;
		changed.addresses[ai].owners[slice] = p.servers[to].name;
		plan::PlanResult full = plan::makePlan(changed, server);
		const plan::Plan before = p;
		const nft::TableModel model = nft::buildModel(before, 1);
		std::optional<plan::SliceMove> move = plan::moveSlice(p, ai, slice, static_cast<int32_t>(to));
		if (!move) {
			tally.full++;
			EXPECT_TRUE(needsFullPlan(before, full));
			if (!full.ok())
				continue; // refused: the config stays as it was
			p = *full.plan;
		} else {
			tally.fast++;
			ASSERT_TRUE(full.ok());
			if (move->candidatesChanged)
				(p.addresses[ai].mySlices.empty() ? tally.lastSlice : tally.firstSlice)++;
			expectSameAsFullPlan(p, *move, *full.plan, model);
			if (::testing::Test::HasFailure())
				return;
		}
		config = std::move(changed);
	}
}

TEST(MoveSlice, EqualsAFullPlanAfterManyMovesInARow)
{
	Tally tally;
	for (const auto &entry : std::filesystem::directory_iterator(RULES_DIR)) {
		if (entry.path().extension() != ".toml")
			continue;
		SCOPED_TRACE(entry.path().filename().string());
		config::Config config = loadFile(entry.path());
		for (const config::Server &s : config.servers)
			walk(config, s.name, 150, 7, tally);
	}
	config::Config mixed = loadText(mixedFleet());
	for (const config::Server &s : mixed.servers)
		walk(mixed, s.name, 300, 11, tally);
	config::Config full = loadText(fullShareFleet());
	for (const config::Server &s : full.servers)
		walk(full, s.name, 300, 17, tally);
	walk(loadText(portslice::testing::generatedFleet(4)), "s1", 300, 13, tally);
	EXPECT_GT(tally.lastSlice, 0u);
	EXPECT_GT(tally.firstSlice, 0u);
	std::printf("moves in a row planned incrementally: %zu (last slice of an address %zu, first slice %zu), by a "
		    "full plan: %zu\n", tally.fast, tally.lastSlice, tally.firstSlice, tally.full);
}

// SetSliceOwners: a batch of moves made one after another, then one delta of
// them all (nft::movesDelta), turns the old table into makePlan's of the
// changed file.
TEST(MoveSlice, ABatchOfMovesIsOneDeltaEqualToAFullPlan)
{
	std::mt19937 random(29);
	size_t batches = 0;
	auto check = [&](const config::Config &config, const std::string &server) {
		plan::PlanResult first = plan::makePlan(config, server);
		ASSERT_TRUE(first.ok());
		const nft::TableModel originalModel = nft::buildModel(*first.plan, 1);
		for (int round = 0; round < 20; round++) {
			plan::Plan p = *first.plan;
			config::Config changed = config;
			std::vector<plan::SliceMove> moves;
			std::set<std::pair<uint32_t, uint32_t>> taken;
			bool incremental = true;
			size_t want = 2 + random() % 6;
			for (size_t k = 0; k < want && incremental; k++) {
				uint32_t ai = static_cast<uint32_t>(random() % p.addresses.size());
				uint32_t slice = static_cast<uint32_t>(random() % p.addresses[ai].sliceCount);
				uint32_t to = static_cast<uint32_t>(random() % p.servers.size());
				if (!taken.insert({ai, slice}).second)
					continue;
				std::optional<plan::SliceMove> move = plan::moveSlice(p, ai, slice, static_cast<int32_t>(to));
				if (!move) {
					incremental = false;
					break;
				}
				changed.addresses[ai].owners[slice] = p.servers[to].name;
				moves.push_back(std::move(*move));
			}
			if (!incremental || moves.size() < 2)
				continue;
			plan::PlanResult full = plan::makePlan(changed, server);
			ASSERT_TRUE(full.ok());
			EXPECT_EQ(plan::toJson(p), plan::toJson(*full.plan));
			std::vector<nft::Set> sets = patched(originalModel, nft::movesDelta(p, moves));
			nft::TableModel expected = nft::buildModel(*full.plan, 1);
			ASSERT_EQ(sets.size(), expected.sets.size());
			for (size_t i = 0; i < sets.size(); i++)
				EXPECT_EQ(rendered(sets[i]), rendered(expected.sets[i])) << "set " << sets[i].name;
			batches++;
		}
	};
	for (const auto &entry : std::filesystem::directory_iterator(RULES_DIR)) {
		if (entry.path().extension() != ".toml")
			continue;
		SCOPED_TRACE(entry.path().filename().string());
		config::Config config = loadFile(entry.path());
		for (const config::Server &s : config.servers)
			check(config, s.name);
	}
	config::Config mixed = loadText(mixedFleet());
	for (const config::Server &s : mixed.servers)
		check(mixed, s.name);
	EXPECT_GT(batches, 20u);
	std::printf("batches of moves checked: %zu\n", batches);
}

TEST(MoveSlice, ReplansOnlyTheUsersOfAnAddressThatComesOrGoes)
{
	config::Config config = loadText(mixedFleet());
	plan::Plan p = *plan::makePlan(config, "s1").plan;
	// s1's only slice of 198.51.100.2 goes: the address stops being a
	// candidate of the web sources (web-a, web-sl, web-b, any), and the
	// stateless web-sl spreads its inside addresses over what is left.
	ASSERT_EQ(p.addresses[1].mySlices, std::vector<uint32_t>{0});
	const plan::Plan original = p;
	std::optional<plan::SliceMove> move = plan::moveSlice(p, 1, 0, 1);
	ASSERT_TRUE(move);
	EXPECT_TRUE(move->candidatesChanged);
	std::vector<std::string> replanned;
	for (const plan::SliceMove::Source &s : move->sources)
		replanned.push_back(p.sources[s.index].name + (s.candidates ? "*" : ""));
	std::sort(replanned.begin(), replanned.end());
	// "*": its candidates changed; mail and mail-sl are untouched (any uses
	// the mail address too, but a conntrack source's shares elsewhere stay).
	EXPECT_EQ(replanned, (std::vector<std::string>{"any*", "web-a*", "web-b*", "web-sl*"}));
	for (const plan::PlannedSource &s : p.sources)
		EXPECT_EQ(std::count(s.candidates.begin(), s.candidates.end(), 1u), 0) << s.name;
	// And back: the same plan as before, found the same way.
	std::optional<plan::SliceMove> back = plan::moveSlice(p, 1, 0, 0);
	ASSERT_TRUE(back);
	EXPECT_TRUE(back->candidatesChanged);
	EXPECT_EQ(plan::toJson(p), plan::toJson(original));
	plan::undoMove(p, std::move(*back));
	plan::undoMove(p, std::move(*move));
	EXPECT_EQ(plan::toJson(p), plan::toJson(original));

	// A bystander's move changes nothing but the owner.
	move = plan::moveSlice(p, 1, 7, 1);
	ASSERT_TRUE(move);
	EXPECT_TRUE(move->sources.empty());
	EXPECT_FALSE(move->candidatesChanged);
	EXPECT_EQ(p.addresses[1].owner[7], 1);
	nft::MoveDelta delta = nft::moveDelta(p, *move);
	for (size_t i = 0; i < delta.after.size(); i++)
		EXPECT_EQ(rendered(delta.before[i]), rendered(delta.after[i])) << delta.after[i].name;
}
