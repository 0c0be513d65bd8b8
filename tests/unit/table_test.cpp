// SPDX-License-Identifier: MIT
// The table's per-packet lookups: the guard's hash fast path agrees with my_ports, and zones of saddr sources are found by prefix length.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <tuple>

#include "config/config.h"
#include "nft/model.h"
#include "nft/render.h"
#include "plan/plan.h"

#include "../lab/nat_fleet.h"

using namespace portslice;
namespace fs = std::filesystem;

namespace {

plan::Plan planOf(const config::LoadResult &loaded, const std::string &server = {})
{
	for (const config::Diagnostic &d : loaded.diagnostics)
		if (d.severity == config::Diagnostic::Severity::Error)
			ADD_FAILURE() << d.str();
	if (!loaded.ok())
		return {};
	auto planned = plan::makePlan(*loaded.config, server.empty() ? loaded.config->serverName : server);
	EXPECT_TRUE(planned.ok());
	return planned.ok() ? *planned.plan : plan::Plan{};
}

// Slices that do not start on a multiple of 1024 (10000 + 1000 i), next to the defaults (1024 + 2048 i).
const char *kOddSlices = R"(
[server]
name = "s1"
uplink = "eth0"

[[datacenters]]
name = "dc1"

[[servers]]
name = "s1"
address = "192.0.2.11"
datacenter = "dc1"

[[servers]]
name = "s2"
address = "192.0.2.12"
datacenter = "dc1"

[[addresses]]
address = "198.51.100.1"
datacenter = "dc1"
tags = { id = "a" }
slices = { s1 = [0, 1, 3], s2 = 2 }

[[addresses]]
address = "198.51.100.2"
datacenter = "dc1"
tags = { id = "b" }
port_range = "10000-19999"
slice_size = 1000
slices = { s1 = [0, 3, 4, 9], s2 = 1 }

[[sources]]
name = "wide"
match = { saddr = "100.64.0.0/16" }
want = { id = "a" }

[[sources]]
name = "narrow"
match = { saddr = "100.64.1.0/24" }
want = { id = "b" }

[[sources]]
name = "host"
match = { saddr = "100.64.2.7" }
want = { id = "b" }
)";

std::vector<std::pair<uint32_t, uint32_t>> keys(const nft::Set &set) // address, first port
{
	std::vector<std::pair<uint32_t, uint32_t>> out;
	for (const nft::Element &e : set.elements)
		out.emplace_back(e.key[0].lo, e.key[1].lo);
	return out;
}

// Every port of every address: in a my_blocks block (the rule's `th sport &
// 64512`) only if my_ports has it (never a leak), and every aligned block
// wholly inside one of my_ports' slices is in my_blocks.
void expectBlocksAgreeWithPorts(const nft::TableModel &m, const std::string &what)
{
	const nft::Set *ports = m.find("my_ports");
	const nft::Set *blocks = m.find("my_blocks");
	ASSERT_NE(ports, nullptr);
	ASSERT_NE(blocks, nullptr);
	EXPECT_FALSE(blocks->interval);
	std::set<std::pair<uint32_t, uint32_t>> mine; // address, port
	std::set<uint32_t> addresses;
	for (const nft::Element &e : ports->elements) {
		addresses.insert(e.key[0].lo);
		for (uint32_t p = e.key[1].lo; p <= e.key[1].hi; p++)
			mine.insert({ e.key[0].lo, p });
	}
	std::vector<std::pair<uint32_t, uint32_t>> listed = keys(*blocks);
	std::set<std::pair<uint32_t, uint32_t>> inBlocks(listed.begin(), listed.end());
	for (auto [address, first] : inBlocks)
		EXPECT_EQ(first & nft::kPortBlockMask, first) << what << ": " << first;
	for (uint32_t address : addresses)
		for (uint32_t first = 0; first <= 0xffff; first += nft::kPortBlock) {
			bool fast = inBlocks.count({ address, first }) > 0;
			bool whole = true;
			for (uint32_t p = first; p < first + nft::kPortBlock; p++)
				whole = whole && mine.count({ address, p }) > 0;
			EXPECT_TRUE(whole || !fast) << what << ": block " << first << " passes the fast path but holds ports of other servers";
			bool insideOneSlice = false;
			for (const nft::Element &e : ports->elements)
				insideOneSlice = insideOneSlice || (e.key[0].lo == address && e.key[1].lo <= first &&
								   first + nft::kPortBlock - 1 <= e.key[1].hi);
			EXPECT_EQ(fast, insideOneSlice) << what << ": block " << first;
		}
}

TEST(Table, TheGuardsHashFastPathPassesOnlyPortsOfThisServersSlices)
{
	for (const auto &entry : fs::directory_iterator(RULES_DIR)) {
		if (entry.path().extension() != ".toml")
			continue;
		config::LoadResult loaded = config::loadFile(entry.path());
		ASSERT_TRUE(loaded.ok()) << entry.path();
		for (const config::Server &server : loaded.config->servers) {
			auto planned = plan::makePlan(*loaded.config, server.name);
			if (!planned.ok())
				continue;
			expectBlocksAgreeWithPorts(nft::buildModel(*planned.plan, 1), entry.path().string() + " " + server.name);
		}
	}
	nft::TableModel odd = nft::buildModel(planOf(config::loadString(kOddSlices, "odd.toml")), 1);
	expectBlocksAgreeWithPorts(odd, "odd slices");
	// 198.51.100.1: slices 0, 1, 3 are 1024-3071, 3072-5119, 7168-9215: two blocks each.
	// 198.51.100.2: none of 10000-10999, 13000-13999, 14000-14999, 19000-19999 holds a
	// whole aligned block (13312-14335 spans two slices): all its ports take my_ports.
	std::vector<std::pair<uint32_t, uint32_t>> expected;
	uint32_t a1 = Ipv4::parse("198.51.100.1")->value;
	for (uint32_t p : { 1024u, 2048u, 3072u, 4096u, 7168u, 8192u })
		expected.emplace_back(a1, p);
	EXPECT_EQ(keys(*odd.find("my_blocks")), expected);
}

TEST(Table, ConntrackSaddrSourcesGetOneExactMapPerPrefixLengthLongestLast)
{
	nft::TableModel m = nft::buildModel(planOf(config::loadString(kOddSlices, "odd.toml")), 1);
	EXPECT_EQ(m.zoneSaddrLengths, (std::vector<uint8_t>{ 16, 24, 32 }));
	for (const char *name : { "zone_saddr_16", "zone_saddr_24", "zone_saddr_32" }) {
		const nft::Set *s = m.find(name);
		ASSERT_NE(s, nullptr) << name;
		EXPECT_FALSE(s->interval) << name;
		ASSERT_EQ(s->elements.size(), 1u) << name;
		EXPECT_EQ(s->elements[0].key[0].lo, s->elements[0].key[0].hi) << name << ": an exact key, the network address";
	}
	EXPECT_EQ(m.find("zone_saddr_16")->elements[0].key[0].lo, Ipv4::parse("100.64.0.0")->value);
	EXPECT_EQ(m.find("zone_saddr"), nullptr);

	std::vector<std::string> prerouting;
	for (const nft::Chain &c : m.chains)
		if (c.name == "prerouting")
			for (const nft::Rule &r : c.rules)
				prerouting.push_back(nft::formatRule(r));
	std::vector<std::string> zoneRules;
	for (const std::string &r : prerouting)
		if (r.rfind("ct zone set ", 0) == 0)
			zoneRules.push_back(r);
	EXPECT_EQ(zoneRules, (std::vector<std::string>{
				     "ct zone set ip saddr & 255.255.0.0 map @zone_saddr_16",
				     "ct zone set ip saddr & 255.255.255.0 map @zone_saddr_24",
				     "ct zone set ip saddr map @zone_saddr_32",
			     }));
}

} // namespace

namespace {

bool sameFields(const std::vector<nft::Field> &a, const std::vector<nft::Field> &b)
{
	auto tie = [](const nft::Field &f) { return std::tie(f.type, f.lo, f.hi, f.name); };
	return std::equal(a.begin(), a.end(), b.begin(), b.end(),
			  [&](const nft::Field &x, const nft::Field &y) { return tie(x) == tie(y); });
}

bool sameElements(const std::vector<nft::Element> &a, const std::vector<nft::Element> &b)
{
	return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](const nft::Element &x, const nft::Element &y) {
		return sameFields(x.key, y.key) && sameFields(x.data, y.data) && x.counter == y.counter &&
		       x.chain == y.chain && x.gotoChain == y.gotoChain;
	});
}

// Every set buildModel(..., false) leaves empty is what PortSetSource builds,
// element for element, as buildModel(..., true) holds it (sorted); every
// other set is the same in both.
void expectPlanBuiltSetsEqualTheModel(const plan::Plan &plan)
{
	nft::TableModel whole = nft::buildModel(plan, 7, true);
	nft::TableModel light = nft::buildModel(plan, 7, false);
	ASSERT_EQ(whole.sets.size(), light.sets.size());
	nft::PortSetSource source(plan);
	size_t built = 0;
	for (size_t i = 0; i < whole.sets.size(); i++) {
		const nft::Set &w = whole.sets[i], &l = light.sets[i];
		SCOPED_TRACE(w.name);
		ASSERT_EQ(w.name, l.name);
		if (!l.elements.empty() || !nft::isPortSet(l.name)) {
			EXPECT_TRUE(sameElements(w.elements, l.elements));
			continue;
		}
		built++;
		EXPECT_TRUE(sameElements(source.elements(l.name), w.elements));
		// In pieces (of about 7: whole addresses or sources each), as many.
		size_t pieces = 0;
		source.chunks(l.name, 7, [&](const std::vector<nft::Element> &some) { pieces += some.size(); });
		EXPECT_EQ(pieces, w.elements.size());
	}
	EXPECT_GT(built, 0u);
}

} // namespace

TEST(Table, TheSetsBuiltFromThePlanEqualTheWholeModelForEveryExample)
{
	size_t configs = 0;
	for (const auto &e : fs::directory_iterator(RULES_DIR)) {
		if (e.path().extension() != ".toml")
			continue;
		SCOPED_TRACE(e.path().string());
		config::LoadResult loaded = config::loadFile(e.path().string());
		if (!loaded.ok())
			continue; // the examples of bad files
		for (const config::Server &server : loaded.config->servers) {
			auto planned = plan::makePlan(*loaded.config, server.name);
			if (!planned.ok())
				continue;
			SCOPED_TRACE(server.name);
			expectPlanBuiltSetsEqualTheModel(*planned.plan);
		}
		configs++;
	}
	EXPECT_GT(configs, 3u);
}

TEST(Table, TheSetsBuiltFromThePlanEqualTheWholeModelInAGeneratedFleet)
{
	// 300 sources: the stateless maps in their unit form, with shards.
	config::LoadResult loaded = config::loadString(portslice::testing::generatedFleet(300), "fleet.toml");
	expectPlanBuiltSetsEqualTheModel(planOf(loaded));
	expectPlanBuiltSetsEqualTheModel(planOf(loaded, "s7"));
}
