// SPDX-License-Identifier: MIT
// plan::moveSlice against makePlan of the changed config, for every slice, server and fleet; and the table delta it implies.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "config/config.h"
#include "nft/model.h"
#include "nft/render.h"
#include "plan/plan.h"

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
};

// Every slice of every address to every server, planned as `server`.
void checkEveryMove(const config::Config &config, const std::string &server, Tally &tally)
{
	plan::PlanResult first = plan::makePlan(config, server);
	ASSERT_TRUE(first.ok()) << server;
	const plan::Plan original = *first.plan;
	const std::string originalJson = plan::toJson(original);
	const nft::TableModel originalModel = nft::buildModel(original, 1);
	for (uint32_t ai = 0; ai < original.addresses.size(); ai++) {
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
					continue;
				}
				tally.fast++;
				ASSERT_TRUE(full.ok()) << "moveSlice accepted a move that makePlan rejects";
				EXPECT_EQ(plan::toJson(p), plan::toJson(*full.plan));
				for (size_t si = 0; si < p.sources.size(); si++)
					EXPECT_EQ(p.sources[si].shares, full.plan->sources[si].shares) << p.sources[si].name;

				// The delta turns the old table into the new one.
				nft::MoveDelta delta = nft::moveDelta(p, *move);
				ASSERT_EQ(delta.before.size(), delta.after.size());
				std::vector<nft::Set> sets = patched(originalModel, delta);
				nft::TableModel expected = nft::buildModel(*full.plan, 1);
				ASSERT_EQ(sets.size(), expected.sets.size());
				for (size_t i = 0; i < sets.size(); i++)
					EXPECT_EQ(rendered(sets[i]), rendered(expected.sets[i])) << "set " << sets[i].name;

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
	// Most moves do not change any source's candidates.
	EXPECT_GT(tally.fast, tally.full);
	std::printf("moves planned incrementally: %zu, by a full plan: %zu\n", tally.fast, tally.full);
}

TEST(MoveSlice, EqualsAFullPlanWithSharedAddressesAndWeights)
{
	Tally tally;
	config::Config config = loadText(mixedFleet());
	for (const config::Server &s : config.servers)
		checkEveryMove(config, s.name, tally);
	EXPECT_GT(tally.fast, tally.full);
	std::printf("moves planned incrementally: %zu, by a full plan: %zu\n", tally.fast, tally.full);
}

TEST(MoveSlice, RefusesAMoveThatChangesCandidates)
{
	config::Config config = loadText(mixedFleet());
	plan::Plan p = *plan::makePlan(config, "s1").plan;
	// s1's only slice of 198.51.100.2 goes: the address stops being a candidate.
	ASSERT_EQ(p.addresses[1].mySlices, std::vector<uint32_t>{0});
	const std::string before = plan::toJson(p);
	EXPECT_FALSE(plan::moveSlice(p, 1, 0, 1));
	EXPECT_EQ(plan::toJson(p), before);
	// A bystander's move changes nothing but the owner.
	std::optional<plan::SliceMove> move = plan::moveSlice(p, 1, 7, 1);
	ASSERT_TRUE(move);
	EXPECT_TRUE(move->sources.empty());
	EXPECT_EQ(p.addresses[1].owner[7], 1);
	nft::MoveDelta delta = nft::moveDelta(p, *move);
	for (size_t i = 0; i < delta.after.size(); i++)
		EXPECT_EQ(rendered(delta.before[i]), rendered(delta.after[i])) << delta.after[i].name;
}
