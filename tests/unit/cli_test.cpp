// SPDX-License-Identifier: MIT
// Both programs' command lines as an operator meets them: --version, --help to stdout with exit 0, every command's --help without a daemon, usage errors to stderr with exit 2.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <map>
#include <set>
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
					std::string("set-owner 198.51.100.1 three s2"), std::string("plan --config"),
					// --drain-seconds goes into the fleet's key: alone it would be ignored.
					std::string("set-owner 198.51.100.1 1 s2 --drain-seconds 5"),
					// fleetd's limit (0 to 86400), not a day and more.
					std::string("set-owner 198.51.100.1 1 s2 --fleet --drain-seconds 100000")}) {
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

// An unknown command is named; the daemon, which has no commands, points
// to its --help alone.
TEST(Cli, AnUnknownCommandIsNamedAndTheDaemonsHintHasNoCommands)
{
	Outcome r = run(kCtl + " frobnicate");
	EXPECT_EQ(r.status, 2);
	EXPECT_EQ(r.err, "portslicectl: unknown command \"frobnicate\"\ntry 'portslicectl --help'\n");
	Outcome daemon = run(kDaemon + " --frobnicate");
	EXPECT_EQ(daemon.status, 2);
	EXPECT_NE(daemon.err.find("try 'portsliced --help'\n"), std::string::npos) << daemon.err;
	EXPECT_EQ(daemon.err.find("COMMAND"), std::string::npos) << daemon.err;
	Outcome option = run(kCtl + " status --frobnicate");
	EXPECT_EQ(option.status, 2);
	EXPECT_NE(option.err.find("(or 'portslicectl COMMAND --help')"), std::string::npos) << option.err;
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

TEST(Cli, AConfigThatIsADirectoryIsAnErrorNotACrash)
{
	const std::string dir = std::filesystem::temp_directory_path();
	for (const std::string &args : {std::string("check"), std::string("plan"), std::string("dump"),
					std::string("geofeed"), std::string("owner 198.51.100.1:2000")}) {
		Outcome r = run(kCtl + " " + args + " --config " + dir);
		EXPECT_EQ(r.status, 1) << "portslicectl " << args << ": " << r.err;
		EXPECT_EQ(r.err, dir + ": error: cannot read config file: Is a directory\n") << "portslicectl " << args;
		EXPECT_EQ(r.out, "") << "portslicectl " << args;
	}
	// Fails at the file, before anything is applied.
	Outcome daemon = run(kDaemon + " --apply-once --no-xdp --config " + dir);
	EXPECT_EQ(daemon.status, 1) << daemon.err;
	EXPECT_NE(daemon.err.find(dir + ": error: cannot read config file: Is a directory"), std::string::npos)
		<< daemon.err;
}

TEST(Cli, AConfigFromAPipeIsRead)
{
	const std::string config = std::string(RULES_DIR) + "/one-server.toml";
	Outcome fromFile = run(kCtl + " plan --json --config " + config);
	Outcome fromStdin = run(kCtl + " plan --json --config /dev/stdin < " + config);
	Outcome fromPipe = run("cat " + config + " | " + kCtl + " check --config /dev/stdin");
	EXPECT_EQ(fromFile.status, 0) << fromFile.err;
	EXPECT_EQ(fromStdin.status, 0) << fromStdin.err;
	EXPECT_EQ(fromStdin.out, fromFile.out);
	EXPECT_EQ(fromPipe.status, 0) << fromPipe.err;
	EXPECT_NE(fromPipe.out.find("/dev/stdin: valid"), std::string::npos) << fromPipe.out;
}

TEST(Cli, ConfigMayComeBeforeTheCommand)
{
	const std::string config = std::string(RULES_DIR) + "/three-servers.toml";
	for (const std::string &command : {std::string("check"), std::string("plan --json"), std::string("dump"),
					   std::string("geofeed"), std::string("owner 198.51.100.1:1500"),
					   std::string("plan --server s2")}) {
		Outcome after = run(kCtl + " " + command + " --config " + config);
		Outcome before = run(kCtl + " --config " + config + " " + command);
		Outcome equals = run(kCtl + " --config=" + config + " " + command);
		EXPECT_EQ(after.status, 0) << command << ": " << after.err;
		EXPECT_EQ(before.status, 0) << command << ": " << before.err;
		EXPECT_EQ(before.out, after.out) << command;
		EXPECT_EQ(before.err, after.err) << command;
		EXPECT_EQ(equals.out, after.out) << command;
	}
	// An invalid file is as invalid either way.
	Outcome bad = run(kCtl + " --config /nonexistent/portslice.toml check");
	EXPECT_EQ(bad.status, 1);
	EXPECT_NE(bad.err.find("/nonexistent/portslice.toml: error: cannot read config file"), std::string::npos) << bad.err;
	// Given twice, or to a command that reads no file: a usage error.
	for (const std::string &args : {"--config " + config + " check --config " + config, "--config " + config + " reload"}) {
		Outcome r = run(kCtl + " " + args);
		EXPECT_EQ(r.status, 2) << args << ": " << r.out << r.err;
		EXPECT_EQ(r.out, "") << args;
		EXPECT_NE(r.err.find("portslicectl: "), std::string::npos) << args << ": " << r.err;
	}
	// The top-level help says so.
	EXPECT_NE(run(kCtl + " --help").out.find("--config FILE"), std::string::npos);
}

// jq -e: exit 0 when the filter's result is true, so each check is one line.
bool jq(const std::string &json, const std::string &filter)
{
	std::string file = std::filesystem::temp_directory_path() / ("portslice-cli-json-" + std::to_string(::getpid()));
	std::ofstream(file) << json;
	Outcome r = run("jq -e '" + filter + "' " + file + " >/dev/null");
	std::filesystem::remove(file);
	return r.status == 0;
}

TEST(Cli, EveryOfflineCommandThatPrintsDataPrintsJsonWithRangesAsNumbers)
{
	if (run("jq --version").status != 0)
		GTEST_SKIP() << "jq is not installed: cannot check the JSON";
	const std::string config = " --config " + std::string(RULES_DIR) + "/three-servers.toml";
	Outcome check = run(kCtl + " check --json" + config);
	EXPECT_EQ(check.status, 0) << check.err;
	EXPECT_TRUE(jq(check.out, ".valid == true and .servers == 3 and .errors == [] and (.my_slices | type) == \"number\""))
		<< check.out;

	Outcome plan = run(kCtl + " plan --json" + config);
	EXPECT_EQ(plan.status, 0) << plan.err;
	EXPECT_TRUE(jq(plan.out, "[.addresses[].port_range, .addresses[].my_ports[], .addresses[].owners[].slices, "
				 ".sources[].assignments[].ports] | length > 0 and all(.first <= .last and "
				 "(.first | type) == \"number\" and (.last | type) == \"number\")"))
		<< plan.out;
	EXPECT_TRUE(jq(plan.out, ".addresses[0].port_range == {\"first\": 1024, \"last\": 65535}")) << plan.out;

	Outcome dump = run(kCtl + " dump --json" + config);
	EXPECT_EQ(dump.status, 0) << dump.err;
	EXPECT_TRUE(jq(dump.out, ".table == \"portslice\" and .generation == 1 and "
				 "(.sets[] | select(.name == \"my_ports\") | .elements) == 3"))
		<< dump.out;

	Outcome owner = run(kCtl + " owner --json 198.51.100.1:1500" + config);
	EXPECT_EQ(owner.status, 0) << owner.err;
	EXPECT_TRUE(jq(owner.out, ".port == 1500 and .slice == 0 and .server == \"s1\"")) << owner.out;

	// An invalid file: exit 1 and the error as data, with its line and column.
	std::string bad = std::filesystem::temp_directory_path() / ("portslice-cli-bad-" + std::to_string(::getpid()));
	std::ofstream(bad) << "[server]\nname = \"s1\"\nnonsense = 1\n";
	Outcome invalid = run(kCtl + " check --json --config " + bad);
	std::filesystem::remove(bad);
	EXPECT_EQ(invalid.status, 1) << invalid.out;
	EXPECT_TRUE(jq(invalid.out, ".valid == false and (.errors | length) > 0 and (.errors[0].line | type) == \"number\""))
		<< invalid.out;
}

// --server NAME on the offline commands, geofeed among them; the
// feed is the fleet's, so it is the same whichever server is named.
// A JSON answer is one document and one newline: no blank line after it
// (`portslicectl owner --json ... > a.json; cat a.json b.json | jq -s` sees no gap).
TEST(Cli, EveryOfflineJsonAnswerEndsWithExactlyOneNewline)
{
	const std::string config = " --config " + std::string(RULES_DIR) + "/three-servers.toml";
	for (std::string command : { "check --json", "plan --json", "dump --json", "owner --json 198.51.100.1:1500",
				     "owner --json 198.51.100.1:80" }) {
		Outcome o = run(kCtl + " " + command + config);
		ASSERT_FALSE(o.out.empty()) << command << ": " << o.err;
		EXPECT_TRUE(o.out.ends_with("\n") && !o.out.ends_with("\n\n")) << command << ": [" << o.out << "]";
	}
}

TEST(Cli, GeofeedTakesServerAsTheOtherOfflineCommandsDo)
{
	const std::string config = " --config " + std::string(RULES_DIR) + "/three-servers.toml";
	Outcome plain = run(kCtl + " geofeed" + config);
	ASSERT_EQ(plain.status, 0) << plain.err;
	EXPECT_NE(plain.out.find("198.51.100.1/32,GB,,,\n"), std::string::npos) << plain.out;
	Outcome s2 = run(kCtl + " geofeed --server s2" + config);
	EXPECT_EQ(s2.status, 0) << s2.out << s2.err;
	EXPECT_EQ(s2.out, plain.out);
	EXPECT_EQ(s2.err, plain.err);
	// A name that is not one of [[servers]]: check's error, exit 1, nothing on stdout.
	Outcome check = run(kCtl + " check --server s9" + config);
	ASSERT_EQ(check.status, 1) << check.out << check.err;
	EXPECT_NE(check.err.find("error: --server 's9' is not one of [[servers]] (known: s1, s2, s3)"), std::string::npos)
		<< check.err;
	for (const std::string &command : {std::string("geofeed"), std::string("owner 198.51.100.1:1500")}) {
		Outcome r = run(kCtl + " " + command + " --server s9" + config);
		EXPECT_EQ(r.status, 1) << command << ": " << r.out << r.err;
		EXPECT_EQ(r.err, check.err) << command;
		EXPECT_EQ(r.out, "") << command;
	}
}

// The man page: owner exits 1 when there is no answer, offline as online.
TEST(Cli, OwnerFromTheFileExitsOneWhenNoServerUsesThePort)
{
	const std::string config = " --config " + std::string(RULES_DIR) + "/three-servers.toml";
	bool haveJq = run("jq --version").status == 0;
	Outcome owned = run(kCtl + " owner 198.51.100.1:1500" + config);
	EXPECT_EQ(owned.status, 0) << owned.out << owned.err;
	EXPECT_NE(owned.out.find("server s1"), std::string::npos) << owned.out;

	// Below the usable slices (port_range starts at 1024).
	Outcome outside = run(kCtl + " owner 198.51.100.1:80" + config);
	EXPECT_EQ(outside.status, 1) << outside.out << outside.err;
	EXPECT_EQ(outside.out, "198.51.100.1:80: port outside the usable slices of 198.51.100.1; no server uses it\n");
	Outcome outsideJson = run(kCtl + " owner --json 198.51.100.1:80" + config);
	EXPECT_EQ(outsideJson.status, 1) << outsideJson.out << outsideJson.err;
	if (haveJq) {
		EXPECT_TRUE(jq(outsideJson.out, ".port == 80 and .slice == null and .server == null")) << outsideJson.out;
	}

	// A slice no server owns: slices = { s1 = 0, s2 = 1, s3 = [2, 5] } leaves 3 and 4.
	Outcome planJson = run(kCtl + " plan --json" + config);
	size_t at = planJson.out.find("\"slice_size\": ");
	ASSERT_NE(at, std::string::npos) << planJson.out;
	unsigned size = std::stoul(planJson.out.substr(at + 14));
	std::string port = std::to_string(1024 + 3 * size);
	Outcome nobody = run(kCtl + " owner 198.51.100.1:" + port + config);
	EXPECT_EQ(nobody.status, 1) << nobody.out << nobody.err;
	EXPECT_EQ(nobody.out, "198.51.100.1:" + port + ": slice 3, owned by no server\n");
	Outcome nobodyJson = run(kCtl + " owner --json 198.51.100.1:" + port + config);
	EXPECT_EQ(nobodyJson.status, 1) << nobodyJson.out << nobodyJson.err;
	if (haveJq) {
		EXPECT_TRUE(jq(nobodyJson.out, ".slice == 3 and .server == null and .source == null")) << nobodyJson.out;
	}
}

// plan shows each source's zone; a stateless source (notrack) has none, said so.
TEST(Cli, PlanSaysAStatelessSourceHasNoZone)
{
	const std::string config = " --config " + std::string(RULES_DIR) + "/three-servers.toml";
	Outcome text = run(kCtl + " plan" + config);
	ASSERT_EQ(text.status, 0) << text.err;
	EXPECT_NE(text.out.find("  stateless-gb  stateless  zone -  block 64\n"), std::string::npos) << text.out;
	EXPECT_NE(text.out.find("  trusted  conntrack  zone 20  weight "), std::string::npos) << text.out;
	if (run("jq --version").status != 0)
		GTEST_SKIP() << "jq is not installed: cannot check the JSON";
	Outcome json = run(kCtl + " plan --json" + config);
	ASSERT_EQ(json.status, 0) << json.err;
	EXPECT_TRUE(jq(json.out, "(.sources[] | select(.name == \"stateless-gb\") | has(\"zone\") and .zone == null) and "
				 "(.sources[] | select(.name == \"trusted\") | .zone) == 20"))
		<< json.out;
}

// What a usage says a command takes: its options, each with the name of
// its value if it takes one ("--config FILE", "--json"), and its positionals.
struct Usage {
	std::set<std::string> options;
	std::vector<std::string> positionals;
	bool operator==(const Usage &) const = default;
};

std::ostream &operator<<(std::ostream &out, const Usage &u)
{
	out << "options {";
	for (const std::string &o : u.options)
		out << " [" << o << "]";
	out << " } positionals {";
	for (const std::string &p : u.positionals)
		out << " " << p;
	return out << " }";
}

bool isValueName(const std::string &word)
{
	return !word.empty() && word[0] != '-' &&
	       std::all_of(word.begin(), word.end(), [](char c) { return std::isupper(c) || c == '_' || c == ':'; });
}

// The SYNOPSIS of a man page in scdoc, per command: "portslicectl owner ..."
// gives "owner"; a program without commands is "" (the union of its lines).
// The lines for --help and --version alone are left out.
std::map<std::string, Usage> manSynopsis(const std::string &page, const std::string &program, bool commands)
{
	std::map<std::string, Usage> usages;
	std::istringstream lines(readFile(page));
	bool inSynopsis = false;
	for (std::string line; std::getline(lines, line);) {
		if (line.starts_with("# ")) {
			inSynopsis = line == "# SYNOPSIS";
			continue;
		}
		if (!inSynopsis || !line.starts_with("*" + program + "*"))
			continue;
		std::string plain;
		for (char c : line)
			plain += (c == '*' || c == '_') ? "" : (c == '[' || c == ']' || c == '|') ? " " : std::string(1, c);
		std::istringstream words(plain);
		std::vector<std::string> w;
		for (std::string word; words >> word;)
			w.push_back(word);
		size_t i = 1;
		std::string command;
		if (commands) {
			if (i >= w.size() || w[i].starts_with("-") || w[i] == "COMMAND")
				continue;
			command = w[i++];
		}
		Usage &u = usages[command];
		for (; i < w.size(); i++) {
			if (w[i] == "--help" || w[i] == "--version")
				continue;
			if (w[i].starts_with("--")) {
				std::string option = w[i];
				if (i + 1 < w.size() && isValueName(w[i + 1]))
					option += " " + w[++i];
				u.options.insert(option);
			} else {
				u.positionals.push_back(w[i]);
			}
		}
	}
	return usages;
}

// The same from a --help text.
Usage helpUsage(const std::string &help)
{
	Usage u;
	std::istringstream lines(help);
	for (std::string line; std::getline(lines, line);) {
		if (line.starts_with("Usage:")) {
			size_t p = line.find("[OPTIONS]");
			std::istringstream words(p == std::string::npos ? "" : line.substr(p + 9));
			for (std::string word; words >> word;)
				u.positionals.push_back(word);
		} else if (line.starts_with("  -")) {
			std::string option = line.substr(2, line.find("  ", 2) - 2);
			if (option.starts_with("-h,"))
				option = option.substr(3);
			if (option != "--help" && option != "--version")
				u.options.insert(option);
		}
	}
	return u;
}

TEST(Cli, ManPageSynopsesMatchWhatTheProgramsAccept)
{
	std::map<std::string, Usage> man = manSynopsis(std::string(DOCS_DIR) + "/portslicectl.8.scd", "portslicectl", true);
	std::vector<std::string> commands = listedCommands(run(kCtl + " --help").out);
	ASSERT_FALSE(commands.empty());
	for (const std::string &command : commands) {
		Usage help = helpUsage(run(kCtl + " " + command + " --help").out);
		auto it = man.find(command);
		if (it == man.end()) {
			ADD_FAILURE() << "portslicectl " << command << " has no line in the SYNOPSIS of portslicectl.8.scd";
			continue;
		}
		EXPECT_EQ(it->second, help) << "portslicectl " << command << ": the man page (left) and --help (right) differ";
		man.erase(it);
	}
	for (const auto &[command, usage] : man)
		ADD_FAILURE() << "portslicectl.8.scd names a command the program does not have: " << command;

	std::map<std::string, Usage> daemon = manSynopsis(std::string(DOCS_DIR) + "/portsliced.8.scd", "portsliced", false);
	EXPECT_EQ(daemon[""], helpUsage(run(kDaemon + " --help").out))
		<< "portsliced: the man page (left) and --help (right) differ";
}

} // namespace
