// SPDX-License-Identifier: MIT
// GoogleTest fixture for lab tests: builds the namespace lab of docs/architecture.md "The lab" with tests/lab/lib/lab.sh in SetUp and always removes it.
//
// Use (link `lab_fixture_dep` from tests/lab/meson.build; suite 'lab', is_parallel false):
//
//	class XdpLab : public portslice::lab::LabFixture {
//	protected:
//		portslice::lab::LabOptions labOptions() const override
//		{
//			portslice::lab::LabOptions o;
//			o.prefix = "xdp";          // your namespace prefix
//			o.steer = "s1";            // all return traffic to s1
//			return o;
//		}
//	};
//	TEST_F(XdpLab, ServerTwoGetsItsAnswers)
//	{
//		auto r = inNode("w2", "ping -c1 -W1 203.0.113.10");
//		EXPECT_TRUE(r.ok()) << r.output;
//	}
//
// Nodes: inet, rtr, dc, s1..sN and the workloads (default w1..wN behind s1..sN,
// 100.64.N.0/24, inside address 100.64.N.2). Addresses, interface names and
// MACs are listed at the top of lib/lab.sh. Not root: the test is skipped with
// the reason printed. Everything started with inNode()/startInNode() runs
// inside the lab's namespaces and is killed when the lab goes down.
#pragma once

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <spawn.h>
#include <string>
#include <string_view>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "common/handle.h"
#include "process.h"

#ifndef PORTSLICE_LAB_SCRIPT
#error "link lab_fixture_dep: it defines PORTSLICE_LAB_SCRIPT, PORTSLICE_BUILD_ROOT and PORTSLICE_SOURCE_ROOT"
#endif

namespace portslice::lab {

// A path in the build tree, e.g. buildPath("src/daemon/portsliced").
inline std::string buildPath(std::string_view relative)
{
	return std::string(PORTSLICE_BUILD_ROOT) + "/" + std::string(relative);
}

inline std::string sourcePath(std::string_view relative)
{
	return std::string(PORTSLICE_SOURCE_ROOT) + "/" + std::string(relative);
}

struct LabOptions {
	std::string prefix = "lab";  // namespace prefix: lower-case, unique to your tests
	int servers = 3;             // s1..sN
	// "S:NAME:PREFIX[:HOSTS[:LO-HI]]"; empty: wN behind sN with 100.64.N.0/24.
	std::vector<std::string> workloads;
	std::string steer = "s1";    // sN | hash | hash:s1,s2
	int inetAddrs = 4;           // inet answers on 203.0.113.10 .. 10+N-1
	std::string busPolicy;       // empty: the repository's dbus/org.portslice.Egress1.conf if present
	bool bus = true;             // a private system-like bus per server
	int dcMtu = 1600;            // DC fabric MTU: the forwarder's IPIP adds 20 bytes
	// Attach the build's tests/lab/xdp_pass.bpf.o (when built) to the bridge's
	// server ports, so XDP_TX frames of a server's forwarder are flushed at once.
	bool xdpPass = true;
	// An etcd cluster of this many members (0..3): nodes etcd1..etcdN at
	// 192.0.2.(99+K), client URLs in etcdEndpoints(); SetUp waits until healthy.
	int etcd = 0;
};

class LabFixture : public ::testing::Test {
protected:
	// Override to shape the lab of every test of the fixture.
	virtual LabOptions labOptions() const { return {}; }

	void SetUp() override
	{
		if (geteuid() != 0)
			GTEST_SKIP() << "lab tests need root: they build network namespaces (run meson test as root)";
		options_ = labOptions();
		static int counter = 0;
		id_ = std::to_string(getpid()) + "n" + std::to_string(++counter);
		// Labs of this prefix left by a killed test run.
		(void)lab({"gc"}, 60);
		std::vector<std::string> args = {"up", "--owner", std::to_string(getpid()),
						 "--servers", std::to_string(options_.servers),
						 "--steer", options_.steer,
						 "--inet-addrs", std::to_string(options_.inetAddrs)};
		for (const auto &w : options_.workloads) {
			args.push_back("--workload");
			args.push_back(w);
		}
		if (!options_.busPolicy.empty()) {
			args.push_back("--bus-policy");
			args.push_back(options_.busPolicy);
		}
		if (!options_.bus)
			args.push_back("--no-bus");
		args.push_back("--dc-mtu");
		args.push_back(std::to_string(options_.dcMtu));
		if (options_.etcd > 0) {
			args.push_back("--etcd");
			args.push_back(std::to_string(options_.etcd));
		}
		if (options_.xdpPass && access(buildPath("tests/lab/xdp_pass.bpf.o").c_str(), R_OK) == 0) {
			args.push_back("--xdp-pass");
			args.push_back(buildPath("tests/lab/xdp_pass.bpf.o"));
		}
		up_ = true; // even a failed up may have made something: always tear down
		auto r = lab(args, 60);
		ASSERT_TRUE(r.ok()) << "lab up failed:\n" << r.output;
	}

	void TearDown() override { down(); }
	~LabFixture() override { down(); }

	// Removes the lab now (idempotent); the test fails if anything is left.
	void down()
	{
		if (!up_)
			return;
		up_ = false;
		auto r = lab({"down"}, 60);
		for (pid_t pid : background_)
			while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
			}
		background_.clear();
		EXPECT_TRUE(r.ok()) << "lab down failed:\n" << r.output;
	}

	// The network namespace of a node: "PREFIX-ID-NODE".
	std::string ns(std::string_view node) const { return labName() + "-" + std::string(node); }
	std::string labName() const { return options_.prefix + "-" + id_; }
	const std::string &labId() const { return id_; }
	// The shell words that run a command in a node, for composing background
	// jobs in one shell: run(execWords("w1") + " ping ... & " + ... + "wait").
	std::string execWords(std::string_view node) const
	{
		return shellQuote(PORTSLICE_LAB_SCRIPT) + " exec --prefix " + options_.prefix + " --id " + id_ + " " +
		       std::string(node);
	}
	std::string labDir() const
	{
		const char *tmp = std::getenv("TMPDIR");
		return std::string(tmp && *tmp ? tmp : "/tmp") + "/" + labName();
	}
	// Per-server directories (for --state-dir and bpffs pins) and bus address.
	std::string stateDir(std::string_view server) const { return labDir() + "/" + std::string(server) + "/state"; }
	std::string bpfDir(std::string_view server) const { return labDir() + "/" + std::string(server) + "/bpf"; }
	std::string busAddress(std::string_view server) const
	{
		return "unix:path=" + labDir() + "/" + std::string(server) + "/bus/system_bus_socket";
	}

	// Runs `sh -c command` inside a node and waits for it. On a server,
	// DBUS_SYSTEM_BUS_ADDRESS is its private bus, LAB_STATE_DIR and
	// LAB_BPF_DIR its directories.
	CommandResult inNode(std::string_view node, const std::string &command, int timeoutSeconds = 60)
	{
		return lab({"exec", std::string(node), "sh", "-c", command}, timeoutSeconds);
	}

	// Starts `sh -c command` inside a node in the background, output to
	// logFile; it is killed when the lab goes down (or by stopInNode).
	pid_t startInNode(std::string_view node, const std::string &command, const std::string &logFile)
	{
		pid_t pid = spawnProcess({PORTSLICE_LAB_SCRIPT, "exec", "--prefix", options_.prefix, "--id", id_,
					  std::string(node), "sh", "-c", "exec " + command},
					 logFile);
		if (pid > 0)
			background_.push_back(pid);
		return pid;
	}

	// Sends SIGTERM (then SIGKILL after the grace period) and reaps; returns the exit status.
	int stopInNode(pid_t pid, std::chrono::milliseconds grace = std::chrono::seconds(3))
	{
		std::erase(background_, pid);
		return stopProcess(pid, SIGTERM, grace);
	}

	// Re-steers the router: "s2", "hash", "hash:s1,s2".
	CommandResult steer(const std::string &mode) { return lab({"steer", mode}, 30); }

	// The etcd cluster (LabOptions::etcd): "stop K" (SIGTERM), "kill K"
	// (SIGKILL), "start K" (on its own data), "leader" (prints etcdK),
	// "wait SECONDS" (until every member answers healthy).
	CommandResult etcd(const std::vector<std::string> &args, int timeoutSeconds = 40)
	{
		std::vector<std::string> a = {"etcd"};
		a.insert(a.end(), args.begin(), args.end());
		return lab(a, timeoutSeconds);
	}
	// "http://192.0.2.100:2379,...": the members' client URLs.
	std::string etcdEndpoints() const
	{
		std::string out;
		for (int k = 1; k <= options_.etcd; ++k)
			out += (k > 1 ? "," : "") + std::string("http://192.0.2.") + std::to_string(99 + k) + ":2379";
		return out;
	}

	// Runs a command in the root namespace (e.g. building, reading files); never
	// use it to change the host's network configuration.
	static CommandResult run(const std::string &command, int timeoutSeconds = 60)
	{
		return runShell(command, timeoutSeconds);
	}

	const LabOptions &options() const { return options_; }

private:
	CommandResult lab(std::vector<std::string> args, int timeoutSeconds)
	{
		std::vector<std::string> argv = {PORTSLICE_LAB_SCRIPT, args.front(), "--prefix", options_.prefix, "--id", id_};
		argv.insert(argv.end(), args.begin() + 1, args.end());
		return runArgv(argv, timeoutSeconds);
	}

	LabOptions options_;
	std::string id_;
	bool up_ = false;
	std::vector<pid_t> background_;
};

} // namespace portslice::lab
