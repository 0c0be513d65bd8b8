// SPDX-License-Identifier: MIT
// Every error class of docs/config.md "Errors", each reported at its file, line and column.
#include <gtest/gtest.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <sys/stat.h>
#include <thread>
#include <utility>
#include <vector>

#include "config/config.h"

using portslice::config::Diagnostic;
using portslice::config::loadFile;
using portslice::config::loadString;

namespace {

// A valid fleet; each case appends or replaces lines to break one thing.
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
slices = { s1 = 0, s2 = 1 }
)";

struct ErrorCase {
	const char *description;
	std::string text;
	uint32_t line;
	uint32_t column;
	const char *message; // a part of the message
};

class ConfigErrors : public testing::TestWithParam<ErrorCase> {};

TEST_P(ConfigErrors, AreReportedAtTheirLineAndColumn)
{
	const ErrorCase &c = GetParam();
	auto result = loadString(c.text, "fleet.toml");
	ASSERT_FALSE(result.ok()) << c.description;
	bool found = false;
	std::string all;
	for (const Diagnostic &d : result.diagnostics) {
		all += d.str() + "\n";
		if (d.where.line == c.line && d.where.column == c.column &&
		    d.message.find(c.message) != std::string::npos)
			found = true;
	}
	EXPECT_TRUE(found) << c.description << ": wanted " << c.line << ":" << c.column << " '" << c.message
			   << "', got:\n"
			   << all;
}

const ErrorCase kCases[] = {
	{ "TOML syntax", kHead + "[[addresses]\n", 17, 13, "" },
	{ "unknown top-level key", "serverz = 1\n" + kHead, 1, 1, "did you mean 'server'?" },
	{ "unknown key in a table", kHead + kAddress + "slise_size = 4\n", 23, 1, "did you mean 'slice_size'?" },
	{ "mistyped value", kHead + "\n[[sources]]\nname = 5\nmatch = { saddr = \"100.64.1.0/24\" }\nwant = {}\n", 19, 8,
	  "'name' must be a string" },
	{ "missing required key", kHead + "\n[[sources]]\nname = \"a\"\nwant = {}\n", 18, 1,
	  "lacks required key 'match'" },
	{ "missing [server]", "[[datacenters]]\nname = \"x\"\n", 1, 1, "lacks required key 'server'" },
	{ "invalid address", kHead + "\n[[addresses]]\naddress = \"198.51.100.256\"\ndatacenter = \"lab1\"\ntags = {}\nslices = {}\n",
	  19, 11, "invalid IPv4 address" },
	{ "invalid prefix (host bits)", kHead + kAddress +
	  "\n[[sources]]\nname = \"a\"\nmatch = { saddr = \"100.64.1.1/24\" }\nwant = {}\n",
	  26, 19, "invalid prefix" },
	{ "invalid MAC", kHead + "mac = \"02:00:00:00:00\"\n", 17, 7, "invalid MAC address" },
	{ "multicast shared address", kHead + "\n[[addresses]]\naddress = \"224.0.0.1\"\ndatacenter = \"lab1\"\ntags = {}\nslices = {}\n",
	  19, 11, "'address': 224.0.0.1 is a multicast address, not a unicast one" },
	{ "broadcast shared address", kHead + "\n[[addresses]]\naddress = \"255.255.255.255\"\ndatacenter = \"lab1\"\ntags = {}\nslices = {}\n",
	  19, 11, "255.255.255.255 is the broadcast address, not a unicast one" },
	{ "shared address 0.0.0.0", kHead + "\n[[addresses]]\naddress = \"0.0.0.0\"\ndatacenter = \"lab1\"\ntags = {}\nslices = {}\n",
	  19, 11, "0.0.0.0 is in 0.0.0.0/8" },
	{ "class E shared address", kHead + "\n[[addresses]]\naddress = \"240.0.0.1\"\ndatacenter = \"lab1\"\ntags = {}\nslices = {}\n",
	  19, 11, "240.0.0.1 is in the reserved 240.0.0.0/4" },
	{ "server address 0.0.0.0", kHead + "\n[[servers]]\nname = \"s3\"\naddress = \"0.0.0.0\"\ndatacenter = \"lab1\"\n",
	  20, 11, "0.0.0.0 is in 0.0.0.0/8" },
	{ "loopback server address", kHead + "\n[[servers]]\nname = \"s3\"\naddress = \"127.0.0.1\"\ndatacenter = \"lab1\"\n",
	  20, 11, "127.0.0.1 is a loopback address" },
	{ "multicast gateway", kHead + "\n[[datacenters]]\nname = \"lab2\"\ngateway = \"239.1.2.3\"\n",
	  20, 11, "'gateway': 239.1.2.3 is a multicast address" },
	{ "broadcast MAC", kHead + "mac = \"ff:ff:ff:ff:ff:ff\"\n", 17, 7, "ff:ff:ff:ff:ff:ff is the broadcast address" },
	{ "multicast MAC", kHead + "mac = \"01:00:5e:00:00:01\"\n", 17, 7, "01:00:5e:00:00:01 is a multicast address" },
	{ "zero MAC", kHead + "mac = \"00:00:00:00:00:00\"\n", 17, 7, "00:00:00:00:00:00 is no interface's address" },
	{ "inverted port range", kHead + "\n[defaults]\nport_range = \"2000-1000\"\n", 19, 14, "inverted" },
	{ "port 0", kHead + "\n[defaults]\nport_range = \"0-1000\"\n", 19, 14, "between 1 and 65535" },
	{ "port above 65535", kHead + "\n[defaults]\nport_range = \"1024-65536\"\n", 19, 14, "between 1 and 65535" },
	{ "slice size 0", kHead + "\n[defaults]\nslice_size = 0\n", 19, 14, "between 1 and 65535" },
	{ "slice size over the range", kHead + kAddress + "port_range = \"1024-2047\"\nslice_size = 2048\n", 24, 14,
	  "larger than the port range" },
	{ "slice index beyond the range", kHead +
	  "\n[[addresses]]\naddress = \"198.51.100.1\"\ndatacenter = \"lab1\"\ntags = {}\nslices = { s1 = [0, 31] }\n",
	  22, 21, "beyond the port range" },
	{ "two servers own one slice", kHead +
	  "\n[[addresses]]\naddress = \"198.51.100.1\"\ndatacenter = \"lab1\"\ntags = {}\nslices = { s1 = 3, s2 = 3 }\n",
	  22, 25, "given to both 's1' and 's2'" },
	{ "duplicate server name", kHead + "\n[[servers]]\nname = \"s1\"\naddress = \"192.0.2.13\"\ndatacenter = \"lab1\"\n",
	  19, 8, "duplicate server name" },
	{ "duplicate shared address", kHead + kAddress + kAddress, 25, 11, "duplicate shared address" },
	{ "unknown server in slices", kHead +
	  "\n[[addresses]]\naddress = \"198.51.100.1\"\ndatacenter = \"lab1\"\ntags = {}\nslices = { s9 = 0 }\n",
	  22, 17, "unknown server 's9'" },
	{ "unknown data centre", kHead + "\n[[servers]]\nname = \"s3\"\naddress = \"192.0.2.13\"\ndatacenter = \"lab9\"\n",
	  21, 14, "unknown data centre 'lab9'" },
	{ "[server].name not in [[servers]]",
	  "[server]\nname = \"s7\"\nuplink = \"eth0\"\n[[datacenters]]\nname = \"x\"\n[[servers]]\nname = \"s1\"\naddress = \"192.0.2.1\"\ndatacenter = \"x\"\n",
	  2, 8, "not one of [[servers]]" },
	{ "block on a conntrack source", kHead + kAddress +
	  "\n[[sources]]\nname = \"a\"\nmatch = { saddr = \"100.64.1.0/24\" }\nwant = {}\nblock = 64\n",
	  28, 9, "applies only to nat = \"stateless\"" },
	{ "stateless source without saddr", kHead + kAddress +
	  "\n[[sources]]\nname = \"a\"\nmatch = { uid = 5 }\nwant = {}\nnat = \"stateless\"\nblock = 64\n",
	  26, 9, "needs 'saddr'" },
	{ "zone out of range", kHead + kAddress +
	  "\n[[sources]]\nname = \"a\"\nmatch = { uid = 5 }\nwant = {}\nzone = 70000\n",
	  28, 8, "between 1 and 65535" },
	{ "zone shared by two sources", kHead + kAddress +
	  "\n[[sources]]\nname = \"a\"\nmatch = { uid = 5 }\nwant = {}\nzone = 7\n"
	  "\n[[sources]]\nname = \"b\"\nmatch = { uid = 6 }\nwant = {}\nzone = 7\n",
	  34, 8, "zone 7 is already used by source 'a'" },
	{ "overlapping stateless sources", kHead + kAddress +
	  "\n[[sources]]\nname = \"a\"\nmatch = { saddr = \"100.64.1.0/28\" }\nwant = {}\nnat = \"stateless\"\nblock = 64\n"
	  "\n[[sources]]\nname = \"b\"\nmatch = { saddr = \"100.64.1.8/29\" }\nwant = {}\nnat = \"stateless\"\nblock = 64\n",
	  33, 19, "overlap" },
	{ "invalid nat mode", kHead + kAddress + "\n[[sources]]\nname = \"a\"\nmatch = { uid = 5 }\nwant = {}\nnat = \"masquerade\"\n",
	  28, 7, "must be \"conntrack\" or \"stateless\"" },
	{ "empty match", kHead + kAddress + "\n[[sources]]\nname = \"a\"\nmatch = {}\nwant = {}\n", 26, 9,
	  "needs one or more of" },
};

TEST_P(ConfigErrors, AreTheSameWhenTheFileIsLoadedInChunks)
{
	// A chunk at every top-level header: the diagnostics of one document.
	const ErrorCase &c = GetParam();
	auto whole = loadString(c.text, "fleet.toml", SIZE_MAX);
	auto chunked = loadString(c.text, "fleet.toml", 1);
	ASSERT_EQ(chunked.diagnostics.size(), whole.diagnostics.size()) << c.description;
	for (size_t i = 0; i < whole.diagnostics.size(); i++)
		EXPECT_EQ(chunked.diagnostics[i].str(), whole.diagnostics[i].str()) << c.description;
}

INSTANTIATE_TEST_SUITE_P(Spec, ConfigErrors, testing::ValuesIn(kCases));

TEST(Config, ReportsEveryErrorOfAFileNotJustTheFirst)
{
	auto result = loadString(kHead + "\n[defaults]\nport_range = \"9-1\"\nslice_size = 0\nbogus = 1\n", "f.toml");
	ASSERT_FALSE(result.ok());
	EXPECT_GE(result.diagnostics.size(), 3u);
}

TEST(Config, FormatsDiagnosticsLikeACompiler)
{
	auto result = loadString("[server]\nname = \"s1\"\n", "fleet.toml");
	ASSERT_FALSE(result.ok());
	EXPECT_EQ(result.diagnostics[0].str(), "fleet.toml:1:1: error: [server] lacks required key 'uplink'");
}

TEST(Config, AcceptsUnicastAddressesNextToTheOnesItRejects)
{
	auto result = loadString(kHead + "mac = \"02:00:00:00:00:12\"\n\n[[datacenters]]\nname = \"lab2\"\ngateway = \"1.0.0.1\"\n"
				 "\n[[servers]]\nname = \"s3\"\naddress = \"126.255.255.254\"\ndatacenter = \"lab2\"\n"
				 "mac = \"fe:00:00:00:00:01\"\n"
				 "\n[[addresses]]\naddress = \"223.255.255.254\"\ndatacenter = \"lab1\"\ntags = {}\nslices = {}\n"
				 "\n[[addresses]]\naddress = \"128.0.0.1\"\ndatacenter = \"lab1\"\ntags = {}\nslices = {}\n",
				 "f.toml");
	EXPECT_TRUE(result.ok()) << (result.diagnostics.empty() ? "" : result.diagnostics[0].str());
}

TEST(Config, AnAddressThatIsNotUnicastIsOneErrorNotAFollowOnOfMore)
{
	// The server stays in the fleet, so its slices and [server].name raise nothing more.
	auto result = loadString("[server]\nname = \"s1\"\nuplink = \"eth0\"\n[[datacenters]]\nname = \"lab1\"\n"
				 "[[servers]]\nname = \"s1\"\naddress = \"224.0.0.1\"\ndatacenter = \"lab1\"\n"
				 "[[addresses]]\naddress = \"198.51.100.1\"\ndatacenter = \"lab1\"\ntags = {}\nslices = { s1 = 0 }\n",
				 "f.toml");
	ASSERT_EQ(result.diagnostics.size(), 1u);
	EXPECT_EQ(result.diagnostics[0].str(), "f.toml:8:11: error: 'address': 224.0.0.1 is a multicast address, not a unicast one");
}

// Every diagnostic of a load, as printed.
std::vector<std::string> printed(const std::string &text)
{
	std::vector<std::string> out;
	for (const Diagnostic &d : loadString(text, "f.toml").diagnostics)
		out.push_back(d.str());
	return out;
}

TEST(Config, AnUnknownServerIsReportedOnceHoweverManySlicesItLists)
{
	EXPECT_EQ(printed(kHead + "\n[[addresses]]\naddress = \"198.51.100.1\"\ndatacenter = \"lab1\"\ntags = {}\n"
				  "slices = { s1 = 0, s3 = [2, 5] }\nprevious = { s4 = [3, 4] }\n"),
		  (std::vector<std::string>{
			  "f.toml:22:26: error: slices of 198.51.100.1 name unknown server 's3' (known: s1, s2)",
			  "f.toml:23:20: error: 'previous' names unknown server 's4' (known: s1, s2)" }));
}

TEST(Config, ADuplicateServerNameIsListedOnceAmongTheKnown)
{
	std::vector<std::string> d = printed(kHead + "\n[[servers]]\nname = \"s2\"\naddress = \"192.0.2.13\"\n"
						     "datacenter = \"lab1\"\n\n[[servers]]\nname = \"s4\"\naddress = \"192.0.2.14\"\n"
						     "datacenter = \"lab9\"\n");
	EXPECT_EQ(d, (std::vector<std::string>{
			     "f.toml:19:8: error: duplicate server name 's2'",
			     "f.toml:26:14: error: server 's4' names unknown data centre 'lab9' (known: lab1)" }));
	d = printed(kHead + "\n[[servers]]\nname = \"s2\"\naddress = \"192.0.2.13\"\ndatacenter = \"lab1\"\n"
			    "\n[[addresses]]\naddress = \"198.51.100.1\"\ndatacenter = \"lab1\"\ntags = {}\nslices = { s9 = 0 }\n");
	ASSERT_EQ(d.size(), 2u);
	EXPECT_EQ(d[1], "f.toml:27:17: error: slices of 198.51.100.1 name unknown server 's9' (known: s1, s2)");
}

TEST(Config, ASliceListedTwiceForOneServerSaysSo)
{
	EXPECT_EQ(printed(kHead + "\n[[addresses]]\naddress = \"198.51.100.1\"\ndatacenter = \"lab1\"\ntags = {}\n"
				  "slices = { s2 = [2, 2] }\n"),
		  (std::vector<std::string>{ "f.toml:22:21: error: slice 2 is listed twice for 's2'" }));
}

TEST(Config, EmptyNamesAreRejected)
{
	EXPECT_EQ(printed(kHead + "\n[[datacenters]]\nname = \"\"\n"),
		  (std::vector<std::string>{ "f.toml:19:8: error: data centre name must not be empty" }));
	std::vector<std::string> server = printed(kHead + "\n[[servers]]\nname = \"\"\naddress = \"192.0.2.13\"\ndatacenter = \"lab1\"\n");
	ASSERT_EQ(server.size(), 1u);
	EXPECT_TRUE(server[0].starts_with("f.toml:19:8: error: server name '' must be 1-64 characters")) << server[0];
	std::vector<std::string> source = printed(kHead + kAddress + "\n[[sources]]\nname = \"\"\nmatch = { uid = 5 }\nwant = {}\n");
	ASSERT_EQ(source.size(), 1u);
	EXPECT_TRUE(source[0].starts_with("f.toml:25:8: error: source name '' must be 1-64")) << source[0];
}

TEST(Config, ARegionOfACountryThatIsNoCountryBlamesTheCountry)
{
	const std::string address = "\n[[addresses]]\naddress = \"198.51.100.1\"\ndatacenter = \"lab1\"\nslices = {}\ntags = ";
	std::vector<std::string> d = printed(kHead + address + "{ country = \"XX\", region = \"GB-ENG\" }\n");
	ASSERT_EQ(d.size(), 1u);
	EXPECT_TRUE(d[0].starts_with("f.toml:22:20: error: tags.country 'XX' is not an ISO 3166-1 alpha-2 code")) << d[0];
	EXPECT_EQ(printed(kHead + address + "{ country = \"XX\", region = \"XX-01\" }\n").at(1),
		  "f.toml:22:35: error: tags.region 'XX-01' is not an ISO 3166-2 code of any country (such as GB-ENG or DE-BE)");
	for (const std::string &d2 : printed(kHead + address + "{ country = \"\", region = \"XX-01\" }\n"))
		EXPECT_EQ(d2.find("no 'country' tag"), std::string::npos) << d2;
	EXPECT_NE(printed(kHead + address + "{ region = \"XX-01\" }\n").at(0).find("(it has no 'country' tag)"),
		  std::string::npos);
}

TEST(Config, PrintsErrorsInTheOrderOfTheFile)
{
	// The data centre's error comes from a later part of the loader than
	// [defaults]' but stands earlier in the file.
	const std::string text = "[[datacenters]]\nname = \"\"\n" + kHead + "\n[defaults]\nslice_size = 0\nbogus = 1\n";
	std::vector<std::string> d = printed(text);
	ASSERT_EQ(d.size(), 3u);
	EXPECT_TRUE(d[0].starts_with("f.toml:2:8: ")) << d[0];
	EXPECT_TRUE(d[1].starts_with("f.toml:21:14: ")) << d[1];
	EXPECT_TRUE(d[2].starts_with("f.toml:22:1: ")) << d[2];
	auto chunked = loadString(text, "f.toml", 1);
	ASSERT_EQ(chunked.diagnostics.size(), 3u);
	for (size_t i = 0; i < d.size(); i++)
		EXPECT_EQ(chunked.diagnostics[i].str(), d[i]);
}

TEST(Config, LoadsAValidFleetWithDefaultsAndOverrides)
{
	auto result = loadString(kHead + kAddress + "port_range = \"10000-19999\"\nslice_size = 1000\n", "f.toml");
	ASSERT_TRUE(result.ok()) << (result.diagnostics.empty() ? "" : result.diagnostics[0].str());
	const auto &a = result.config->addresses.at(0);
	EXPECT_EQ(a.portRange.lo, 10000);
	EXPECT_EQ(a.portRange.hi, 19999);
	EXPECT_EQ(a.sliceCount(), 10u);
	EXPECT_EQ(a.owners.at(1), "s2");
}

// A fresh directory under the temporary one, removed with what it holds.
struct TempDir {
	std::filesystem::path path;
	TempDir()
	{
		std::string pattern = (std::filesystem::temp_directory_path() / "portslice-config-test-XXXXXX").string();
		path = ::mkdtemp(pattern.data());
	}
	~TempDir() { std::filesystem::remove_all(path); }
};

TEST(ConfigFile, ADirectoryIsAClearErrorNotACrash)
{
	TempDir dir;
	auto result = loadFile(dir.path.string());
	ASSERT_FALSE(result.ok());
	ASSERT_EQ(result.diagnostics.size(), 1u);
	EXPECT_EQ(result.diagnostics[0].str(), dir.path.string() + ": error: cannot read config file: Is a directory");
}

TEST(ConfigFile, AMissingFileSaysSo)
{
	TempDir dir;
	auto result = loadFile((dir.path / "absent.toml").string());
	ASSERT_FALSE(result.ok());
	ASSERT_EQ(result.diagnostics.size(), 1u);
	EXPECT_NE(result.diagnostics[0].str().find("cannot read config file: No such file or directory"),
		  std::string::npos)
		<< result.diagnostics[0].str();
}

TEST(ConfigFile, APipeIsReadToItsEnd)
{
	// --config /dev/stdin or <(...): a pipe, which cannot seek. A reader
	// that gives up early must fail the test, not kill it with SIGPIPE.
	::signal(SIGPIPE, SIG_IGN);
	TempDir dir;
	std::string fifo = (dir.path / "fleet.toml").string();
	ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
	// Bigger than a pipe's buffer, so the reader must loop.
	std::string text = kHead + kAddress + std::string(200000, '#') + "\n";
	std::thread writer([&] { std::ofstream(fifo) << text; });
	auto result = loadFile(fifo);
	writer.join();
	ASSERT_TRUE(result.ok()) << (result.diagnostics.empty() ? "" : result.diagnostics[0].str());
	EXPECT_EQ(result.config->addresses.size(), 1u);
	EXPECT_EQ(portslice::config::readText("/dev/null"), std::optional<std::string>(""));
}

TEST(ConfigFile, ARegularFileIsReadWhole)
{
	TempDir dir;
	std::string file = (dir.path / "fleet.toml").string();
	std::ofstream(file) << kHead << kAddress;
	EXPECT_EQ(portslice::config::readText(file), std::optional<std::string>(kHead + kAddress));
	EXPECT_TRUE(loadFile(file).ok());
}

} // namespace

namespace {

using portslice::config::SliceOwners;

TEST(SliceOwners, ReadsLikeAMapOfSliceToServerInSliceOrder)
{
	SliceOwners o{ { 5, "s2" }, { 1, "s1" }, { 3, "s2" } };
	ASSERT_EQ(o.size(), 3u);
	std::vector<std::pair<uint32_t, std::string>> seen;
	for (const auto &[slice, server] : o)
		seen.emplace_back(slice, server);
	EXPECT_EQ(seen, (std::vector<std::pair<uint32_t, std::string>>{ { 1, "s1" }, { 3, "s2" }, { 5, "s2" } }));
	auto it = o.find(3);
	ASSERT_NE(it, o.end());
	EXPECT_EQ(it->first, 3u);
	EXPECT_EQ(it->second, "s2");
	EXPECT_EQ(o.find(4), o.end());
	EXPECT_EQ(o.count(5), 1u);
	EXPECT_EQ(o.count(0), 0u);
	EXPECT_EQ(o.at(1), "s1");
	EXPECT_THROW((void)o.at(2), std::out_of_range);
}

TEST(SliceOwners, AssignsInsertsAndErasesLikeAMap)
{
	SliceOwners o;
	o[7] = "s3";
	o[2] = std::string("s1");
	o[7] = "s1"; // overwrite
	EXPECT_TRUE(o[7] == "s1");
	EXPECT_TRUE(o[2] != std::string("s3"));
	EXPECT_EQ(o.size(), 2u);
	auto [where, inserted] = o.emplace(2, "s9");
	EXPECT_FALSE(inserted);
	EXPECT_EQ(where->second, "s1");
	EXPECT_EQ(o.erase(2), 1u);
	EXPECT_EQ(o.erase(2), 0u);
	EXPECT_EQ(o, (SliceOwners{ { 7, "s1" } }));
	// Like std::map, reading an absent slice through [] gives it "".
	EXPECT_TRUE(o[9] == "");
	EXPECT_EQ(o.size(), 2u);
}

TEST(SliceOwners, CopiesOfALoadedConfigChangeIndependently)
{
	auto result = loadString(kHead + kAddress, "f.toml");
	ASSERT_TRUE(result.ok());
	portslice::config::Config copy = *result.config;
	SliceOwners &mine = copy.addresses[0].owners;
	mine[0] = "s2";
	mine[5] = "s-new"; // a name the shared table lacks
	const SliceOwners &theirs = result.config->addresses[0].owners;
	EXPECT_EQ(theirs.at(0), "s1");
	EXPECT_EQ(theirs.count(5), 0u);
	EXPECT_EQ(mine.at(0), "s2");
	EXPECT_EQ(mine.at(5), "s-new");
	EXPECT_FALSE(mine == theirs);
	mine[0] = "s1";
	mine.erase(5);
	EXPECT_EQ(mine, theirs);
}

} // namespace
