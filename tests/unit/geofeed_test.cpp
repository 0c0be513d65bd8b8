// SPDX-License-Identifier: MIT
// The geofeed: ISO 3166 codes checked with FILE:LINE:COL, fields quoted by RFC 4180 and read back by Python's csv module.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "ctl/offline.h"

namespace portslice::ctl {
namespace {

namespace fs = std::filesystem;

std::string fleet(const std::string &tags1, const std::string &tags2)
{
	return R"([server]
name = "s1"
uplink = "eth0"

[[datacenters]]
name = "lab1"
gateway = "192.0.2.1"

[[servers]]
name = "s1"
address = "192.0.2.11"
datacenter = "lab1"

[[addresses]]
address = "198.51.100.1"
datacenter = "lab1"
tags = )" + tags1 + R"(
slices = { s1 = 0 }

[[addresses]]
address = "198.51.100.2"
datacenter = "lab1"
tags = )" + tags2 + R"(
slices = { s1 = 0 }
)";
}

class Geofeed : public ::testing::Test {
protected:
	void SetUp() override
	{
		std::string pattern = (fs::temp_directory_path() / "psd-geofeed-XXXXXX").string();
		ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
		dir_ = pattern;
	}
	void TearDown() override { fs::remove_all(dir_); }

	OfflineOptions options(const std::string &text)
	{
		OfflineOptions o;
		o.config = (dir_ / "fleet.toml").string();
		std::ofstream(o.config) << text;
		return o;
	}

	// Python's csv module reads the file: one line per row, fields separated by '|'.
	std::string pythonRows(const std::string &csv)
	{
		std::string path = (dir_ / "feed.csv").string();
		std::ofstream(path, std::ios::binary) << csv;
		std::string command = "python3 -c 'import csv,sys\n"
				      "for r in csv.reader(open(sys.argv[1], newline=\"\")):\n"
				      "    if r and not r[0].startswith(\"#\"): print(\"|\".join(r))' " +
				      path;
		FILE *pipe = ::popen(command.c_str(), "r");
		std::string out;
		char buffer[4096];
		size_t n;
		while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0)
			out.append(buffer, n);
		EXPECT_EQ(::pclose(pipe), 0);
		return out;
	}

	fs::path dir_;
};

TEST_F(Geofeed, FieldsWithCommasAndQuotesAreQuotedAsPythonsCsvReadsThem)
{
	OfflineOptions o = options(fleet(R"({ country = "DE", region = "DE-BE", city = "Berlin, Mitte" })",
					 R"({ country = "GB", region = "GB-ENG", city = "King's \"Lynn\"" })"));
	std::ostringstream out, err;
	ASSERT_EQ(runGeofeed(o, out, err), 0) << err.str();
	EXPECT_NE(out.str().find("198.51.100.1/32,DE,DE-BE,\"Berlin, Mitte\",\n"), std::string::npos) << out.str();
	EXPECT_EQ(pythonRows(out.str()), "198.51.100.1/32|DE|DE-BE|Berlin, Mitte|\n"
					 "198.51.100.2/32|GB|GB-ENG|King's \"Lynn\"|\n");
	std::ostringstream checkOut, checkErr;
	EXPECT_EQ(runCheck(o, checkOut, checkErr), 0) << checkErr.str();
}

TEST_F(Geofeed, BadTagsAreErrorsAtTheirLineAndColumnWithTheCodeMeant)
{
	struct Case {
		const char *tags;
		const char *message;
	};
	const Case cases[] = {
		{R"({ country = "Germany" })", "country 'Germany' is not an ISO 3166-1 alpha-2 code"},
		{R"({ country = "Germany" })", "did you mean 'DE' (Germany)?"},
		{R"({ country = "UK" })", "did you mean 'GB' (United Kingdom)?"},
		{R"({ country = "gb" })", "did you mean 'GB'"},
		{R"({ country = "XX" })", "country 'XX' is not an ISO 3166-1 alpha-2 code"},
		{R"({ country = "DEU" })", "country 'DEU' is not an ISO 3166-1 alpha-2 code"},
		{R"({ country = "" })", "country '' is not an ISO 3166-1 alpha-2 code"},
		{R"({ country = "DE", region = "DE-XX" })", "region 'DE-XX' is not an ISO 3166-2 code of country 'DE'"},
		{R"({ country = "DE", region = "FR-75C" })", "region 'FR-75C' is not an ISO 3166-2 code of country 'DE'"},
		{R"({ country = "GB", region = "ENG" })", "did you mean 'GB-ENG'?"},
		{R"({ region = "GB-ENG" })", "it has no 'country' tag"},
		{R"({ country = "DE", city = "Berlin\nMitte" })", "city 'Berlin\nMitte' holds a control character"},
	};
	for (const Case &c : cases) {
		OfflineOptions o = options(fleet(R"({ country = "GB" })", c.tags));
		std::ostringstream out, err;
		EXPECT_EQ(runCheck(o, out, err), 1) << c.tags;
		// The second address's tags are on line 23 of the file.
		EXPECT_NE(err.str().find(o.config + ":23:"), std::string::npos) << c.tags << "\n" << err.str();
		EXPECT_NE(err.str().find(c.message), std::string::npos) << c.tags << "\n" << err.str();
		std::ostringstream feed, feedErr;
		EXPECT_EQ(runGeofeed(o, feed, feedErr), 1) << c.tags;
	}
}

} // namespace
} // namespace portslice::ctl
