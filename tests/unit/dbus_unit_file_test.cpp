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

} // namespace
