// SPDX-License-Identifier: MIT
// Fixture for fleet-mode lab tests: a three-member etcd cluster, and on every server portsliced with portslice-fleetd beside it (docs/architecture.md, "Fleet mode").
//
// The lab fleet of tests/lab/lib/fleet.sh (two shared addresses, six 1000-port
// slices each; sK owns slices K-1 and K+2) with a [fleet] section naming the
// lab's etcd members, lease_seconds 2 and a short return_home_seconds. The
// router hashes return traffic over the servers by address. Helpers read each
// server's claims (the slices its daemon translates into now) straight from
// its private bus, and keep a sampler that records them on every server
// while a test runs, to prove that no two live servers ever own one slice.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "lab_fixture.h"

namespace portslice::lab {

using FleetClock = std::chrono::steady_clock;

// One slice of one shared address: "198.51.100.1/2".
using SliceId = std::string;

inline SliceId sliceId(const std::string &address, int slice)
{
	return address + "/" + std::to_string(slice);
}

// What one server's daemon said at one moment.
struct ClaimSample {
	double at = 0;          // seconds since the sampler started
	std::string server;
	bool ok = false;        // the daemon answered
	std::set<SliceId> mine; // the slices it translates into (its own, not draining ones)
};

class FleetLab : public LabFixture {
protected:
	static constexpr int kLeaseSeconds = 2;
	static constexpr const char *kFleetPrefix = "/portslice/lab1";

	LabOptions labOptions() const override
	{
		LabOptions o;
		o.prefix = "pslf";
		o.steer = "hash";
		o.etcd = 3;
		// 250 inside addresses each: a source's inside addresses are spread
		// over its server's slices, so a new slice gets some of them.
		o.workloads = {"s1:w1:100.64.1.0/24:250", "s2:w2:100.64.2.0/24:250", "s3:w3:100.64.3.0/24:250"};
		return o;
	}

	// return_home_seconds of the lab's [fleet] section.
	virtual int returnHomeSeconds() const { return 4; }
	// How long an old owner that is alive drains a slice that leaves it.
	virtual int drainSeconds() const { return 4; }

	void SetUp() override
	{
		if (geteuid() == 0 && !runShell("command -v etcd && command -v etcdctl").ok())
			GTEST_SKIP() << "no etcd/etcdctl (Debian etcd-server, etcd-client: .ci/install-deps)";
		LabFixture::SetUp();
		if (HasFatalFailure() || IsSkipped())
			return;
		ASSERT_EQ(access(fleetd().c_str(), X_OK), 0)
			<< fleetd() << " is not built: this build has no fleet mode (portslice-fleetd)";
		for (const char *s : {"s1", "s2", "s3"})
			ASSERT_NO_FATAL_FAILURE(startServer(s));
		ASSERT_NO_FATAL_FAILURE(waitLive({"s1", "s2", "s3"}, 30));
	}

	void TearDown() override
	{
		stopSampler();
		if (HasFailure())
			for (const char *s : {"s1", "s2", "s3"})
				std::printf("--- %s portslice-fleetd log (last 40 lines):\n%s", s,
					    run("tail -n 40 " + logPath(s, "fleetd") + " 2>&1").output.c_str());
		LabFixture::TearDown();
	}

	std::string ctl() const { return buildPath("src/ctl/portslicectl"); }
	std::string fleetd() const { return buildPath("src/fleet/portslice-fleetd"); }
	std::string configPath(const std::string &s) const { return labDir() + "/" + s + "/portslice.toml"; }
	std::string statusFile(const std::string &s) const { return labDir() + "/" + s + "/fleetd.json"; }
	std::string logPath(const std::string &s, const std::string &what) const
	{
		return labDir() + "/" + s + "/" + what + ".log";
	}

	std::string etcdctl(const std::string &args) const
	{
		return "ETCDCTL_API=3 etcdctl --endpoints " + etcdEndpoints() +
		       " --dial-timeout 1s --command-timeout 3s " + args;
	}

	// portsliced, then portslice-fleetd, on server s; waits until the daemon answers.
	void startServer(const std::string &s)
	{
		auto r = run(sourcePath("tests/lab/lib/fleet.sh") + " --server " + s + " --etcd " + etcdEndpoints() +
			     " --fleet-prefix " + kFleetPrefix + " --lease-seconds " + std::to_string(kLeaseSeconds) +
			     " --return-home-seconds " + std::to_string(returnHomeSeconds()) + " > " + configPath(s));
		ASSERT_TRUE(r.ok()) << r.output;
		daemons_[s] = startInNode(s, buildPath("src/daemon/portsliced") + " --config " + configPath(s) +
						     " --state-dir \"$LAB_STATE_DIR\" --drain-seconds " +
						     std::to_string(drainSeconds()),
					  logPath(s, "portsliced"));
		bool ready = false;
		for (int i = 0; i < 100 && !ready; ++i) {
			ready = inNode(s, ctl() + " status").ok();
			if (!ready)
				std::this_thread::sleep_for(std::chrono::milliseconds(100));
		}
		ASSERT_TRUE(ready) << s << ": portsliced not ready:\n" << run("cat " + logPath(s, "portsliced")).output;
		startFleetd(s);
	}

	void startFleetd(const std::string &s)
	{
		fleetds_[s] = startInNode(s, fleetd() + " --config " + configPath(s) + " --status-file " + statusFile(s) +
						    " --drain-seconds " + std::to_string(drainSeconds()),
					  logPath(s, "fleetd"));
	}

	// Kills a server's daemons at once (SIGKILL): a crash, not a shutdown.
	// startInNode's pid is the command's own (lab.sh exec replaces itself).
	void killServer(const std::string &s)
	{
		for (auto *m : {&fleetds_, &daemons_}) {
			auto it = m->find(s);
			if (it != m->end() && it->second > 0) {
				::kill(it->second, SIGKILL);
				stopInNode(it->second, std::chrono::milliseconds(500));
				m->erase(it);
			}
		}
	}

	// The etcd value of PREFIX/KEY, "" when absent.
	std::string etcdGet(const std::string &key)
	{
		auto r = inNode("s1", etcdctl("get --print-value-only " + std::string(kFleetPrefix) + "/" + key), 15);
		std::string v = r.output;
		while (!v.empty() && v.back() == '\n')
			v.pop_back();
		return r.ok() ? v : "";
	}

	// The servers in PREFIX/live, sorted.
	std::set<std::string> liveServers()
	{
		std::set<std::string> out;
		std::string v = etcdGet("live");
		auto at = v.find("\"servers\"");
		if (at == std::string::npos)
			return out;
		auto open = v.find('[', at), close = v.find(']', at);
		std::regex name(R"re("([^"]+)")re");
		std::string list = v.substr(open, close - open);
		for (std::sregex_iterator it(list.begin(), list.end(), name), end; it != end; ++it)
			out.insert((*it)[1]);
		return out;
	}

	// Waits until PREFIX/live is exactly `want` and every server of it has
	// applied the revision it is at (its fleetd status file says so).
	void waitLive(const std::set<std::string> &want, int seconds)
	{
		auto deadline = FleetClock::now() + std::chrono::seconds(seconds);
		std::set<std::string> live;
		while (FleetClock::now() < deadline) {
			live = liveServers();
			if (live == want) {
				bool applied = true;
				for (const auto &s : want) {
					auto st = run("jq -e '.live and .applied_revision > 0 and .applied_revision >= .revision "
						      "and .apply_error == \"\"' " + statusFile(s) + " >/dev/null");
					applied = applied && st.ok();
				}
				if (applied)
					return;
			}
			std::this_thread::sleep_for(std::chrono::milliseconds(200));
		}
		std::string logs;
		for (const char *s : {"s1", "s2", "s3"})
			logs += std::string("--- ") + s + " fleetd:\n" + run("tail -n 15 " + logPath(s, "fleetd")).output +
				"--- status: " + run("cat " + statusFile(s)).output;
		FAIL() << "live is " << join(live) << ", not " << join(want) << " with every member applied, after "
		       << seconds << " s\n" << logs;
	}

	static std::string join(const std::set<std::string> &set)
	{
		std::string out = "[";
		for (const auto &s : set)
			out += (out.size() > 1 ? " " : "") + s;
		return out + "]";
	}

	// The slices server s's daemon translates into now, from its Plan() on its
	// bus (reached from here through the bus socket: no namespace switch).
	ClaimSample claims(const std::string &s)
	{
		ClaimSample out;
		out.server = s;
		auto r = runArgv({"sh", "-c",
				  "busctl --address=" + shellQuote(busAddress(s)) +
					  " --json=short --timeout=2 call org.portslice.Egress1 /org/portslice/Egress1 "
					  "org.portslice.Egress1 Plan | jq -r '.data[0] | fromjson | .addresses[] | "
					  ".address as $a | .my_slices[] | \"\\($a)/\\(.)\"'"},
				 5);
		out.ok = r.ok();
		std::istringstream in(r.output);
		for (std::string line; std::getline(in, line);)
			if (!line.empty())
				out.mine.insert(line);
		return out;
	}

	// Each daemon's view of every slice's owner ("ADDRESS/SLICE" -> server), from Plan().
	std::map<SliceId, std::string> ownersSeenBy(const std::string &s)
	{
		auto r = runArgv({"sh", "-c",
				  "busctl --address=" + shellQuote(busAddress(s)) +
					  " --json=short --timeout=2 call org.portslice.Egress1 /org/portslice/Egress1 "
					  "org.portslice.Egress1 Plan | jq -r '.data[0] | fromjson | .addresses[] | "
					  ".address as $a | .owners[] | (.slices | if type == \"object\" then \"\\(.first)-\\(.last)\" "
					  "else . end) as $s | \"\\($a) \\($s) \\(.server)\"'"},
				 5);
		std::map<SliceId, std::string> out;
		std::istringstream in(r.output);
		std::string address, slices, server;
		while (in >> address >> slices >> server) {
			int lo = 0, hi = 0;
			if (std::sscanf(slices.c_str(), "%d-%d", &lo, &hi) == 1)
				hi = lo;
			for (int i = lo; i <= hi; ++i)
				out[sliceId(address, i)] = server;
		}
		return out;
	}

	// Samples the claims of `servers` round after round until stopSampler().
	void startSampler(std::vector<std::string> servers)
	{
		stopSampler();
		samplerStop_ = false;
		samplerStart_ = FleetClock::now();
		samples_.clear();
		sampler_ = std::thread([this, servers] {
			while (!samplerStop_) {
				for (const auto &s : servers) {
					ClaimSample c = claims(s);
					c.at = std::chrono::duration<double>(FleetClock::now() - samplerStart_).count();
					std::lock_guard lock(samplesMutex_);
					samples_.push_back(std::move(c));
				}
			}
		});
	}

	void stopSampler()
	{
		samplerStop_ = true;
		if (sampler_.joinable())
			sampler_.join();
	}

	// Overlaps: a server B claims a slice while server A claims it in the
	// sample before B's and in the sample after (A never let go in between).
	// Only answers of running daemons count (a killed server claims nothing).
	// notLive: a server's samples within [from, to) sampler seconds do not
	// count: it was not in `live` then, so it was no live server.
	std::vector<std::string> overlaps(const std::map<std::string, std::pair<double, double>> &notLive = {})
	{
		std::lock_guard lock(samplesMutex_);
		auto counts = [&](const ClaimSample &c) {
			auto it = notLive.find(c.server);
			return c.ok && (it == notLive.end() || c.at < it->second.first || c.at >= it->second.second);
		};
		std::vector<std::string> out;
		for (size_t i = 0; i < samples_.size(); ++i) {
			const ClaimSample &b = samples_[i];
			if (!counts(b))
				continue;
			for (const SliceId &slice : b.mine) {
				std::map<std::string, int> before, after; // server -> claimed (1) or not (0), nearest sample
				for (size_t j = i; j-- > 0;) {
					const ClaimSample &a = samples_[j];
					if (a.server != b.server && !before.count(a.server))
						before[a.server] = counts(a) && a.mine.count(slice);
				}
				for (size_t j = i + 1; j < samples_.size(); ++j) {
					const ClaimSample &a = samples_[j];
					if (a.server != b.server && !after.count(a.server))
						after[a.server] = counts(a) && a.mine.count(slice);
				}
				for (const auto &[server, claimed] : before)
					if (claimed && after.count(server) && after[server])
						out.push_back(slice + " by " + server + " and " + b.server + " at " +
							      std::to_string(b.at) + " s");
			}
		}
		return out;
	}

	// Seconds on the sampler's clock (ClaimSample::at).
	double samplerSeconds() const { return std::chrono::duration<double>(FleetClock::now() - samplerStart_).count(); }

	size_t sampleCount()
	{
		std::lock_guard lock(samplesMutex_);
		return samples_.size();
	}

	// Long-lived flows (tests/lab/lib/hold.py) from a workload to inet:7300,
	// until stopFile exists; returns after they are established.
	pid_t holdFlows(const std::string &workload, const std::string &from, int tcp, int udp,
			const std::string &stopFile, int seconds = 90)
	{
		std::string log = labDir() + "/" + workload + ".hold.log";
		pid_t pid = startInNode(workload,
					"python3 " + sourcePath("tests/lab/lib/hold.py") +
						" hold --to 203.0.113.10:7300,203.0.113.11:7300,203.0.113.12:7300,"
						"203.0.113.13:7300 --tcp " +
						std::to_string(tcp) + " --udp " + std::to_string(udp) + " --from " + from +
						" --interval-ms 200 --timeout-ms 4000 --seconds " +
						std::to_string(seconds) + " --stop " + stopFile,
					log);
		for (int i = 0; i < 100; ++i) {
			if (run("grep -q '^ready' " + log).ok())
				return pid;
			std::this_thread::sleep_for(std::chrono::milliseconds(100));
		}
		ADD_FAILURE() << workload << ": the long-lived flows did not start:\n" << run("cat " + log).output;
		return pid;
	}

	void startHoldServer()
	{
		startInNode("inet", "python3 " + sourcePath("tests/lab/lib/hold.py") + " serve --port 7300 --seconds 150",
			    labDir() + "/inet.hold.log");
		startInNode("inet", buildPath("tests/lab/labtraffic") + " serve --port 7000 --ports 1 --seconds 150",
			    labDir() + "/inet.traffic.log");
		std::this_thread::sleep_for(std::chrono::milliseconds(300));
	}

	// "summary held H broken B rounds R" and the broken lines of a hold log.
	std::string holdReport(const std::string &workload)
	{
		return run("cat " + labDir() + "/" + workload + ".hold.log").output;
	}

	// New flows from a workload: "ADDRESS:PORT" of each answered one; failed counts the others.
	std::vector<std::pair<std::string, int>> flows(const std::string &workload, const std::string &from, int count,
						       int *failed)
	{
		auto r = inNode(workload, buildPath("tests/lab/labtraffic") +
						  " send --to 203.0.113.10:7000,203.0.113.11:7000,203.0.113.12:7000,"
						  "203.0.113.13:7000 --tcp " +
						  std::to_string(count) + " --udp " + std::to_string(count) +
						  " --parallel 8 --timeout-ms 1000 --from " + from);
		std::vector<std::pair<std::string, int>> out;
		std::regex ok(R"((tcp|udp) ok (198\.51\.100\.\d+):(\d+))");
		*failed = 0;
		std::istringstream in(r.output);
		for (std::string line; std::getline(in, line);) {
			std::smatch m;
			if (std::regex_search(line, m, ok))
				out.emplace_back(m[2], std::stoi(m[3]));
			else if (line.rfind("summary", 0) != 0 && !line.empty())
				++*failed;
		}
		return out;
	}

	// The slice of a port of the lab fleet (10000-15999 in 1000-port slices).
	static int sliceOf(int port) { return (port - 10000) / 1000; }

	std::map<std::string, pid_t> daemons_, fleetds_;

private:
	std::thread sampler_;
	std::atomic<bool> samplerStop_{true};
	FleetClock::time_point samplerStart_;
	std::mutex samplesMutex_;
	std::vector<ClaimSample> samples_;
};

} // namespace portslice::lab
