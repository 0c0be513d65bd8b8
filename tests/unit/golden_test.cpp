// SPDX-License-Identifier: MIT
// Golden dumps: `portslicectl dump` of every example in rules/ equals its .nft file, and the real nft accepts it.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include "config/config.h"
#include "ctl/offline.h"
#include "plan/plan.h"

namespace fs = std::filesystem;

namespace {

std::string readFile(const fs::path &p)
{
	std::ifstream in(p);
	std::stringstream s;
	s << in.rdbuf();
	return s.str();
}

std::vector<fs::path> examples()
{
	std::vector<fs::path> out;
	for (const auto &e : fs::directory_iterator(RULES_DIR))
		if (e.path().extension() == ".toml")
			out.push_back(e.path());
	std::sort(out.begin(), out.end());
	return out;
}

std::string dump(const fs::path &toml)
{
	portslice::ctl::OfflineOptions o;
	o.config = toml;
	std::ostringstream out, err;
	EXPECT_EQ(portslice::ctl::runDump(o, out, err), 0) << err.str();
	return out.str();
}

TEST(Golden, DumpOfEveryExampleEqualsItsFileInRules)
{
	auto all = examples();
	ASSERT_GE(all.size(), 4u);
	for (const fs::path &toml : all) {
		fs::path golden = fs::path(toml).replace_extension(".nft");
		ASSERT_TRUE(fs::exists(golden)) << golden << " is missing";
		EXPECT_EQ(dump(toml), readFile(golden))
			<< toml << ": dump differs from " << golden
			<< " (regenerate with portslicectl dump --config " << toml.string() << ")";
	}
}

// The abuse-desk query is the plan read backwards: for every example, every
// address and every port, owner() names the server and inside address whose
// plan holds that port, and nobody for a port no plan holds.
TEST(Owner, AgreesWithEveryServersPlanForEveryPortOfEveryExample)
{
	using namespace portslice;
	for (const fs::path &toml : examples()) {
		auto loaded = config::loadFile(toml);
		ASSERT_TRUE(loaded.ok()) << toml;
		const config::Config &c = *loaded.config;
		for (const config::Address &address : c.addresses) {
			std::map<uint32_t, std::string> expected; // port -> "server source inside"
			for (const config::Server &server : c.servers) {
				auto planned = plan::makePlan(c, server.name);
				if (!planned.ok())
					continue; // e.g. blocks that do not fit this server: check reports it
				for (const auto &s : planned.plan->sources)
					for (const auto &as : s.assignments)
						if (planned.plan->addresses[as.address].address == address.address)
							for (uint32_t p = as.ports.lo; p <= as.ports.hi; p++)
								expected[p] = server.name + " " + s.name + " " + as.first.str();
			}
			for (uint32_t port = 1; port <= 65535; port++) {
				auto answer = plan::findOwner(c, address.address, static_cast<uint16_t>(port));
				ASSERT_TRUE(answer);
				auto it = expected.find(port);
				std::string got = answer->source.empty()
							  ? std::string()
							  : answer->server + " " + answer->source + " " + answer->inside->str();
				ASSERT_EQ(got, it == expected.end() ? std::string() : it->second)
					<< toml << " " << address.address.str() << ":" << port;
			}
		}
	}
}

// `nft -c -f` in a fresh, unnamed network namespace: the kernel checks the
// whole table, nothing is committed, the host's ruleset is never touched.
TEST(Golden, RealNftAcceptsEveryGoldenDump)
{
	if (geteuid() != 0)
		GTEST_SKIP() << "needs root for a network namespace (unshare --net)";
	if (system("command -v nft >/dev/null && command -v unshare >/dev/null") != 0)
		GTEST_SKIP() << "nft or unshare not installed";
	for (const fs::path &toml : examples()) {
		fs::path golden = fs::path(toml).replace_extension(".nft");
		std::string cmd = "unshare --net nft -c -f '" + golden.string() + "' 2>&1";
		FILE *p = popen(cmd.c_str(), "r");
		ASSERT_NE(p, nullptr);
		std::string output;
		char buf[512];
		while (fgets(buf, sizeof(buf), p))
			output += buf;
		int status = pclose(p);
		EXPECT_EQ(status, 0) << golden << ":\n" << output;
	}
}

} // namespace
