// SPDX-License-Identifier: MIT
// The Prometheus text of Stats() rows: docs/operations.md's metric names and labels, ratios 0-1, promtool-clean; the metrics file is replaced atomically.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <sys/wait.h>
#include <unistd.h>

#include "service/metrics.h"

namespace {

using portslice::service::StatRow;
namespace fs = std::filesystem;

// What a daemon with one conntrack source (1536 ports on 198.51.100.1, all in
// use) and one stateless source reports.
const std::vector<StatRow> kRows = {
	{"source", "warp", "packets", 400},
	{"source", "warp", "bytes", 12000},
	{"source", "warp", "conntrack_entries", 1536},
	{"source", "warp", "nat_failures", 242},
	{"guard", "warp", "drops", 0},
	{"source", "batch", "packets", 7},
	{"guard", "other", "drops", 3},
	{"address", "198.51.100.1", "packets", 407},
	{"xdp", "pass_own", "packets", 99},
	{"zone", "10", "entries", 1536},
	{"source_address", "warp 198.51.100.1", "ports_in_use", 1536},
	{"source_address", "warp 198.51.100.1", "ports", 1536},
	{"source_address", "warp 198.51.100.2", "ports_in_use", 384},
	{"source_address", "warp 198.51.100.2", "ports", 1536},
	{"slice", "198.51.100.1/0", "ports_in_use", 1536},
	{"slice", "198.51.100.1/0", "percent_in_use", 75},
	{"slice", "198.51.100.1/0", "ports", 2048},
	{"daemon", "s1", "generation", 7},
	{"daemon", "s1", "apply_failures", 2},
	{"daemon", "0.9.9", "version", 1},
	{"daemon", "s1", "last_apply_timestamp_seconds", 1795000000},
};

std::string text()
{
	return portslice::service::prometheusText({"0.1.0", "s1", "degraded"}, kRows);
}

bool has(const std::string &line)
{
	std::string t = "\n" + text();
	return t.find("\n" + line + "\n") != std::string::npos;
}

TEST(Metrics, NamesAndLabelsAreThoseOfTheSpec)
{
	EXPECT_TRUE(has("portslice_info{version=\"0.9.9\",server=\"s1\"} 1")) << text();
	EXPECT_TRUE(has("portslice_generation 7")) << text();
	EXPECT_TRUE(has("portslice_state{state=\"degraded\"} 1")) << text();
	EXPECT_TRUE(has("portslice_state{state=\"applied\"} 0")) << text();
	EXPECT_TRUE(has("portslice_last_apply_timestamp_seconds 1795000000")) << text();
	EXPECT_TRUE(has("portslice_apply_failures_total 2")) << text();
	EXPECT_TRUE(has("portslice_source_nat_failures_total{source=\"warp\"} 242")) << text();
	EXPECT_TRUE(has("portslice_source_packets_total{source=\"warp\"} 400")) << text();
	EXPECT_TRUE(has("portslice_guard_drops_total{source=\"warp\"} 0")) << text();
	EXPECT_TRUE(has("portslice_guard_other_drops_total 3")) << text();
	EXPECT_TRUE(has("portslice_xdp_packets_total{verdict=\"pass_own\"} 99")) << text();
	EXPECT_TRUE(has("portslice_address_packets_total{address=\"198.51.100.1\"} 407")) << text();
	EXPECT_TRUE(has("portslice_slice_ports_in_use{address=\"198.51.100.1\",slice=\"0\"} 1536")) << text();
}

TEST(Metrics, ExhaustionIsTheRatioOfTheSourcesOwnRangeNotOfTheSlice)
{
	// Its range full: 1, where the slice (2048 ports) is only 0.75 used.
	EXPECT_TRUE(has("portslice_source_ports_in_use_ratio{source=\"warp\",address=\"198.51.100.1\"} 1")) << text();
	EXPECT_TRUE(has("portslice_source_ports_in_use_ratio{source=\"warp\",address=\"198.51.100.2\"} 0.25")) << text();
	EXPECT_TRUE(has("portslice_slice_ports_in_use_ratio{address=\"198.51.100.1\",slice=\"0\"} 0.75")) << text();
}

TEST(Metrics, EveryMetricHasOneHelpAndOneTypeLine)
{
	std::istringstream lines(text());
	std::map<std::string, int> help, type;
	std::set<std::string> sampled;
	for (std::string line; std::getline(lines, line);) {
		std::istringstream words(line);
		std::string a, b, name;
		words >> a;
		if (a == "#") {
			words >> b >> name;
			(b == "HELP" ? help : type)[name]++;
			if (b == "HELP") {
				std::string rest;
				std::getline(words, rest);
				EXPECT_GT(rest.size(), 10u) << "HELP of " << name << " says nothing";
			}
		} else {
			sampled.insert(a.substr(0, a.find('{')));
		}
	}
	for (const std::string &name : sampled) {
		EXPECT_EQ(help[name], 1) << name;
		EXPECT_EQ(type[name], 1) << name;
	}
}

TEST(Metrics, PromtoolFindsNothingToCriticise)
{
	if (::system("promtool --version >/dev/null 2>&1") != 0)
		GTEST_SKIP() << "promtool is not installed (Debian package prometheus): cannot check the exposition";
	fs::path file = fs::temp_directory_path() / ("portslice-metrics-" + std::to_string(::getpid()) + ".prom");
	std::ofstream(file) << text();
	std::string command = "promtool check metrics < " + file.string() + " 2>&1";
	FILE *pipe = ::popen(command.c_str(), "r");
	ASSERT_NE(pipe, nullptr);
	std::string out;
	char buffer[4096];
	for (size_t n; (n = ::fread(buffer, 1, sizeof(buffer), pipe)) > 0;)
		out.append(buffer, n);
	int status = ::pclose(pipe);
	fs::remove(file);
	EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << out << text();
	EXPECT_EQ(out, "") << text();
}

TEST(Metrics, TheFileIsReplacedWholeAndAFailedWriteKeepsTheOldOne)
{
	fs::path dir = fs::temp_directory_path() / ("portslice-metrics-dir-" + std::to_string(::getpid()));
	fs::create_directories(dir);
	fs::path file = dir / "portslice.prom";
	ASSERT_TRUE(portslice::service::writeFileAtomically(file, "first\n"));
	ASSERT_TRUE(portslice::service::writeFileAtomically(file, text()));
	std::ifstream in(file);
	std::stringstream got;
	got << in.rdbuf();
	EXPECT_EQ(got.str(), text());
	// Only the file itself is left: the temporary file was renamed.
	EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
	fs::remove_all(dir);
	EXPECT_FALSE(portslice::service::writeFileAtomically(dir / "portslice.prom", "x"));
}

} // namespace
