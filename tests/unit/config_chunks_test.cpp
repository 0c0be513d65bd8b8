// SPDX-License-Identifier: MIT
// The chunked config load: where the header scanner cuts, and that a chunked load reports what a whole-file load reports.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "../lab/nat_fleet.h"
#include "config/chunks.h"
#include "config/config.h"

namespace {

using namespace portslice::config;

constexpr size_t kWhole = SIZE_MAX;
constexpr size_t kEveryHeader = 1; // a chunk at every top-level header the scanner may cut at

std::vector<std::string> headerKeys(std::string_view text)
{
	std::vector<std::string> out;
	auto headers = scanHeaders(text);
	if (!headers)
		return { "(unsure)" };
	for (const Header &h : *headers)
		out.push_back(std::to_string(h.line) + (h.array ? ":[[" : ":[") + h.key + (h.dotted ? "." : "") + (h.array ? "]]" : "]"));
	return out;
}

std::vector<std::string> strings(const std::vector<Diagnostic> &diagnostics)
{
	std::vector<std::string> out;
	for (const Diagnostic &d : diagnostics)
		out.push_back(d.str());
	return out;
}

// What a config says, for comparing two loads of one text.
std::string describe(const LoadResult &r)
{
	std::ostringstream out;
	for (const Diagnostic &d : r.diagnostics)
		out << d.str() << "\n";
	if (!r.config)
		return out.str();
	const Config &c = *r.config;
	out << c.serverName << " " << c.uplink << " " << c.serverWhere.line << " " << c.defaultPortRange.lo << "-"
	    << c.defaultPortRange.hi << "/" << c.defaultSliceSize << " ct " << c.conntrack.max.value_or(0) << "\n";
	for (const Datacenter &d : c.datacenters)
		out << "dc " << d.name << " " << d.where.line << ":" << d.where.column << "\n";
	for (const Server &s : c.servers)
		out << "server " << s.name << " " << s.address.str() << " " << s.datacenter << " " << s.where.line << "\n";
	for (const Address &a : c.addresses) {
		out << "address " << a.address.str() << " " << a.datacenter << " " << a.portRange.lo << "-" << a.portRange.hi
		    << "/" << a.sliceSize << " " << a.where.line << " " << a.slicesWhere.line << ":" << a.slicesWhere.column;
		for (const auto &[k, v] : a.tags)
			out << " " << k << "=" << v;
		for (const auto &[index, server] : a.owners)
			out << " " << index << ":" << server;
		for (const auto &[index, server] : a.previous)
			out << " was " << index << ":" << server;
		out << "\n";
	}
	for (const Source &s : c.sources) {
		out << "source " << s.name << " " << (s.match.saddr ? s.match.saddr->str() : "-") << " "
		    << s.match.iifname.value_or("-") << " " << s.match.mark.value_or(0) << " " << s.block.value_or(0) << " "
		    << s.weight << " " << s.zone.value_or(0) << " " << s.where.line << ":" << s.where.column << " "
		    << s.blockWhere.line;
		for (const auto &[k, v] : s.want)
			out << " " << k << "=" << v;
		out << "\n";
	}
	return out.str();
}

// The text loaded whole and cut at every header it can be cut at.
void expectSameAsWhole(const std::string &text, const std::string &what)
{
	std::string whole = describe(loadString(text, "f.toml", kWhole));
	std::string chunked = describe(loadString(text, "f.toml", kEveryHeader));
	EXPECT_EQ(chunked, whole) << what;
}

const std::string kHead = R"([server]
name = "s1"
uplink = "eth0"

[[datacenters]]
name = "lab1"

[[servers]]
name = "s1"
address = "192.0.2.11"
datacenter = "lab1"

[[servers]]
name = "s2"
address = "192.0.2.12"
datacenter = "lab1"
)";

const std::string kAddress = R"(
[[addresses]]
address = "198.51.100.1"
datacenter = "lab1"
tags = { country = "GB" }
slices = { s1 = 0, s2 = [1, 2] }
previous = { s1 = 2 }
)";

std::string source(const std::string &name, const std::string &match)
{
	return "\n[[sources]]\nname = \"" + name + "\"\nmatch = { " + match + " }\nwant = { country = \"GB\" }\n";
}

TEST(ConfigChunks, TheScannerFindsEveryHeaderWithItsLine)
{
	EXPECT_EQ(headerKeys("a = 1\n[x]\nb = 2\n\n[[y]]\n[[y]]\n[y.z]\n"),
		  (std::vector<std::string>{ "2:[x]", "5:[[y]]", "6:[[y]]", "7:[y.]" }));
}

TEST(ConfigChunks, ALineStartingWithABracketInsideAMultiLineStringIsNoHeader)
{
	EXPECT_EQ(headerKeys("[a]\ns = \"\"\"\n[b]\n\\\"\"\"\n[[c]]\n\"\"\"\n[d]\n"), (std::vector<std::string>{ "1:[a]", "7:[d]" }));
	EXPECT_EQ(headerKeys("[a]\ns = '''\n[b]\n'''\n[d]\n"), (std::vector<std::string>{ "1:[a]", "5:[d]" }));
	// Up to two quotes before the closing three belong to the string.
	EXPECT_EQ(headerKeys("[a]\ns = \"\"\"x\"\"\"\"\"\n[d]\nt = '''y'''''\n[e]\n"),
		  (std::vector<std::string>{ "1:[a]", "3:[d]", "5:[e]" }));
	// A line-ending backslash keeps the string open across the newline.
	EXPECT_EQ(headerKeys("[a]\ns = \"\"\"x \\\n[b]\n\"\"\"\n[d]\n"), (std::vector<std::string>{ "1:[a]", "5:[d]" }));
}

TEST(ConfigChunks, ALineStartingWithABracketInsideAMultiLineArrayIsNoHeader)
{
	EXPECT_EQ(headerKeys("[a]\nv = [\n[1, 2],\n[ \"]\" ],\n]\n[d]\n"), (std::vector<std::string>{ "1:[a]", "6:[d]" }));
	// A quoted bracket or a comment neither opens nor closes anything.
	EXPECT_EQ(headerKeys("[a]\nv = [ # ]\n'[', \"\\\"[\"\n]\n[d]\n"), (std::vector<std::string>{ "1:[a]", "5:[d]" }));
}

TEST(ConfigChunks, CommentsAreNoHeadersButMayFollowOne)
{
	EXPECT_EQ(headerKeys("# [x]\n  # [[y]]\n[z] # [w]\n[[v]]#\n"), (std::vector<std::string>{ "3:[z]", "4:[[v]]" }));
}

TEST(ConfigChunks, CrLfLinesCountLikeLfLines)
{
	EXPECT_EQ(headerKeys("a = 1\r\n\r\n[x]\r\nb = \"[\"\r\n[[y]] \r\n"), (std::vector<std::string>{ "3:[x]", "5:[[y]]" }));
}

TEST(ConfigChunks, HeadersWithSpacesAndQuotesNameTheirFirstKey)
{
	EXPECT_EQ(headerKeys("  [ \"sources\" ]\n\t[[ 'sources' ]]\n[ sources . match ]\n[\"a.b\"]\n[[ x.\"y\" . 'z' ]]\n"),
		  (std::vector<std::string>{ "1:[sources]", "2:[[sources]]", "3:[sources.]", "4:[a.b]", "5:[[x.]]" }));
}

TEST(ConfigChunks, TheScannerIsUnsureOfEscapedKeysAndStrayBrackets)
{
	EXPECT_EQ(headerKeys("[\"s\\u0065rver\"]\n"), (std::vector<std::string>{ "(unsure)" }));
	EXPECT_EQ(headerKeys("a = 1 ]\n[x]\n"), (std::vector<std::string>{ "(unsure)" }));
	EXPECT_EQ(headerKeys("[x] y = 1\n"), (std::vector<std::string>{ "(unsure)" }));
}

TEST(ConfigChunks, ChunksStartAtTopLevelHeadersOnly)
{
	std::string text = "a = 1\n[[s]]\nx = 1\n[s.m]\ny = 2\n[[s]]\n[t]\n";
	auto chunks = splitChunks(text, 1);
	ASSERT_TRUE(chunks);
	std::vector<std::string> got;
	for (const Chunk &c : *chunks)
		got.push_back(std::to_string(c.firstLine) + ":" + std::string(c.text));
	EXPECT_EQ(got, (std::vector<std::string>{ "1:a = 1\n", "2:[[s]]\nx = 1\n[s.m]\ny = 2\n", "6:[[s]]\n", "7:[t]\n" }));
	// Batched: a new chunk once the current one has chunkBytes.
	chunks = splitChunks(text, 12);
	ASSERT_TRUE(chunks);
	ASSERT_EQ(chunks->size(), 2u);
	EXPECT_EQ((*chunks)[1].firstLine, 6u);
	EXPECT_EQ((*chunks)[1].keys, (std::vector<std::string>{ "s", "t" }));
}

TEST(ConfigChunks, AnythingThatCouldMeanSomethingElseInChunksIsOneChunk)
{
	// [a] twice, [a] and [[a]], a dotted header away from its table.
	EXPECT_FALSE(splitChunks("[a]\n[b]\n[a]\n", 1));
	EXPECT_FALSE(splitChunks("[[a]]\n[a]\n", 1));
	EXPECT_FALSE(splitChunks("[a]\n[b]\n[a.c]\n", 1));
	EXPECT_FALSE(splitChunks("[a.c]\n", 1));
}

TEST(ConfigChunks, AnErrorInTheThirdChunkIsReportedAtItsLineInTheFile)
{
	std::string text = kHead + kAddress + source("a", "uid = 5") + source("b", "uid = 6") + "zone = 0\n";
	auto chunks = splitChunks(text, 1);
	ASSERT_TRUE(chunks);
	ASSERT_GE(chunks->size(), 7u);
	auto result = loadString(text, "f.toml", kEveryHeader);
	EXPECT_EQ(result.chunks, chunks->size());
	ASSERT_EQ(result.diagnostics.size(), 1u);
	EXPECT_EQ(result.diagnostics[0].str(), "f.toml:34:8: error: 'zone' must be between 1 and 65535, not 0");
	// A syntax error in a later chunk: toml++'s message at the file's line
	// (found on the whole text: toml++ stops at the first error of a file).
	text = kHead + kAddress + source("a", "uid = 5") + "weight = = 2\n" + source("b", "uid = 6");
	result = loadString(text, "f.toml", kEveryHeader);
	ASSERT_EQ(result.diagnostics.size(), 1u);
	EXPECT_EQ(result.diagnostics[0].where.line, 29u);
	EXPECT_EQ(strings(result.diagnostics), strings(loadString(text, "f.toml", kWhole).diagnostics));
}

TEST(ConfigChunks, RedefinitionsAcrossChunksAreReportedAsInOneDocument)
{
	std::vector<std::string> texts = {
		kHead + kAddress + "\n[server]\nname = \"s2\"\n",                     // [server] twice
		"server = { name = \"s1\", uplink = \"eth0\" }\n" + kHead,             // a key, then its header
		"datacenters = []\n" + kHead,                                            // append to a static array
		kHead + "\n[servers]\nname = \"s3\"\n",                                  // [[servers]], then [servers]
		kHead + kAddress + "\n[server.x]\ny = 1\n",                              // dotted header far from [server]
		kHead + "\n[addresses]\nq = 1\n" + kAddress,                             // [addresses], then [[addresses]]
	};
	for (const std::string &text : texts) {
		auto whole = loadString(text, "f.toml", kWhole);
		ASSERT_FALSE(whole.ok()) << text;
		auto chunked = loadString(text, "f.toml", kEveryHeader);
		EXPECT_EQ(chunked.chunks, 1u) << text;
		EXPECT_EQ(strings(chunked.diagnostics), strings(whole.diagnostics)) << text;
	}
}

TEST(ConfigChunks, ErrorsOfEveryPartComeInTheOrderOfAWholeFileLoad)
{
	// Unknown top-level keys, a bad [defaults], an unknown data centre, a
	// bad slice, a bad source, a [server] name not among the servers: each
	// in its own chunk, some parts split over several.
	std::string text = "zeta = 1\n[server]\nname = \"s9\"\nuplink = \"eth0\"\n\n[[datacenters]]\nname = \"lab1\"\n"
			   "\n[defaults]\nslice_size = 0\n\n[[servers]]\nname = \"s1\"\naddress = \"192.0.2.11\"\ndatacenter = \"lab7\"\n"
			   "\n[[alpha]]\nx = 1\n" +
			   kAddress + source("a", "uid = 5") + "zone = 0\n\n[conntrack]\nmax = 0\n" + source("b", "") +
			   "\n[[alpha]]\ny = 2\n";
	auto whole = loadString(text, "f.toml", kWhole);
	auto chunked = loadString(text, "f.toml", kEveryHeader);
	EXPECT_GE(chunked.chunks, 10u);
	ASSERT_GE(whole.diagnostics.size(), 8u);
	EXPECT_EQ(strings(chunked.diagnostics), strings(whole.diagnostics));
}

TEST(ConfigChunks, PartsOutOfTheLoadersOrderLoadAsOneDocument)
{
	// Addresses before the servers they name, [defaults] after them, data
	// centres last: fine for TOML, and the result must not change.
	std::vector<std::string> texts = {
		"[server]\nname = \"s1\"\nuplink = \"eth0\"\n" + kAddress + "\n[[datacenters]]\nname = \"lab1\"\n" +
			"\n[[servers]]\nname = \"s1\"\naddress = \"192.0.2.11\"\ndatacenter = \"lab1\"\n" +
			"\n[[servers]]\nname = \"s2\"\naddress = \"192.0.2.12\"\ndatacenter = \"lab1\"\n",
		kHead + kAddress + "\n[defaults]\nport_range = \"1024-4095\"\nslice_size = 1024\n",
		kHead + source("z", "uid = 1") + kAddress + source("y", "uid = 2") + "\n[[datacenters]]\nname = \"lab2\"\n",
		"servers = [ { name = \"s1\", address = \"192.0.2.11\", datacenter = \"lab1\" } ]\n[server]\nname = \"s1\"\n"
		"uplink = \"eth0\"\n[[datacenters]]\nname = \"lab1\"\n",
	};
	for (const std::string &text : texts) {
		expectSameAsWhole(text, text);
		EXPECT_GT(splitChunks(text, 1).value().size(), 1u) << "the scanner cuts it";
		EXPECT_EQ(loadString(text, "f.toml", kEveryHeader).chunks, 1u) << "the loader may not use the cuts";
	}
}

TEST(ConfigChunks, AGeneratedFleetLoadsTheSameInChunksOfAnySize)
{
	std::string text = portslice::testing::generatedFleet(150);
	std::string whole = describe(loadString(text, "f.toml", kWhole));
	ASSERT_NE(whole.find("source src149"), std::string::npos) << whole.substr(0, 500);
	for (size_t bytes : { size_t{ 1 }, size_t{ 1000 }, size_t{ 4096 }, size_t{ 50000 } }) {
		LoadResult r = loadString(text, "f.toml", bytes);
		EXPECT_GT(r.chunks, 1u) << bytes;
		EXPECT_GE(r.chunks, std::min<size_t>(300, text.size() / bytes / 2)) << bytes;
		EXPECT_EQ(describe(r), whole) << bytes;
	}
}

TEST(ConfigChunks, EveryFileOfTheFuzzCorpusLoadsTheSameInChunks)
{
	size_t files = 0;
	for (const auto &entry : std::filesystem::directory_iterator(CORPUS_DIR)) {
		std::ifstream in(entry.path());
		std::stringstream text;
		text << in.rdbuf();
		expectSameAsWhole(text.str(), entry.path().filename());
		// With CRLF line ends too.
		std::string crlf;
		for (char c : text.str())
			crlf += c == '\n' ? std::string("\r\n") : std::string(1, c);
		expectSameAsWhole(crlf, entry.path().filename().string() + " (CRLF)");
		files++;
	}
	EXPECT_GE(files, 5u);
}

} // namespace
