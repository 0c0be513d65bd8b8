// SPDX-License-Identifier: MIT
// The planner: slice arithmetic at the edges, disjoint blocks and shares, owner() as the plan's inverse, determinism.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "config/config.h"
#include "nft/model.h"
#include "nft/render.h"
#include "plan/plan.h"

using namespace portslice;

namespace {

config::Config load(const std::string &text)
{
	auto r = config::loadString(text, "t.toml");
	if (!r.ok()) {
		for (const auto &d : r.diagnostics)
			ADD_FAILURE() << d.str();
		return {};
	}
	return *r.config;
}

plan::Plan makePlan(const config::Config &c, const std::string &server = {})
{
	auto r = plan::makePlan(c, server);
	for (const auto &d : r.diagnostics)
		if (d.severity == config::Diagnostic::Severity::Error)
			ADD_FAILURE() << d.str();
	return r.ok() ? *r.plan : plan::Plan{};
}

std::string fleet(const std::string &addresses, const std::string &sources)
{
	return R"([server]
name = "s1"
uplink = "eth0"
[[datacenters]]
name = "dc"
[[servers]]
name = "s1"
address = "192.0.2.11"
datacenter = "dc"
[[servers]]
name = "s2"
address = "192.0.2.12"
datacenter = "dc"
[[servers]]
name = "s3"
address = "192.0.2.13"
datacenter = "dc"
)" + addresses + sources;
}

TEST(Plan, AnUnknownServerToPlanAsNamesTheServersThereAre)
{
	config::Config c = load(fleet("", ""));
	auto r = plan::makePlan(c, "s9");
	ASSERT_FALSE(r.ok());
	ASSERT_EQ(r.diagnostics.size(), 1u);
	// Not at a line of the file: the name came from the command line.
	EXPECT_EQ(r.diagnostics[0].str(), "t.toml: error: --server 's9' is not one of [[servers]] (known: s1, s2, s3)");
}

TEST(Plan, NumbersSlicesFromTheLowPortAndLeavesThePartialLastSliceUnused)
{
	// 1024-65535 is 64512 ports: 31 slices of 2048 and 1024 unused ports.
	auto c = load(fleet("[[addresses]]\naddress = \"198.51.100.1\"\ndatacenter = \"dc\"\ntags = {}\n"
			    "slices = { s1 = 0, s2 = 30 }\n", ""));
	auto p = makePlan(c);
	const auto &a = p.addresses.at(0);
	EXPECT_EQ(a.sliceCount, 31u);
	EXPECT_EQ(a.slice(0).lo, 1024);
	EXPECT_EQ(a.slice(0).hi, 3071);
	EXPECT_EQ(a.slice(30).lo, 1024 + 30 * 2048);
	EXPECT_EQ(a.slice(30).hi, 64511);
	EXPECT_EQ(a.sliceOf(1024), 0u);
	EXPECT_EQ(a.sliceOf(3071), 0u);
	EXPECT_EQ(a.sliceOf(3072), 1u);
	EXPECT_EQ(a.sliceOf(64511), 30u);
	EXPECT_FALSE(a.sliceOf(64512)); // the unused partial slice
	EXPECT_FALSE(a.sliceOf(1023));
	EXPECT_EQ(a.owner[30], 1);
	ASSERT_EQ(a.myRuns.size(), 1u);
	EXPECT_EQ(a.myRuns[0].lo, 1024);
	EXPECT_EQ(a.myRuns[0].hi, 3071);
}

TEST(Plan, MergesAdjacentSlicesOfAServerWithSeveralSlices)
{
	auto c = load(fleet("[[addresses]]\naddress = \"198.51.100.1\"\ndatacenter = \"dc\"\ntags = {}\n"
			    "port_range = \"1000-1999\"\nslice_size = 100\nslices = { s1 = [0, 1, 5, 9] }\n", ""));
	auto p = makePlan(c);
	const auto &a = p.addresses.at(0);
	EXPECT_EQ(a.mySlices, (std::vector<uint32_t>{ 0, 1, 5, 9 }));
	ASSERT_EQ(a.myRuns.size(), 3u);
	EXPECT_EQ(a.myRuns[0], (config::PortRange{ 1000, 1199 }));
	EXPECT_EQ(a.myRuns[1], (config::PortRange{ 1500, 1599 }));
	EXPECT_EQ(a.myRuns[2], (config::PortRange{ 1900, 1999 })); // the last slice, up to the range end
}

const std::string kMixed =
	"[[addresses]]\naddress = \"198.51.100.1\"\ndatacenter = \"dc\"\ntags = { country = \"GB\" }\n"
	"port_range = \"1024-9215\"\nslice_size = 1024\nslices = { s1 = [0, 3, 4], s2 = [1, 2], s3 = [5, 6, 7] }\n"
	"[[addresses]]\naddress = \"198.51.100.2\"\ndatacenter = \"dc\"\ntags = { country = \"GB\" }\n"
	"slice_size = 4096\nslices = { s1 = [1], s2 = [0, 2], s3 = [3] }\n";

const std::string kMixedSources =
	"[[sources]]\nname = \"sl\"\nmatch = { saddr = \"100.64.2.0/28\" }\nwant = { country = \"GB\" }\n"
	"nat = \"stateless\"\nblock = 100\n"
	"[[sources]]\nname = \"a\"\nmatch = { saddr = \"100.64.1.0/24\" }\nwant = { country = \"GB\" }\nweight = 2\n"
	"[[sources]]\nname = \"b\"\nmatch = { iifname = \"wl0\" }\nwant = {}\n";

TEST(Plan, GivesEachInsideAddressItsOwnBlockAndNeverOverlapsShares)
{
	auto c = load(fleet(kMixed, kMixedSources));
	for (const char *server : { "s1", "s2", "s3" }) {
		auto p = makePlan(c, server);
		// Per address: every assigned port lies in this server's slices
		// and belongs to exactly one (source, inside range).
		std::map<std::pair<uint32_t, uint32_t>, std::string> owner;
		for (const auto &s : p.sources) {
			std::set<uint32_t> insideSeen;
			for (const auto &as : s.assignments) {
				const auto &a = p.addresses[as.address];
				if (s.mode == plan::NatMode::Stateless) {
					EXPECT_EQ(as.first, as.last);
					EXPECT_EQ(as.ports.size(), s.block);
					EXPECT_TRUE(insideSeen.insert(as.first.value).second) << "inside address twice";
				}
				for (uint32_t port = as.ports.lo; port <= as.ports.hi; port++) {
					auto slice = a.sliceOf(static_cast<uint16_t>(port));
					ASSERT_TRUE(slice);
					EXPECT_EQ(a.owner[*slice], static_cast<int32_t>(p.serverIndex)) << server << " port " << port;
					auto [it, inserted] = owner.emplace(std::make_pair(as.address, port), s.name);
					EXPECT_TRUE(inserted) << server << ": port " << port << " of " << a.address.str()
							      << " given to " << it->second << " and " << s.name;
				}
			}
			if (s.mode == plan::NatMode::Stateless && !s.assignments.empty()) {
				EXPECT_EQ(insideSeen.size(), 16u) << "every inside address of the /28 has a block";
			}
		}
		// Conntrack shares use every port the stateless blocks left.
		size_t mine = 0;
		for (const auto &a : p.addresses)
			for (const auto &r : a.myRuns)
				mine += r.size();
		EXPECT_EQ(owner.size(), mine) << server;
	}
}

TEST(Plan, SharesConntrackPortsByWeight)
{
	auto c = load(fleet("[[addresses]]\naddress = \"198.51.100.1\"\ndatacenter = \"dc\"\ntags = {}\n"
			    "port_range = \"1024-4095\"\nslice_size = 3072\nslices = { s1 = 0 }\n",
			    "[[sources]]\nname = \"a\"\nmatch = { uid = 1 }\nwant = {}\nweight = 2\n"
			    "[[sources]]\nname = \"b\"\nmatch = { uid = 2 }\nwant = {}\n"));
	auto p = makePlan(c);
	ASSERT_EQ(p.sources[0].assignments.size(), 1u);
	EXPECT_EQ(p.sources[0].assignments[0].ports, (config::PortRange{ 1024, 3071 }));
	EXPECT_EQ(p.sources[1].assignments[0].ports, (config::PortRange{ 3072, 4095 }));
}

// Weights 1 and 1000 on 100 ports: the cumulative split gives 'a' nothing,
// yet there are enough ports for one each. 'a' gets one, 'b' the rest; no
// error, no warning.
TEST(Plan, GivesEveryConntrackSourceAPortWhenThereAreEnough)
{
	auto c = load(fleet("[[addresses]]\naddress = \"198.51.100.1\"\ndatacenter = \"dc\"\ntags = {}\n"
			    "port_range = \"1000-1099\"\nslice_size = 100\nslices = { s1 = 0 }\n",
			    "[[sources]]\nname = \"a\"\nmatch = { uid = 1 }\nwant = {}\nweight = 1\n"
			    "[[sources]]\nname = \"b\"\nmatch = { uid = 2 }\nwant = {}\nweight = 1000\n"
			    "[[sources]]\nname = \"c\"\nmatch = { uid = 3 }\nwant = {}\nweight = 1\n"));
	auto r = plan::makePlan(c);
	ASSERT_TRUE(r.ok()) << (r.diagnostics.empty() ? "" : r.diagnostics[0].str());
	EXPECT_TRUE(r.diagnostics.empty()) << r.diagnostics[0].str();
	const auto &p = *r.plan;
	ASSERT_EQ(p.sources[0].shares.size(), 1u);
	ASSERT_EQ(p.sources[1].shares.size(), 1u);
	ASSERT_EQ(p.sources[2].shares.size(), 1u);
	// One port each, the 97 others by weight (0, 96, 1 by cumulative rounding).
	EXPECT_EQ(p.sources[0].shares[0].ports, (config::PortRange{ 1000, 1000 }));
	EXPECT_EQ(p.sources[1].shares[0].ports, (config::PortRange{ 1001, 1097 }));
	EXPECT_EQ(p.sources[2].shares[0].ports, (config::PortRange{ 1098, 1099 }));
	for (const auto &s : p.sources)
		EXPECT_FALSE(s.dropped()) << s.name;
}

// Where the cumulative split gives everyone a port, it stands as it was:
// 3 ports, weights 1, 1, 1 and 1000 ports, weights 1 and 2.
TEST(Plan, KeepsThePlainWeightSplitWhenItGivesEveryoneAPort)
{
	auto c = load(fleet("[[addresses]]\naddress = \"198.51.100.1\"\ndatacenter = \"dc\"\ntags = {}\n"
			    "port_range = \"1000-1002\"\nslice_size = 3\nslices = { s1 = 0 }\n",
			    "[[sources]]\nname = \"a\"\nmatch = { uid = 1 }\nwant = {}\n"
			    "[[sources]]\nname = \"b\"\nmatch = { uid = 2 }\nwant = {}\n"
			    "[[sources]]\nname = \"c\"\nmatch = { uid = 3 }\nwant = {}\n"));
	auto p = makePlan(c);
	ASSERT_EQ(p.sources.size(), 3u);
	for (uint16_t i = 0; i < 3; i++) {
		ASSERT_EQ(p.sources[i].shares.size(), 1u);
		EXPECT_EQ(p.sources[i].shares[0].ports, (config::PortRange{ static_cast<uint16_t>(1000 + i), static_cast<uint16_t>(1000 + i) }));
	}
	c = load(fleet("[[addresses]]\naddress = \"198.51.100.1\"\ndatacenter = \"dc\"\ntags = {}\n"
		       "port_range = \"1000-1999\"\nslice_size = 1000\nslices = { s1 = 0 }\n",
		       "[[sources]]\nname = \"a\"\nmatch = { uid = 1 }\nwant = {}\n"
		       "[[sources]]\nname = \"b\"\nmatch = { uid = 2 }\nwant = {}\nweight = 2\n"));
	p = makePlan(c);
	EXPECT_EQ(p.sources[0].shares.at(0).ports, (config::PortRange{ 1000, 1332 })); // 1000 * 1/3
	EXPECT_EQ(p.sources[1].shares.at(0).ports, (config::PortRange{ 1333, 1999 }));
}

// 16 inside addresses x block 128 = 2048: the stateless blocks fill s1's
// slice of .1 exactly. That fits (no error); the conntrack source that also
// wants .1 gets no port there, is warned about with the real cause, and
// spreads over .2 alone.
const std::string kFullShare =
	"[[addresses]]\naddress = \"198.51.100.1\"\ndatacenter = \"dc\"\ntags = { n = \"1\" }\nslices = { s1 = 0 }\n"
	"[[addresses]]\naddress = \"198.51.100.2\"\ndatacenter = \"dc\"\ntags = { n = \"2\" }\nslices = { s1 = 0 }\n";
const std::string kFullShareSources =
	"[[sources]]\nname = \"sl\"\nmatch = { saddr = \"100.64.2.0/28\" }\nwant = { n = \"1\" }\n"
	"nat = \"stateless\"\nblock = 128\n"
	"[[sources]]\nname = \"ct\"\nmatch = { saddr = \"100.64.1.0/24\" }\nwant = {}\n";

TEST(Plan, AConntrackSourceWithNoPortOfAnAddressUsesItsOtherAddresses)
{
	auto c = load(fleet(kFullShare, kFullShareSources));
	auto r = plan::makePlan(c);
	ASSERT_TRUE(r.ok()) << r.diagnostics.at(0).str();
	const auto &p = *r.plan;
	ASSERT_EQ(r.diagnostics.size(), 1u);
	EXPECT_EQ(r.diagnostics[0].severity, config::Diagnostic::Severity::Warning);
	EXPECT_EQ(r.diagnostics[0].message,
		  "conntrack source 'ct' gets no port of 198.51.100.1 on server 's1': the stateless blocks use all 2048 "
		  "ports of this server's share; it does not use this address");
	const auto &ct = p.sources[1];
	EXPECT_EQ(ct.candidates, (std::vector<uint32_t>{ 0, 1 })); // still a candidate: tags and a slice
	ASSERT_EQ(ct.shares.size(), 1u);
	EXPECT_EQ(ct.shares[0].address, 1u);
	ASSERT_EQ(ct.assignments.size(), 1u); // the whole /24 on .2
	EXPECT_EQ(ct.assignments[0].address, 1u);
	EXPECT_EQ(ct.assignments[0].first.str(), "100.64.1.0");
	EXPECT_EQ(ct.assignments[0].last.str(), "100.64.1.255");
	EXPECT_EQ(p.sources[0].assignments.size(), 16u);
	// The table and the abuse-desk query agree: .1 is all 'sl', .2 all 'ct'.
	auto model = nft::buildModel(p, 1);
	EXPECT_FALSE(nft::render(model).empty());
	for (uint32_t port : { 1024u, 2000u, 3071u }) {
		auto one = plan::findOwner(c, *Ipv4::parse("198.51.100.1"), static_cast<uint16_t>(port));
		ASSERT_TRUE(one);
		EXPECT_EQ(one->source, "sl") << port;
		auto two = plan::findOwner(c, *Ipv4::parse("198.51.100.2"), static_cast<uint16_t>(port));
		ASSERT_TRUE(two);
		EXPECT_EQ(two->source, "ct") << port;
	}
}

// Without another address the conntrack source is dropped as one without a
// candidate: a warning, not an error.
TEST(Plan, AConntrackSourceWithNoPortAnywhereIsDroppedWithAWarning)
{
	std::string only = kFullShare.substr(0, kFullShare.find("[[addresses]]", 1));
	auto c = load(fleet(only, kFullShareSources));
	auto r = plan::makePlan(c);
	ASSERT_TRUE(r.ok()) << r.diagnostics.at(0).str();
	ASSERT_EQ(r.diagnostics.size(), 2u);
	EXPECT_NE(r.diagnostics[0].message.find("gets no port of 198.51.100.1"), std::string::npos);
	EXPECT_EQ(r.diagnostics[1].message,
		  "source 'ct' has no candidate address on server 's1': its traffic is dropped and counted");
	for (const auto &d : r.diagnostics)
		EXPECT_EQ(d.severity, config::Diagnostic::Severity::Warning) << d.str();
	EXPECT_TRUE(r.plan->sources[1].dropped());
	EXPECT_TRUE(r.plan->sources[1].shares.empty());
	EXPECT_FALSE(r.plan->sources[1].routeMark);
	EXPECT_FALSE(nft::render(nft::buildModel(*r.plan, 1)).empty());
}

// Fewer ports than conntrack sources: the heaviest get one each, the
// others none there (a warning each).
TEST(Plan, FewerPortsThanConntrackSourcesGoToTheHeaviest)
{
	auto c = load(fleet("[[addresses]]\naddress = \"198.51.100.1\"\ndatacenter = \"dc\"\ntags = {}\n"
			    "port_range = \"1000-1001\"\nslice_size = 2\nslices = { s1 = 0 }\n",
			    "[[sources]]\nname = \"a\"\nmatch = { uid = 1 }\nwant = {}\n"
			    "[[sources]]\nname = \"b\"\nmatch = { uid = 2 }\nwant = {}\nweight = 5\n"
			    "[[sources]]\nname = \"c\"\nmatch = { uid = 3 }\nwant = {}\nweight = 5\n"));
	auto r = plan::makePlan(c);
	ASSERT_TRUE(r.ok()) << r.diagnostics.at(0).str();
	const auto &p = *r.plan;
	EXPECT_TRUE(p.sources[0].dropped());
	EXPECT_EQ(p.sources[1].shares.at(0).ports, (config::PortRange{ 1000, 1000 }));
	EXPECT_EQ(p.sources[2].shares.at(0).ports, (config::PortRange{ 1001, 1001 }));
	ASSERT_EQ(r.diagnostics.size(), 2u);
	EXPECT_EQ(r.diagnostics[0].message,
		  "conntrack source 'a' gets no port of 198.51.100.1 on server 's1': only 2 of its 2 ports are left for "
		  "3 conntrack sources, one each to the heaviest; it does not use this address");
}

TEST(Plan, SpreadsInsideAddressesEvenlyOverCandidates)
{
	auto c = load(fleet(kMixed, kMixedSources));
	auto p = makePlan(c, "s1");
	const auto &sl = p.sources[0];
	ASSERT_EQ(sl.candidates.size(), 2u);
	std::map<uint32_t, int> perAddress;
	for (const auto &as : sl.assignments)
		perAddress[as.address]++;
	EXPECT_EQ(perAddress[0], 8);
	EXPECT_EQ(perAddress[1], 8);
}

// A /24 over two candidates, s1 with two runs of .1 (slices 0 and 2) and one
// of .2: 128 inside addresses each (64 per run of .1), not 170 and 86.
TEST(Plan, SpreadsConntrackInsideAddressesOverCandidatesBeforeRuns)
{
	auto c = load(fleet("[[addresses]]\naddress = \"198.51.100.1\"\ndatacenter = \"dc\"\ntags = {}\n"
			    "port_range = \"1000-1399\"\nslice_size = 100\nslices = { s1 = [0, 2], s2 = 1 }\n"
			    "[[addresses]]\naddress = \"198.51.100.2\"\ndatacenter = \"dc\"\ntags = {}\n"
			    "port_range = \"1000-1399\"\nslice_size = 100\nslices = { s1 = 0, s2 = 1 }\n",
			    "[[sources]]\nname = \"a\"\nmatch = { saddr = \"100.64.1.0/24\" }\nwant = {}\n"));
	auto p = makePlan(c);
	const auto &a = p.sources.at(0);
	ASSERT_EQ(a.shares.size(), 3u);
	std::map<uint32_t, uint32_t> perAddress;
	for (const auto &as : a.assignments)
		perAddress[as.address] += as.last.value - as.first.value + 1;
	EXPECT_EQ(perAddress[0], 128u);
	EXPECT_EQ(perAddress[1], 128u);
	ASSERT_EQ(a.assignments.size(), 3u);
	EXPECT_EQ(a.assignments[0].first.str(), "100.64.1.0");
	EXPECT_EQ(a.assignments[0].last.str(), "100.64.1.63");
	EXPECT_EQ(a.assignments[0].ports, (config::PortRange{ 1000, 1099 }));
	EXPECT_EQ(a.assignments[1].first.str(), "100.64.1.64");
	EXPECT_EQ(a.assignments[1].last.str(), "100.64.1.127");
	EXPECT_EQ(a.assignments[1].ports, (config::PortRange{ 1200, 1299 }));
	EXPECT_EQ(a.assignments[2].first.str(), "100.64.1.128");
	EXPECT_EQ(a.assignments[2].last.str(), "100.64.1.255");
	EXPECT_EQ(a.assignments[2].address, 1u);
}

TEST(Plan, WarnsAndDropsASourceWithoutCandidate)
{
	auto c = load(fleet(kMixed, "[[sources]]\nname = \"de\"\nmatch = { uid = 1 }\nwant = { country = \"DE\" }\n"));
	auto r = plan::makePlan(c);
	ASSERT_TRUE(r.ok());
	EXPECT_TRUE(r.plan->sources[0].dropped());
	ASSERT_EQ(r.plan->warnings.size(), 1u);
	EXPECT_NE(r.plan->warnings[0].message.find("no candidate"), std::string::npos);
}

TEST(Plan, RejectsStatelessBlocksThatDoNotFitThisServersShare)
{
	auto c = load(fleet(kMixed, "[[sources]]\nname = \"sl\"\nmatch = { saddr = \"100.64.2.0/24\" }\nwant = {}\n"
				    "nat = \"stateless\"\nblock = 512\n"));
	auto r = plan::makePlan(c, "s1");
	EXPECT_FALSE(r.ok());
	ASSERT_FALSE(r.diagnostics.empty());
	EXPECT_NE(r.diagnostics[0].str().find("do not fit"), std::string::npos) << r.diagnostics[0].str();
	EXPECT_EQ(r.diagnostics[0].where.line, 36u); // the `block` line
}

TEST(Plan, AssignsStableZonesThatDoNotMoveWhenASourceIsAdded)
{
	std::string b = "[[sources]]\nname = \"b\"\nmatch = { uid = 2 }\nwant = {}\n";
	auto before = makePlan(load(fleet(kMixed, b)));
	auto after = makePlan(load(fleet(kMixed, "[[sources]]\nname = \"a\"\nmatch = { uid = 1 }\nwant = {}\n" + b)));
	EXPECT_EQ(before.sources[0].zone, after.sources[1].zone);
	EXPECT_NE(after.sources[0].zone, after.sources[1].zone);
	EXPECT_GE(before.sources[0].zone, 1000);
}

// owner() agrees with the plan of every server, for every port of the range.
TEST(Owner, AgreesWithThePlanForEveryPort)
{
	auto c = load(fleet(kMixed, kMixedSources));
	for (const auto &address : c.addresses) {
		std::map<uint32_t, std::pair<std::string, std::string>> expected; // port -> server, source
		for (const auto &server : c.servers) {
			auto p = makePlan(c, server.name);
			for (const auto &s : p.sources)
				for (const auto &as : s.assignments)
					if (p.addresses[as.address].address == address.address)
						for (uint32_t port = as.ports.lo; port <= as.ports.hi; port++)
							expected[port] = { server.name, s.name + "/" + as.first.str() };
		}
		for (uint32_t port = 1; port <= 65535; port++) {
			auto answer = plan::findOwner(c, address.address, static_cast<uint16_t>(port));
			ASSERT_TRUE(answer);
			auto it = expected.find(port);
			if (it == expected.end()) {
				EXPECT_TRUE(answer->source.empty()) << port;
				continue;
			}
			EXPECT_EQ(answer->server, it->second.first) << address.address.str() << ":" << port;
			EXPECT_EQ(answer->source + "/" + answer->inside->str(), it->second.second) << port;
		}
	}
}

TEST(Determinism, SameFileSamePlanByteForByte)
{
	auto c1 = load(fleet(kMixed, kMixedSources));
	auto c2 = load(fleet(kMixed, kMixedSources));
	auto p1 = makePlan(c1), p2 = makePlan(c2);
	EXPECT_EQ(plan::toJson(p1), plan::toJson(p2));
	EXPECT_EQ(p1.hash(), p2.hash());
	EXPECT_EQ(nft::render(nft::buildModel(p1, 1)), nft::render(nft::buildModel(p2, 1)));
	// ... and a different owner gives a different plan hash.
	c2.addresses[0].owners[5] = "s1";
	EXPECT_NE(makePlan(c2).hash(), p1.hash());
}

} // namespace
