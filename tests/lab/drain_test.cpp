// SPDX-License-Identifier: MIT
// Slice handover in the lab: established TCP connections on a moved slice keep carrying bytes both ways while the old owner drains, and the drain ends by itself at its deadline.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <regex>
#include <sstream>
#include <vector>

#include "lab_fixture.h"

using portslice::lab::buildPath;
using portslice::lab::LabFixture;
using portslice::lab::LabOptions;
using portslice::lab::sourcePath;

namespace {

using Clock = std::chrono::steady_clock;

// Slice 0 of 198.51.100.1 in the lab fleet (tests/lab/lib/fleet.sh): s1's.
constexpr int kSlice0Lo = 10000, kSlice0Hi = 10999;
constexpr int kDrainSeconds = 5;

// inet: one thread per connection; the first line is answered with the
// source port the server saw, every later line is sent back whole. Bounded:
// 60 s, and 3 s of silence per read once the test is over.
constexpr const char *kServer = R"PY(
import socket, sys, threading, time
end = time.time() + 60
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 7200))
srv.listen(64)
srv.settimeout(1)
print("listening", flush=True)
def serve(c, peer):
    c.settimeout(30)
    f = c.makefile("rb")
    first = True
    try:
        for line in f:
            c.sendall(("port %d\n" % peer[1]).encode() if first else line)
            first = False
    except OSError:
        pass
    c.close()
while time.time() < end:
    try:
        c, peer = srv.accept()
    except socket.timeout:
        continue
    threading.Thread(target=serve, args=(c, peer), daemon=True).start()
)PY";

// w1: opens connections to the four inet addresses (the router hashes the
// answers of each to another server), learns each one's shared port, says
// "ready PORT...", waits for the go file, then sends 1000 bytes on each and
// expects them back: "done OK FAILED MOVED_OK MOVED".
constexpr const char *kClient = R"PY(
import os, socket, sys, time
go = sys.argv[1]
conns = []
for k in range(24):
    s = socket.create_connection(("203.0.113.%d" % (10 + k % 4), 7200), timeout=5)
    f = s.makefile("rb")
    s.sendall(b"hello\n")
    conns.append((s, f, int(f.readline().split()[1])))
print("ready", " ".join(str(p) for _, _, p in conns), flush=True)
end = time.time() + 30
while not os.path.exists(go) and time.time() < end:
    time.sleep(0.05)
ok = failed = moved_ok = moved = 0
payload = b"x" * 999 + b"\n"
for s, f, port in conns:
    on_slice = 10000 <= port <= 10999
    moved += on_slice
    try:
        s.sendall(payload)
        good = f.readline() == payload
    except OSError:
        good = False
    ok += good
    failed += not good
    moved_ok += good and on_slice
    print("conn", port, "ok" if good else "FAILED", flush=True)
print("done", ok, failed, moved_ok, moved, flush=True)
)PY";

class Drain : public LabFixture {
protected:
	LabOptions labOptions() const override
	{
		LabOptions o;
		o.prefix = "psd";
		o.steer = "hash";
		o.workloads = {"s1:w1:100.64.1.0/24", "s2:w2:100.64.2.0/24", "s3:w3:100.64.3.0/24"};
		return o;
	}

	std::string ctl() const { return buildPath("src/ctl/portslicectl"); }

	void startServer(const std::string &s, int drainSeconds = kDrainSeconds)
	{
		std::string config = labDir() + "/" + s + "/portslice.toml";
		auto r = run(sourcePath("tests/lab/lib/fleet.sh") + " --server " + s + " > " + config);
		ASSERT_TRUE(r.ok()) << r.output;
		startInNode(s, buildPath("src/daemon/portsliced") + " --config " + config +
				       " --state-dir \"$LAB_STATE_DIR\" --drain-seconds " + std::to_string(drainSeconds),
			    labDir() + "/" + s + "/portsliced.log");
		for (int i = 0; i < 100; ++i) {
			if (inNode(s, ctl() + " status").ok())
				return;
			std::this_thread::sleep_for(std::chrono::milliseconds(100));
		}
		FAIL() << s << ": portsliced not ready:\n" << run("cat " + labDir() + "/" + s + "/portsliced.log").output;
	}

	std::string write(const std::string &name, const std::string &text)
	{
		std::string path = labDir() + "/" + name;
		std::ofstream(path) << text;
		return path;
	}

	// Waits (bounded) until `file` has a line starting with `word`; returns that line.
	std::string waitForLine(const std::string &file, const std::string &word, int seconds)
	{
		auto end = Clock::now() + std::chrono::seconds(seconds);
		while (Clock::now() < end) {
			std::ifstream in(file);
			for (std::string line; std::getline(in, line);)
				if (line.rfind(word, 0) == 0)
					return line;
			std::this_thread::sleep_for(std::chrono::milliseconds(50));
		}
		return {};
	}

	uint64_t generation(const std::string &s)
	{
		std::smatch m;
		std::string out = inNode(s, ctl() + " status").output;
		return std::regex_search(out, m, std::regex(R"(generation: (\d+))")) ? std::stoull(m[1]) : 0;
	}

	// The applied plan (D-Bus Plan()), as busctl prints it.
	std::string plan(const std::string &s)
	{
		return inNode(s, "busctl --system call org.portslice.Egress1 /org/portslice/Egress1 "
				 "org.portslice.Egress1 Plan").output;
	}

	long drainElements(const std::string &s)
	{
		std::string out = inNode(s, "nft -j list map inet portslice drain_zone | jq '[.nftables[] | .map? | "
					    "select(. != null) | (.elem // []) | length] | add // 0'").output;
		return out.empty() ? -1 : std::stol(out);
	}

	// Flows from `workload` to inet's labtraffic server (port 7000) on the
	// four inet addresses: the shared ports inet saw for answered flows, and
	// how many flows got no answer.
	std::vector<int> newFlows(const std::string &workload, int count, int *failed, std::string *output)
	{
		auto r = inNode(workload, buildPath("tests/lab/labtraffic") +
						  " send --to 203.0.113.10:7000,203.0.113.11:7000,203.0.113.12:7000,"
						  "203.0.113.13:7000 --tcp " + std::to_string(count) + " --udp " +
						  std::to_string(count) + " --parallel 8 --timeout-ms 2000");
		*output = r.output;
		std::vector<int> ports;
		std::regex ok(R"((tcp|udp) ok 198\.51\.100\.1:(\d+))");
		*failed = 0;
		std::istringstream in(r.output);
		for (std::string line; std::getline(in, line);) {
			std::smatch m;
			if (std::regex_search(line, m, ok))
				ports.push_back(std::stoi(m[2]));
			else if (line.rfind("tcp ", 0) == 0 || line.rfind("udp ", 0) == 0)
				++*failed;
		}
		return ports;
	}

	uint64_t secondHops(const std::string &s)
	{
		std::string out = inNode(s, ctl() + " stats --json | jq '[.xdp[] | select(.verdict == \"second_hop\") | "
					    ".packets] | add // 0'").output;
		return out.empty() ? 0 : std::stoull(out);
	}

	// inet's TCP server and w1's long connections to it (client.py, which
	// sends its bytes once `go` exists), ready; how many of them use ports
	// of slice 0 (a fatal failure when none does).
	struct LongFlows {
		std::string clientLog, go;
		int onSlice = 0;
	};
	void startLongFlows(LongFlows *flows)
	{
		std::string serverLog = labDir() + "/inet-server.log";
		flows->clientLog = labDir() + "/w1-client.log";
		flows->go = labDir() + "/go";
		startInNode("inet", "python3 " + write("server.py", kServer), serverLog);
		ASSERT_FALSE(waitForLine(serverLog, "listening", 10).empty()) << run("cat " + serverLog).output;
		startInNode("w1", "python3 " + write("client.py", kClient) + " " + flows->go, flows->clientLog);
		std::string ready = waitForLine(flows->clientLog, "ready", 20);
		ASSERT_FALSE(ready.empty()) << run("cat " + flows->clientLog).output;
		std::istringstream ports(ready.substr(6));
		for (int p; ports >> p;)
			flows->onSlice += p >= kSlice0Lo && p <= kSlice0Hi;
		ASSERT_GT(flows->onSlice, 0) << "no connection of w1 on slice 0: " << ready;
	}

	// Let w1's long connections send their bytes both ways and wait for them
	// (bounded): how many worked and not, and of those on slice 0.
	struct LongFlowsDone {
		int ok = 0, failed = 0, movedOk = 0, movedTotal = 0;
	};
	void finishLongFlows(const LongFlows &flows, LongFlowsDone *out)
	{
		std::ofstream(flows.go) << "go\n";
		std::string done = waitForLine(flows.clientLog, "done", 40);
		ASSERT_FALSE(done.empty()) << run("cat " + flows.clientLog).output;
		std::istringstream(done.substr(5)) >> out->ok >> out->failed >> out->movedOk >> out->movedTotal;
	}

	// Slice 0 of 198.51.100.1 goes from s1 to s2: the loser first, the new owner last.
	void moveSlice0ToS2()
	{
		for (const char *s : {"s1", "s3", "s2"}) {
			auto r = inNode(s, ctl() + " set-owner 198.51.100.1 0 s2");
			ASSERT_TRUE(r.ok()) << s << ": " << r.output;
		}
	}
};

TEST_F(Drain, EstablishedConnectionsOnAMovedSliceKeepWorkingAndTheDrainEndsAtItsDeadline)
{
	for (const char *s : {"s1", "s2", "s3"})
		ASSERT_NO_FATAL_FAILURE(startServer(s));
	LongFlows flows;
	ASSERT_NO_FATAL_FAILURE(startLongFlows(&flows));
	const std::string &clientLog = flows.clientLog;
	const int onSlice = flows.onSlice;
	uint64_t before1 = generation("s1"), before2 = generation("s2");

	ASSERT_NO_FATAL_FAILURE(moveSlice0ToS2());
	auto moved = Clock::now();
	// s1 keeps the flows in drain_zone, keyed by shared address and port:
	// flows to different peers may share a NAT port, so there are at most as
	// many elements as connections (that every one still works is checked
	// below). Every server names s1 previous.
	long kept = drainElements("s1");
	EXPECT_GT(kept, 0);
	EXPECT_LE(kept, onSlice);
	for (const char *s : {"s1", "s2", "s3"})
		EXPECT_NE(plan(s).find(R"(\"previous\": \"s1\")"), std::string::npos) << s << ": " << plan(s);
	EXPECT_NE(inNode("s1", "conntrack -L 2>/dev/null | grep -c 'dport=1[0][0-9][0-9][0-9] '").output, "0\n");

	// Bytes both ways on every connection, after set-owner on all three servers.
	LongFlowsDone done;
	ASSERT_NO_FATAL_FAILURE(finishLongFlows(flows, &done));
	const int ok = done.ok, failed = done.failed, movedOk = done.movedOk, movedTotal = done.movedTotal;
	EXPECT_EQ(failed, 0) << run("cat " + clientLog).output;
	EXPECT_EQ(movedTotal, onSlice);
	EXPECT_EQ(movedOk, onSlice) << "connections on the moved slice stopped working";
	uint64_t hops = secondHops("s2");
	std::printf("drain: %d connections, %d on the moved slice, %d answered after the move (%d of the moved); "
		    "s1 drain_zone elements %ld; s2 second hops %llu\n",
		    ok + failed, onSlice, ok, movedOk, drainElements("s1"), static_cast<unsigned long long>(hops));
	EXPECT_GT(hops, 0u) << "no answer took the new owner's second hop to s1";

	// The deadline passes: every server drops the previous owner in a new generation.
	bool ended = false;
	while (!ended && Clock::now() - moved < std::chrono::seconds(kDrainSeconds + 8)) {
		std::this_thread::sleep_for(std::chrono::milliseconds(250));
		ended = plan("s1").find("previous") == std::string::npos && plan("s2").find("previous") == std::string::npos;
	}
	double seconds = std::chrono::duration<double>(Clock::now() - moved).count();
	EXPECT_TRUE(ended) << "the drain did not end: " << plan("s1");
	EXPECT_GE(seconds, kDrainSeconds - 1.0);
	std::printf("drain: ended %.2f s after the move (--drain-seconds %d)\n", seconds, kDrainSeconds);
	EXPECT_GT(generation("s1"), before1 + 1) << "the drain's end is a generation of its own on s1";
	EXPECT_GT(generation("s2"), before2 + 1);
	EXPECT_EQ(drainElements("s1"), 0);
	std::string myPorts = inNode("s1", "nft list set inet portslice my_ports").output;
	EXPECT_EQ(myPorts.find("198.51.100.1 . 10000-10999"), std::string::npos) << myPorts;
	EXPECT_EQ(inNode("s1", "cat \"$LAB_STATE_DIR\"/owners").output.find("\ndrain "), std::string::npos);
}

// During the drain the router sends every answer of 198.51.100.0/24 to the
// old owner s1 (as in the Vagrant lab): s1 tunnels the moved slice's answers
// to the new owner s2, whose forwarder must keep those of the flows s2 opened
// since the move (it holds their conntrack state) and send only the others
// on to s1. Both kinds of flow must get their answers.
TEST_F(Drain, NewOwnersNewFlowsAreAnsweredWhileAnswersReachTheOldOwner)
{
	// A drain long enough for every flow below to start within it.
	for (const char *s : {"s1", "s2", "s3"})
		ASSERT_NO_FATAL_FAILURE(startServer(s, 40));
	startInNode("inet", buildPath("tests/lab/labtraffic") + " serve --port 7000 --seconds 60 --quiet",
		    labDir() + "/inet-labtraffic.log");
	LongFlows flows;
	ASSERT_NO_FATAL_FAILURE(startLongFlows(&flows));
	const std::string &clientLog = flows.clientLog;
	const int onSlice = flows.onSlice;

	ASSERT_NO_FATAL_FAILURE(moveSlice0ToS2());
	ASSERT_TRUE(steer("s1").ok());
	for (const char *s : {"s1", "s2"})
		ASSERT_NE(plan(s).find(R"(\"previous\": \"s1\")"), std::string::npos) << s << ": not draining";

	// s2's workload opens new flows; its share of 198.51.100.1 now starts
	// with slice 0, so about half of them take ports there.
	int failed = 0;
	std::string output;
	std::vector<int> seen = newFlows("w2", 20, &failed, &output);
	int newOnSlice = 0;
	for (int p : seen)
		newOnSlice += p >= kSlice0Lo && p <= kSlice0Hi;
	std::printf("drain: w2 opened 40 flows during the drain, %zu answered (%d on the moved slice), %d not\n",
		    seen.size(), newOnSlice, failed);
	EXPECT_EQ(failed, 0) << "new flows of the new owner lost while the old owner drains:\n"
			     << output << inNode("s2", "conntrack -L 2>/dev/null | grep UNREPLIED | grep dport=7000").output;
	EXPECT_GT(newOnSlice, 0) << "no new flow of w2 took a port of the moved slice:\n" << output;
	// Still in the drain, so the answers above went through the handover.
	EXPECT_NE(plan("s2").find(R"(\"previous\": \"s1\")"), std::string::npos) << "the drain ended too early";

	// The old owner's flows, opened before the move, still carry bytes both ways.
	LongFlowsDone done;
	ASSERT_NO_FATAL_FAILURE(finishLongFlows(flows, &done));
	EXPECT_EQ(done.failed, 0) << run("cat " + clientLog).output;
	EXPECT_EQ(done.movedOk, onSlice) << "the old owner's connections on the moved slice stopped working";
	EXPECT_GT(secondHops("s2"), 0u) << "no answer of s1's flows took the new owner's second hop back to s1";
}

} // namespace
