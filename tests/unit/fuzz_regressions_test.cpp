// SPDX-License-Identifier: MIT
// Inputs found by the config fuzzer and by replaying its corpus against the previous loader, kept as tests.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "config/config.h"
#include "fixture.h"

namespace {

using portslice::config::Diagnostic;
using portslice::config::loadString;

const std::string kFleet = portslice::test::fixture("one-slice.toml");

struct Source {
	std::string name;
	std::string match;
	std::string extra; // more lines of the [[sources]] entry
};

std::string fleetWith(const std::vector<Source> &sources)
{
	std::string text = kFleet;
	for (const Source &s : sources)
		text += "\n[[sources]]\nname = \"" + s.name + "\"\nmatch = { " + s.match + " }\nwant = {}\n" + s.extra;
	return text;
}

// The messages of the errors, in the order they are reported.
std::vector<std::string> errors(const std::string &text)
{
	std::vector<std::string> out;
	for (const Diagnostic &d : loadString(text, "test.toml").diagnostics)
		if (d.severity == Diagnostic::Severity::Error)
			out.push_back(d.str());
	// The same, in the same order, from a load in chunks (one per [[sources]]).
	std::vector<std::string> chunked;
	for (const Diagnostic &d : loadString(text, "test.toml", 1).diagnostics)
		if (d.severity == Diagnostic::Severity::Error)
			chunked.push_back(d.str());
	EXPECT_EQ(chunked, out);
	return out;
}

const std::string kStateless = "nat = \"stateless\"\nblock = 16\n";

TEST(FuzzRegressions, ATableHeaderThatIsNoKeyIsASyntaxErrorNotACrash)
{
	// toml++ 3.3's header-only debug build asserts on this (upstream
	// marzer/tomlplusplus#301); the library portslice links reports it.
	auto result = loadString("[server]\nname = \"s1\"\n[^sources]]\n", "test.toml");
	ASSERT_FALSE(result.ok());
	ASSERT_EQ(result.diagnostics.size(), 1u);
	EXPECT_EQ(result.diagnostics[0].where.line, 3u);
	EXPECT_EQ(result.diagnostics[0].where.column, 2u);
	EXPECT_NE(result.diagnostics[0].message.find("expected bare key"), std::string::npos);
}

TEST(FuzzRegressions, ASourceMatchingWhatTwoEarlierOnesMatchNamesBoth)
{
	auto e = errors(fleetWith({ { "a", "uid = 1", "" }, { "b", "uid = 1", "" }, { "c", "uid = 1", "" } }));
	ASSERT_EQ(e.size(), 3u);
	EXPECT_EQ(e[0], "test.toml:26:9: error: source 'b' matches exactly what source 'a' matches: packets could not tell them apart");
	EXPECT_EQ(e[1], "test.toml:31:9: error: source 'c' matches exactly what source 'a' matches: packets could not tell them apart");
	EXPECT_EQ(e[2], "test.toml:31:9: error: source 'c' matches exactly what source 'b' matches: packets could not tell them apart");
}

TEST(FuzzRegressions, ASourceOfADuplicateNameIsComparedOnlyWithTheSourcesBeforeIt)
{
	// Found in the fuzz corpus: the loader compares a source with the
	// earlier ones in file order and stops at the first of the same name.
	auto e = errors(fleetWith({ { "m", "cgroup = 1048577, mark = 1", "" },
				    { "c3", "cgroup = 1048577, mark = 8", "" },
				    { "c3", "cgroup = 1048577, mark = 1", "zone = 5\n" } }));
	ASSERT_EQ(e.size(), 2u);
	EXPECT_EQ(e[0], "test.toml:30:8: error: duplicate source name 'c3'");
	EXPECT_EQ(e[1], "test.toml:31:9: error: source 'c3' matches exactly what source 'm' matches: packets could not tell them apart");
}

TEST(FuzzRegressions, EachEarlierSourceGetsItsZoneAndMatchErrorsInFileOrder)
{
	// Printed by position; the errors at one position (c's zone) in the
	// order of the earlier sources.
	auto e = errors(fleetWith({ { "a", "uid = 1", "zone = 7\n" }, { "b", "uid = 2", "zone = 7\n" },
				    { "c", "uid = 1", "zone = 7\n" } }));
	ASSERT_EQ(e.size(), 4u);
	EXPECT_NE(e[0].find("zone 7 is already used by source 'a'"), std::string::npos) << e[0];
	EXPECT_NE(e[1].find("source 'c' matches exactly what source 'a' matches"), std::string::npos) << e[1];
	EXPECT_NE(e[2].find("zone 7 is already used by source 'a'"), std::string::npos) << e[2];
	EXPECT_NE(e[3].find("zone 7 is already used by source 'b'"), std::string::npos) << e[3];
}

TEST(FuzzRegressions, AStatelessPrefixInsideTwoNestedOnesOverlapsBoth)
{
	auto e = errors(fleetWith({ { "wide", "saddr = \"100.64.0.0/24\"", kStateless },
				    { "mid", "saddr = \"100.64.0.16/28\"", kStateless },
				    { "narrow", "saddr = \"100.64.0.20/30\"", kStateless } }));
	ASSERT_EQ(e.size(), 3u);
	EXPECT_NE(e[0].find("stateless sources 'wide' and 'mid' overlap (100.64.0.0/24, 100.64.0.16/28)"), std::string::npos) << e[0];
	EXPECT_NE(e[1].find("stateless sources 'wide' and 'narrow' overlap"), std::string::npos) << e[1];
	EXPECT_NE(e[2].find("stateless sources 'mid' and 'narrow' overlap"), std::string::npos) << e[2];
}

TEST(FuzzRegressions, AStatelessPrefixAroundSeveralEarlierOnesOverlapsEach)
{
	auto e = errors(fleetWith({ { "a", "saddr = \"100.64.0.32/28\"", kStateless },
				    { "b", "saddr = \"100.64.0.0/28\"", kStateless },
				    { "c", "saddr = \"100.64.1.0/28\"", kStateless },
				    { "all", "saddr = \"100.64.0.0/24\"", kStateless },
				    { "same", "saddr = \"100.64.0.0/28\"", kStateless } }));
	ASSERT_EQ(e.size(), 5u);
	EXPECT_NE(e[0].find("'a' and 'all'"), std::string::npos) << e[0];
	EXPECT_NE(e[1].find("'b' and 'all'"), std::string::npos) << e[1];
	// 'same' matches exactly what 'b' matches, and overlaps it and 'all'.
	EXPECT_NE(e[2].find("source 'same' matches exactly what source 'b' matches"), std::string::npos) << e[2];
	EXPECT_NE(e[3].find("'b' and 'same'"), std::string::npos) << e[3];
	EXPECT_NE(e[4].find("'all' and 'same'"), std::string::npos) << e[4];
}

TEST(FuzzRegressions, DisjointStatelessPrefixesAreAccepted)
{
	auto result = loadString(fleetWith({ { "a", "saddr = \"100.64.0.0/28\"", kStateless },
					     { "b", "saddr = \"100.64.0.16/28\"", kStateless },
					     { "c", "saddr = \"100.64.0.64/26\"", kStateless },
					     { "d", "saddr = \"100.64.0.32/32\"", kStateless } }),
				 "test.toml");
	EXPECT_TRUE(result.ok()) << (result.diagnostics.empty() ? "" : result.diagnostics[0].str());
}

} // namespace
