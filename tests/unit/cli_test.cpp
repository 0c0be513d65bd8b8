// SPDX-License-Identifier: MIT
// Both programs' command lines as an operator meets them: --version, --help to stdout with exit 0, every command's --help without a daemon, usage errors to stderr with exit 2.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <vector>

namespace {

struct Outcome {
	int status = -1;
	std::string out, err;
};

std::string readFile(const std::string &path)
{
	std::ifstream in(path);
	std::stringstream text;
	text << in.rdbuf();
	return text.str();
}

// Runs a command line with stdout and stderr kept apart. The system bus
// points at a socket that does not exist, so nothing here can reach a daemon.
Outcome run(const std::string &command)
{
	static int serial = 0;
	std::string errFile = std::filesystem::temp_directory_path() /
			      ("portslice-cli-test-" + std::to_string(::getpid()) + "-" + std::to_string(serial++));
	Outcome r;
	std::string line = "env DBUS_SYSTEM_BUS_ADDRESS=unix:path=/nonexistent/portslice-cli-test " + command + " 2>" +
			   errFile;
	FILE *pipe = ::popen(line.c_str(), "r");
	if (!pipe)
		return r;
	std::array<char, 4096> buffer;
	size_t n;
	while ((n = ::fread(buffer.data(), 1, buffer.size(), pipe)) > 0)
		r.out.append(buffer.data(), n);
	int status = ::pclose(pipe);
	r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
	r.err = readFile(errFile);
	std::filesystem::remove(errFile);
	return r;
}

const std::string kCtl = PORTSLICECTL;
const std::string kDaemon = PORTSLICED;

// The commands the top-level help lists, so that a new command is covered without editing this test.
std::vector<std::string> listedCommands(const std::string &help)
{
	std::vector<std::string> commands;
	std::istringstream lines(help);
	bool inList = false;
	for (std::string line; std::getline(lines, line);) {
		if (line.starts_with("Subcommands:") || line.starts_with("SUBCOMMANDS:")) {
			inList = true;
			continue;
		}
		if (inList && line.starts_with("  ")) {
			std::istringstream words(line);
			std::string name;
			words >> name;
			commands.push_back(name);
		} else if (inList && !line.empty()) {
			inList = false;
		}
	}
	return commands;
}

TEST(Cli, BothProgramsPrintTheirVersionToStdoutAndExitZero)
{
	for (const std::string &program : {kCtl, kDaemon}) {
		Outcome r = run(program + " --version");
		EXPECT_EQ(r.status, 0) << program << ": " << r.err;
		EXPECT_EQ(r.out, std::filesystem::path(program).filename().string() + " " + PORTSLICE_VERSION_TEXT + "\n");
		EXPECT_EQ(r.err, "");
	}
}

TEST(Cli, HelpGoesToStdoutWithExitZeroAndNamesEveryOption)
{
	for (const std::string &program : {kCtl, kDaemon}) {
		for (const char *flag : {" --help", " -h"}) {
			Outcome r = run(program + flag);
			EXPECT_EQ(r.status, 0) << program << flag << ": " << r.err;
			EXPECT_NE(r.out.find("--version"), std::string::npos) << r.out;
			EXPECT_EQ(r.err, "");
		}
	}
	Outcome daemon = run(kDaemon + " --help");
	for (const char *option : {"--config", "--state-dir", "--no-xdp", "--xdp-pin-dir", "--drain-seconds",
				   "--apply-once", "--remove"})
		EXPECT_NE(daemon.out.find(option), std::string::npos) << option << " missing from\n" << daemon.out;
}

TEST(Cli, EveryCommandsHelpWorksWithoutARunningDaemon)
{
	Outcome top = run(kCtl + " --help");
	std::vector<std::string> commands = listedCommands(top.out);
	for (const char *expected : {"check", "plan", "dump", "owner", "geofeed", "status", "reload", "set-owner", "stats"})
		EXPECT_NE(std::find(commands.begin(), commands.end(), expected), commands.end())
			<< expected << " not listed in\n" << top.out;
	for (const std::string &command : commands) {
		Outcome r = run(kCtl + " " + command + " --help");
		EXPECT_EQ(r.status, 0) << command << ": " << r.err;
		EXPECT_NE(r.out.find("portslicectl " + command), std::string::npos) << r.out;
		EXPECT_EQ(r.err, "") << command;
	}
}

TEST(Cli, UsageErrorsGoToStderrWithExitTwoAndNothingOnStdout)
{
	for (const std::string &args : {std::string(""), std::string("frobnicate"), std::string("plan --frobnicate"),
					std::string("owner"), std::string("stats --json --prometheus"),
					std::string("set-owner 198.51.100.1 three s2"), std::string("plan --config")}) {
		Outcome r = run(kCtl + " " + args);
		EXPECT_EQ(r.status, 2) << "portslicectl " << args << ": " << r.out << r.err;
		EXPECT_EQ(r.out, "") << "portslicectl " << args;
		EXPECT_NE(r.err.find("portslicectl: "), std::string::npos) << "portslicectl " << args << ": " << r.err;
	}
	for (const std::string &args : {std::string("--apply-once --remove"), std::string("--drain-seconds 90000"),
					std::string("--drain-seconds x"), std::string("--frobnicate"),
					std::string("--no-xdp --xdp-pin-dir /sys/fs/bpf/x")}) {
		Outcome r = run(kDaemon + " " + args);
		EXPECT_EQ(r.status, 2) << "portsliced " << args << ": " << r.out << r.err;
		EXPECT_EQ(r.out, "") << "portsliced " << args;
		EXPECT_NE(r.err.find("portsliced: "), std::string::npos) << "portsliced " << args << ": " << r.err;
	}
}

TEST(Cli, OptionsTakeTheirValueAfterAnEqualsSignOrASpace)
{
	const std::string config = std::string(RULES_DIR) + "/one-server.toml";
	Outcome spaced = run(kCtl + " plan --json --config " + config);
	Outcome equals = run(kCtl + " plan --config=" + config + " --json");
	EXPECT_EQ(spaced.status, 0) << spaced.err;
	EXPECT_EQ(spaced.out, equals.out);
	EXPECT_EQ(spaced.out.substr(0, 1), "{") << spaced.out;
}

} // namespace
