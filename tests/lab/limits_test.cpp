// SPDX-License-Identifier: MIT
// `check` accepts exactly what applies: every config of tests/limits/corpus.txt that check accepts applies in a namespace, every one it rejects fails --apply-once with the same first error.
#include "ns_lab.h"

#include <chrono>

namespace portslice::dbuslab {
namespace {

struct Entry {
	std::string name;
	std::string text;
};

std::vector<Entry> readCorpus(const std::string &path)
{
	std::vector<Entry> entries;
	std::istringstream in(readFile(path));
	for (std::string line; std::getline(in, line);) {
		if (line.rfind("#### ", 0) == 0)
			entries.push_back({line.substr(5), ""});
		else if (!entries.empty())
			entries.back().text += line + "\n";
	}
	return entries;
}

// The first "error:" line of a run's output, or "".
std::string firstError(const std::string &out)
{
	std::istringstream in(out);
	for (std::string line; std::getline(in, line);)
		if (line.find(": error: ") != std::string::npos)
			return line;
	return "";
}

using LimitsLab = NsLab;

TEST_F(LimitsLab, CheckAcceptsExactlyTheConfigsThatApplyAndRejectsTheOthersWithTheSameFirstError)
{
	std::vector<Entry> corpus = readCorpus(std::string(PSD_SOURCE_ROOT) + "/tests/limits/corpus.txt");
	ASSERT_GT(corpus.size(), 300u);
	std::string config = configPath();
	size_t accepted = 0, rejected = 0;
	std::vector<std::string> wrong;
	auto start = std::chrono::steady_clock::now();
	for (const Entry &e : corpus) {
		std::ofstream(config, std::ios::trunc) << e.text;
		Outcome check = sh(bin("src/ctl/portslicectl") + " check --config " + quote(config));
		Outcome apply = daemon("--apply-once");
		if (check.ok()) {
			accepted++;
			if (!apply.ok())
				wrong.push_back(e.name + ": check accepts, --apply-once fails:\n" + apply.output);
		} else {
			rejected++;
			std::string expected = firstError(check.output);
			if (expected.empty())
				wrong.push_back(e.name + ": check fails with no error line:\n" + check.output);
			else if (apply.status != 1 || firstError(apply.output) != expected)
				wrong.push_back(e.name + ": check says\n  " + expected + "\n--apply-once (exit " +
						std::to_string(apply.status) + ") says\n" + apply.output);
		}
	}
	double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
	std::printf("%zu configs: %zu accepted, %zu rejected, %.1f s\n", corpus.size(), accepted, rejected, seconds);
	std::string report;
	for (const std::string &w : wrong)
		report += w + "\n";
	EXPECT_TRUE(wrong.empty()) << wrong.size() << " disagreements:\n" << report;
	// Both kinds are there: the corpus tests the limits from both sides.
	EXPECT_GT(accepted, 50u);
	EXPECT_GT(rejected, 50u);
	Outcome removed = daemon("--remove");
	EXPECT_TRUE(removed.ok()) << removed.output;
}

} // namespace
} // namespace portslice::dbuslab
