// SPDX-License-Identifier: MIT
// Lab fixture for the D-Bus service: a private dbus-daemon with the project's policy, one server namespace, portsliced in it.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <fcntl.h>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "fixture.h"
#include "process.h"

#ifndef PSD_SOURCE_ROOT
#error "PSD_SOURCE_ROOT and PSD_BUILD_ROOT come from tests/lab/meson.build"
#endif

namespace portslice::dbuslab {

namespace fs = std::filesystem;

// The lab's process helpers (process.h), under the short names these tests use.
using Outcome = lab::CommandResult;
using lab::readFile;

// `sh -c command`, bounded in time, stdout and stderr together.
inline Outcome sh(const std::string &command, int timeoutSeconds = 30)
{
	return lab::runShell(command, timeoutSeconds);
}

inline std::string quote(const std::string &s)
{
	return lab::shellQuote(s);
}

// nft lists the elements of a set in the kernel's order, which after an
// element delta is not the renderer's sorted order: sort the elements of
// each `elements = { ... }` block so that equal tables compare equal.
inline std::string normalized(const std::string &table)
{
	std::string out;
	size_t at = 0;
	for (;;) {
		size_t open = table.find("elements = { ", at);
		if (open == std::string::npos)
			break;
		size_t begin = open + 13;
		size_t close = table.find(" }\n", begin);
		out += table.substr(at, begin - at);
		std::vector<std::string> elements;
		std::string current;
		for (size_t i = begin; i < close; ++i) {
			char c = table[i];
			if (c == ',') {
				elements.push_back(current);
				current.clear();
			} else if (c != '\n' && c != '\t' && !(c == ' ' && current.empty())) {
				current += c;
			}
		}
		elements.push_back(current);
		std::sort(elements.begin(), elements.end());
		for (size_t i = 0; i < elements.size(); ++i)
			out += (i ? ", " : "") + elements[i];
		at = close;
	}
	return out + table.substr(at);
}

// The table without its set `generation` (one element: the generation), to
// compare the tables of two generations.
inline std::string withoutGeneration(const std::string &table)
{
	size_t begin = table.find("\tset generation {\n");
	if (begin == std::string::npos)
		return table;
	size_t end = table.find("\t}\n", begin);
	if (end == std::string::npos)
		return table;
	end += 3;
	if (table.compare(end, 1, "\n") == 0)
		end++;
	return table.substr(0, begin) + table.substr(end);
}

// The fleet of the lab: this server s1 owns slice 0 of 198.51.100.1 and 198.51.100.2.
inline const std::string kLabFleet = portslice::test::fixture("dbus-lab.toml");

class DbusLab : public ::testing::Test {
protected:
	void SetUp() override
	{
		if (::geteuid() != 0)
			GTEST_SKIP() << "lab test: needs root for network namespaces, nftables and a system-type bus";
		lab::removeStaleNamespaces("psd");
		std::string pattern = (fs::temp_directory_path() / "psd-XXXXXX").string();
		ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
		dir_ = pattern;
		fs::permissions(dir_, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
					      fs::perms::others_read | fs::perms::others_exec);
		ns_ = "psd-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++);
		Outcome made = sh("ip netns add " + ns_ + " && ip -n " + ns_ + " link set lo up && ip -n " + ns_ +
			      " link add up0 type veth peer name up1 && ip -n " + ns_ + " link set up0 up && ip -n " +
			      ns_ + " link set up1 up && ip -n " + ns_ + " addr add 192.0.2.11/24 dev up0");
		ASSERT_TRUE(made.ok()) << made.output;
		// The policy names group portslice; dbus-daemon resolves it when it starts.
		if (!sh("getent group portslice").ok()) {
			Outcome added = sh("groupadd --system portslice");
			ASSERT_TRUE(added.ok()) << added.output;
			addedGroup_ = true;
		}
		fs::create_directory(dir_ / "bpf");
		Outcome mounted = sh("mount -t bpf bpf " + quote((dir_ / "bpf").string()));
		ASSERT_TRUE(mounted.ok()) << mounted.output;
		startBus();
		writeConfig(kLabFleet);
	}

	void TearDown() override
	{
		stopDaemon(SIGKILL);
		lab::stopProcess(busPid_);
		if (!ns_.empty()) {
			(void)sh("ip netns del " + ns_);
			(void)sh("umount " + quote((dir_ / "bpf").string()));
		}
		if (!dir_.empty())
			fs::remove_all(dir_);
		if (addedGroup_)
			(void)sh("groupdel portslice");
	}

	void startBus()
	{
		std::string policy = std::string(PSD_SOURCE_ROOT) + "/dbus/org.portslice.Egress1.conf";
		// The shape of Debian's system.conf: deny by default, then the project's policy file.
		std::ofstream(dir_ / "bus.conf") << R"(<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=)" << (dir_ / "bus").string() << R"(</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <include>)" << policy << R"(</include>
</busconfig>
)";
		busAddress_ = "unix:path=" + (dir_ / "bus").string();
		busPid_ = lab::spawnProcess({"dbus-daemon", "--config-file=" + (dir_ / "bus.conf").string(), "--nofork",
					     "--nopidfile", "--nosyslog"},
					    "/dev/null");
		ASSERT_GT(busPid_, 0);
		for (int i = 0; i < 100 && !fs::exists(dir_ / "bus"); ++i)
			std::this_thread::sleep_for(std::chrono::milliseconds(20));
		ASSERT_TRUE(fs::exists(dir_ / "bus")) << "dbus-daemon did not start";
		::chmod((dir_ / "bus").c_str(), 0777);
	}

	void writeConfig(const std::string &text) { std::ofstream(configPath()) << text; }
	std::string configPath() const { return (dir_ / "portslice.toml").string(); }
	std::string stateDir() const { return (dir_ / "state").string(); }
	std::string logPath() const { return (dir_ / "portsliced.log").string(); }
	std::string metricsPath() const { return (dir_ / "portslice.prom").string(); }
	// The forwarder's maps and link, pinned in a bpffs of this test: parallel
	// runs never share them, and `ip netns exec` (which remounts /sys) sees it.
	std::string pinDir() const { return (dir_ / "bpf" / "portslice").string(); }
	std::string bin(const std::string &relative) const { return std::string(PSD_BUILD_ROOT) + "/" + relative; }
	std::string env() const { return "DBUS_SYSTEM_BUS_ADDRESS=" + quote(busAddress_) + " "; }

	// portsliced's command line: in the server namespace, this test's files.
	std::vector<std::string> daemonWords(int drainSeconds = 0) const
	{
		std::vector<std::string> words = {"ip", "netns", "exec", ns_, bin("src/daemon/portsliced"), "--config",
						  configPath(), "--state-dir", stateDir(), "--drain-seconds",
						  std::to_string(drainSeconds), "--metrics-file", metricsPath()};
		if (std::find(daemonArgs_.begin(), daemonArgs_.end(), "--no-xdp") == daemonArgs_.end()) {
			words.push_back("--xdp-pin-dir");
			words.push_back(pinDir());
		}
		words.insert(words.end(), daemonArgs_.begin(), daemonArgs_.end());
		return words;
	}

	// Start portsliced in the server namespace and wait until it owns its name.
	// `drainSeconds`: how long the old owner of a moved slice drains; these
	// tests look at the move itself, so none unless a test asks. `prefix`
	// runs before `ip netns exec` and must exec it, keeping the pid.
	void startDaemon(int drainSeconds = 0, const std::vector<std::string> &prefix = {})
	{
		std::vector<std::string> words = prefix;
		for (const std::string &w : daemonWords(drainSeconds))
			words.push_back(w);
		daemonPid_ = lab::spawnProcess(words, logPath(),
					       {.env = {"DBUS_SYSTEM_BUS_ADDRESS=" + busAddress_}, .append = true});
		ASSERT_GT(daemonPid_, 0);
		for (int i = 0; i < 250; ++i) {
			if (busctl("call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus NameHasOwner s "
				   "org.portslice.Egress1").output.find("true") != std::string::npos)
				return;
			int status;
			if (::waitpid(daemonPid_, &status, WNOHANG) == daemonPid_) {
				daemonPid_ = -1;
				FAIL() << "portsliced exited:\n" << readFile(logPath());
			}
			std::this_thread::sleep_for(std::chrono::milliseconds(20));
		}
		FAIL() << "portsliced did not take its bus name in 5 s:\n" << readFile(logPath());
	}

	void stopDaemon(int signal = SIGTERM) { lab::stopProcess(daemonPid_, signal, std::chrono::seconds(10)); }

	// busctl against the private bus, as root or as `as` ("nobody", "nobody:portslice").
	Outcome busctl(const std::string &args, const std::string &as = "") const
	{
		std::string prefix;
		if (as == "nobody")
			prefix = "setpriv --reuid=nobody --regid=nogroup --clear-groups ";
		else if (!as.empty())
			prefix = "setpriv --reuid=nobody --regid=nogroup --groups=" + as + " ";
		return sh(prefix + "busctl --address=" + quote(busAddress_) + " " + args);
	}
	Outcome call(const std::string &member, const std::string &args = "", const std::string &as = "") const
	{
		return busctl("call org.portslice.Egress1 /org/portslice/Egress1 org.portslice.Egress1 " + member + " " +
			      args, as);
	}
	Outcome property(const std::string &name, const std::string &as = "") const
	{
		return busctl("get-property org.portslice.Egress1 /org/portslice/Egress1 org.portslice.Egress1 " + name,
			      as);
	}
	uint64_t generation() const
	{
		Outcome r = property("Generation");
		return r.ok() ? std::stoull(r.output.substr(2)) : 0; // "t 7"
	}
	Outcome ctl(const std::string &args, const std::string &as = "") const
	{
		std::string prefix = as.empty() ? "" : "setpriv --reuid=nobody --regid=nogroup --clear-groups ";
		return sh(prefix + "env " + env() + bin("src/ctl/portslicectl") + " " + args);
	}
	Outcome inNs(const std::string &command, int timeoutSeconds = 30) const
	{
		return sh("ip netns exec " + ns_ + " sh -c " + quote(command), timeoutSeconds);
	}
	std::string table() const { return inNs("nft -s list table inet portslice").output; }

	static inline int counter_ = 0;
	std::vector<std::string> daemonArgs_; // more options for portsliced
	fs::path dir_;
	std::string ns_;
	std::string busAddress_;
	pid_t busPid_ = -1;
	pid_t daemonPid_ = -1;
	bool addedGroup_ = false;
};

} // namespace portslice::dbuslab
