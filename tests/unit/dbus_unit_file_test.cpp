// SPDX-License-Identifier: MIT
// The installed system integration files: systemd-analyze accepts the unit, and the files agree on names.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <sys/wait.h>

namespace {

namespace fs = std::filesystem;

std::string readFile(const std::string &path)
{
	std::ifstream in(path);
	std::stringstream text;
	text << in.rdbuf();
	return text.str();
}

struct Outcome {
	int status = -1;
	std::string out;
};

Outcome run(const std::string &command)
{
	Outcome r;
	FILE *pipe = ::popen((command + " 2>&1").c_str(), "r");
	if (!pipe)
		return r;
	char buffer[4096];
	size_t n;
	while ((n = ::fread(buffer, 1, sizeof(buffer), pipe)) > 0)
		r.out.append(buffer, n);
	int status = ::pclose(pipe);
	r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
	return r;
}

std::string valueOf(const std::string &text, const std::string &key)
{
	std::istringstream lines(text);
	for (std::string line; std::getline(lines, line);)
		if (line.starts_with(key + "="))
			return line.substr(key.size() + 1);
	return "";
}

TEST(SystemdUnit, PassesSystemdAnalyzeVerifyWithoutAWarning)
{
	if (run("command -v systemd-analyze").status != 0)
		GTEST_SKIP() << "systemd-analyze is not installed: cannot verify dbus/portsliced.service";
	std::string unit = readFile(PSD_UNIT);
	ASSERT_FALSE(unit.empty());
	// ExecStart names the installed path; verify checks that it exists, so point it at the build.
	std::string installed = valueOf(unit, "ExecStart");
	std::string program = installed.substr(0, installed.find(' '));
	ASSERT_FALSE(program.empty());
	for (size_t at; (at = unit.find(program)) != std::string::npos;)
		unit.replace(at, program.size(), PSD_DAEMON);

	std::string pattern = (fs::temp_directory_path() / "psd-unit-XXXXXX").string();
	ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
	std::string copy = pattern + "/portsliced.service";
	std::ofstream(copy) << unit;
	Outcome verified = run("systemd-analyze verify --man=no " + copy);
	fs::remove_all(pattern);
	EXPECT_EQ(verified.status, 0) << verified.out;
	// Unknown keys are only warnings to systemd-analyze: a typo must still fail here.
	EXPECT_EQ(verified.out, "");
}

TEST(SystemdUnit, IsATypeNotifyServiceOwningTheBusName)
{
	std::string unit = readFile(PSD_UNIT);
	EXPECT_EQ(valueOf(unit, "Type"), "notify");
	EXPECT_EQ(valueOf(unit, "BusName"), "org.portslice.Egress1");
	EXPECT_EQ(valueOf(unit, "ExecReload"), "/bin/kill -HUP $MAINPID");
	std::string activation = readFile(PSD_ACTIVATION);
	EXPECT_EQ(valueOf(activation, "Name"), "org.portslice.Egress1");
	EXPECT_EQ(valueOf(activation, "SystemdService"), "portsliced.service");
	EXPECT_EQ(valueOf(activation, "User"), "root");
}

TEST(SystemdUnit, ActivationStartsTheDaemonAsTheUnitDoes)
{
	EXPECT_EQ(valueOf(readFile(PSD_ACTIVATION), "Exec"), valueOf(readFile(PSD_UNIT), "ExecStart"));
}

// Every value of a key, in order (Wants= and After= may be given more than once).
std::string valuesOf(const std::string &text, const std::string &key)
{
	std::istringstream lines(text);
	std::string all;
	for (std::string line; std::getline(lines, line);)
		if (line.starts_with(key + "="))
			all += " " + line.substr(key.size() + 1);
	return all + " ";
}

long seconds(const std::string &value)
{
	return std::stol(value); // "5s" or "120": both in seconds here
}

TEST(SystemdUnit, NeitherUnitRestartsWithDbusNorInATightLoop)
{
	for (const char *path : {PSD_UNIT, PSD_FLEETD_UNIT}) {
		std::string unit = readFile(path);
		ASSERT_FALSE(unit.empty()) << path;
		EXPECT_EQ(valuesOf(unit, "Requires"), " ") << path << ": Requires= would restart it with what it names";
		EXPECT_EQ(valuesOf(unit, "BindsTo"), " ") << path;
		EXPECT_NE(valuesOf(unit, "Wants").find(" dbus.service "), std::string::npos) << path;
		EXPECT_NE(valuesOf(unit, "After").find(" dbus.service "), std::string::npos) << path;
		ASSERT_FALSE(valueOf(unit, "RestartSec").empty()) << path;
		ASSERT_FALSE(valueOf(unit, "StartLimitBurst").empty()) << path;
		ASSERT_FALSE(valueOf(unit, "StartLimitIntervalSec").empty()) << path;
		long restartSec = seconds(valueOf(unit, "RestartSec"));
		long burst = std::stol(valueOf(unit, "StartLimitBurst"));
		long interval = seconds(valueOf(unit, "StartLimitIntervalSec"));
		EXPECT_GE(restartSec, 2) << path;
		// The limit must be reachable: restarting every RestartSec, `burst`
		// starts fall within the interval, so a crash loop stops.
		EXPECT_GT(interval, restartSec * burst) << path;
	}
}

// systemd-analyze security's overall exposure (lower is better); the limits
// are the scores the units had when this test was written, so hardening may
// only improve: portsliced 2.7 before (CAP_SYS_ADMIN, which libbpf needs to
// find the conntrack kfuncs, costs 0.3), 2.2 now; portslice-fleetd 2.0 before, 1.4 now.
TEST(SystemdUnit, ExposureScoresStayAtMostWhatTheyWere)
{
	if (run("systemd-analyze --version").status != 0)
		GTEST_SKIP() << "systemd-analyze is not installed: cannot score the units";
	for (auto [path, limit] : {std::pair{PSD_UNIT, 2.2}, std::pair{PSD_FLEETD_UNIT, 1.4}}) {
		Outcome scored = run(std::string("systemd-analyze security --offline=true --no-pager ") + path);
		size_t at = scored.out.find("Overall exposure level for ");
		ASSERT_NE(at, std::string::npos) << scored.out;
		size_t colon = scored.out.find(": ", at);
		double score = std::stod(scored.out.substr(colon + 2));
		EXPECT_LE(score, limit) << path << "\n" << scored.out;
	}
}

} // namespace
