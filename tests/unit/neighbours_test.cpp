// SPDX-License-Identifier: MIT
// daemon::neighbourTargets: which of the forwarder's targets get a managed neighbour entry (servers without `mac` it may send to, other data centres' gateways).
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "config/config.h"
#include "daemon/neighbours.h"
#include "plan/plan.h"

using namespace portslice;

namespace {

std::string readRules()
{
	std::ifstream in(std::string(RULES_DIR) + "/two-datacenters.toml");
	std::stringstream text;
	text << in.rdbuf();
	return text.str();
}

// The targets' addresses of `text` planned as `server`.
std::vector<std::string> targets(const std::string &text, const std::string &server)
{
	config::LoadResult loaded = config::loadString(text, "neighbours.toml");
	for (const config::Diagnostic &d : loaded.diagnostics)
		if (d.severity == config::Diagnostic::Severity::Error)
			ADD_FAILURE() << d.str();
	if (!loaded.ok())
		return {};
	plan::PlanResult planned = plan::makePlan(*loaded.config, server);
	for (const config::Diagnostic &d : planned.diagnostics)
		if (d.severity == config::Diagnostic::Severity::Error)
			ADD_FAILURE() << d.str();
	if (!planned.ok())
		return {};
	std::vector<std::string> out;
	for (const daemon::NeighbourTarget &t : daemon::neighbourTargets(*planned.plan))
		out.push_back(t.address.str());
	return out;
}

void replace(std::string &text, const std::string &from, const std::string &to)
{
	size_t at = text.find(from);
	ASSERT_NE(at, std::string::npos) << from;
	text.replace(at, from.size(), to);
}

TEST(NeighbourTargets, ServersOfThisDataCentreAndOtherDataCentresGateways)
{
	std::string rules = readRules();
	// s1 (lon): s2, and fra's gateway for fra's address; not itself, not
	// f1 (fra, no lon slice), not lon's own gateway.
	EXPECT_EQ(targets(rules, "s1"), (std::vector<std::string>{"192.0.2.12", "203.0.113.1"}));
	// f1 (fra): nobody of fra but itself; lon's gateway for lon's addresses.
	EXPECT_EQ(targets(rules, "f1"), (std::vector<std::string>{"192.0.2.1"}));
}

TEST(NeighbourTargets, AServerWithAMacNeedsNone)
{
	std::string rules = readRules();
	replace(rules, "address = \"192.0.2.12\"\n", "address = \"192.0.2.12\"\nmac = \"02:00:00:00:00:12\"\n");
	EXPECT_EQ(targets(rules, "s1"), (std::vector<std::string>{"203.0.113.1"}));
}

TEST(NeighbourTargets, AServerOfAnotherDataCentreOwningALocalSliceIsOne)
{
	std::string rules = readRules();
	replace(rules, "slices = { s1 = 0, s2 = 1 }", "slices = { s1 = 0, s2 = 1, f1 = 2 }");
	EXPECT_EQ(targets(rules, "s1"), (std::vector<std::string>{"192.0.2.12", "203.0.113.21", "203.0.113.1"}));
}

} // namespace
