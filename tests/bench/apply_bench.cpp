// SPDX-License-Identifier: MIT
// Benchmark: portsliced --apply-once vs `nft -f` of the same dump on generated fleets, and one slice move vs `nft add element`.
//
// apply_bench [--sizes 1000,10000] [--pairs 3] [--move-sources 2600]
// Needs root: every run gets a fresh network namespace (psn-bench-PID-K),
// deleted right after. Prints the figures; it asserts nothing.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <sched.h>
#include <spawn.h>
#include <string>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include "config/config.h"
#include "nft/apply.h"
#include "nft/model.h"
#include "plan/plan.h"
#include "nat_fleet.h"

extern char **environ;

using namespace portslice;
using Clock = std::chrono::steady_clock;

namespace {

std::string gBuild = PORTSLICE_BUILD_ROOT;
long gChildPeakKb = 0; // peak RSS of the last child run() waited for (ip netns exec execs its command)

int run(const std::vector<std::string> &argv, bool quiet = true)
{
	std::vector<char *> args;
	std::vector<std::string> copy = argv;
	for (auto &a : copy)
		args.push_back(a.data());
	args.push_back(nullptr);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	if (quiet)
		posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	pid_t pid;
	int rc = posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ);
	posix_spawn_file_actions_destroy(&fa);
	if (rc != 0)
		return -1;
	int status = 0;
	rusage usage{};
	while (wait4(pid, &status, 0, &usage) < 0 && errno == EINTR) {
	}
	gChildPeakKb = usage.ru_maxrss;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string gLiveNs; // deleted on the way out, also when a command fails
double gChildCpu = 0; // user + system seconds of the last timed() command

double timed(const std::vector<std::string> &argv)
{
	rusage before{}, after{};
	getrusage(RUSAGE_CHILDREN, &before);
	auto t0 = Clock::now();
	int rc = run(argv);
	double s = std::chrono::duration<double>(Clock::now() - t0).count();
	getrusage(RUSAGE_CHILDREN, &after);
	auto secs = [](const timeval &t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
	gChildCpu = secs(after.ru_utime) - secs(before.ru_utime) + secs(after.ru_stime) - secs(before.ru_stime);
	if (rc != 0) {
		std::fprintf(stderr, "command failed (%d): %s ...\n", rc, argv.back().c_str());
		if (!gLiveNs.empty())
			run({"ip", "netns", "del", gLiveNs});
		std::exit(1);
	}
	return s;
}

double median(std::vector<double> v)
{
	std::sort(v.begin(), v.end());
	size_t n = v.size();
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int gNs = 0;
std::string freshNs()
{
	std::string ns = "psn-bench-" + std::to_string(getpid()) + "-" + std::to_string(++gNs);
	run({"ip", "netns", "add", ns});
	gLiveNs = ns;
	return ns;
}
void dropNs(const std::string &ns)
{
	run({"ip", "netns", "del", ns});
	gLiveNs.clear();
}

void fullApply(uint32_t n, int pairs, const std::string &dir)
{
	std::string toml = dir + "/fleet-" + std::to_string(n) + ".toml";
	std::string dump = dir + "/fleet-" + std::to_string(n) + ".nft";
	std::ofstream(toml) << portslice::testing::generatedFleet(n);
	if (run({"sh", "-c", gBuild + "/src/ctl/portslicectl dump --config " + toml + " > " + dump + " 2>/dev/null"}) != 0) {
		std::fprintf(stderr, "dump of %u sources failed\n", n);
		std::exit(1);
	}
	size_t lines = 0;
	{
		std::ifstream in(dump);
		std::string l;
		while (std::getline(in, l))
			lines++;
	}
	std::vector<double> a, b, ca, cb, ra, rb, ratios;
	for (int i = 0; i < pairs; i++) {
		std::string ns = freshNs();
		a.push_back(timed({"ip", "netns", "exec", ns, gBuild + "/src/daemon/portsliced", "--no-xdp", "--state-dir",
				   dir + "/state", "--config", toml, "--apply-once"}));
		ca.push_back(gChildCpu);
		ra.push_back(static_cast<double>(gChildPeakKb) / 1024);
		dropNs(ns);
		ns = freshNs();
		b.push_back(timed({"ip", "netns", "exec", ns, "nft", "-f", dump}));
		cb.push_back(gChildCpu);
		rb.push_back(static_cast<double>(gChildPeakKb) / 1024);
		dropNs(ns);
		ratios.push_back(a.back() / b.back());
	}
	double ma = median(a), mb = median(b);
	std::printf("full apply  %6u sources (%zu dump lines): wall portsliced %.3f s, nft -f %.3f s, ratio %.2f "
		    "(median of the pairs' ratios %.2f); cpu (user+sys) %.3f s vs %.3f s, ratio %.2f; peak RSS %.1f MB "
		    "vs %.1f MB (median of %d pairs)\n",
		    n, lines, ma, mb, ma / mb, median(ratios), median(ca), median(cb), median(ca) / median(cb), median(ra),
		    median(rb), pairs);
	std::fflush(stdout);
}

void sliceMove(uint32_t n, int pairs, const std::string &dir)
{
	config::LoadResult loaded = config::loadString(portslice::testing::generatedFleet(n), "fleet.toml");
	if (!loaded.ok()) {
		std::fprintf(stderr, "generated fleet does not load\n");
		std::exit(1);
	}
	plan::Plan p = *plan::makePlan(*loaded.config).plan;

	if (unshare(CLONE_NEWNET) != 0) {
		std::perror("unshare");
		std::exit(1);
	}
	auto nft = nft::NftApplier::open();
	auto full = nft->apply(p, nullptr, 1);
	if (!full) {
		std::fprintf(stderr, "%s\n", full.error().message().c_str());
		std::exit(1);
	}
	Ipv4 a0 = p.addresses[0].address;
	std::string elem = "{ " + a0.str() + " . 3072-5119 }";
	// The first address's slices: my_ports, or shard 0 of it (nft/model.h;
	// in the unit form my_ports is empty, and the CLI's change still lists the table).
	const std::string ports = nft::portForm(p).portShards() > 1 ? "my_ports_0" : "my_ports";
	// s1 (the planned server, index 0) takes slice 1 of the first address
	// from s2 (index 1), then gives it back: a gain and a loss per pair.
	std::vector<double> gain, lose, gainTx, loseTx, addB, delB;
	size_t gainElems = 0, loseElems = 0; // my_ports and the my_blocks blocks of the slice
	for (int i = 0; i < 2 * pairs; i++) {
		bool gaining = i % 2 == 0;
		if (gaining) {
			// B: the nft CLI adding and deleting the my_ports element of
			// the same move (while s2 holds the slice).
			addB.push_back(1e3 * timed({"nft", "add", "element", "inet", "portslice", ports, elem}));
			delB.push_back(1e3 * timed({"nft", "delete", "element", "inet", "portslice", ports, elem}));
		}
		// A: what the daemon does for SetSliceOwner, minus XDP and conntrack:
		// re-plan the slice, derive the delta, send it.
		auto t0 = Clock::now();
		std::optional<plan::SliceMove> move = plan::moveSlice(p, 0, 1, gaining ? 0 : 1);
		if (!move) {
			std::fprintf(stderr, "slice move needs a full plan\n");
			std::exit(1);
		}
		nft::MoveDelta d = nft::moveDelta(p, *move);
		auto t1 = Clock::now();
		auto r = nft->applyDelta(d.before, d.after, static_cast<uint64_t>(i) + 2);
		auto t2 = Clock::now();
		if (!r || r->elementsAdded + r->elementsDeleted == 0) {
			std::fprintf(stderr, "slice move: %s\n", r ? "no element changed" : r.error().message().c_str());
			std::exit(1);
		}
		(gaining ? gainElems : loseElems) = r->elementsAdded + r->elementsDeleted;
		(gaining ? gain : lose).push_back(std::chrono::duration<double>(t2 - t0).count() * 1e3);
		(gaining ? gainTx : loseTx).push_back(std::chrono::duration<double>(t2 - t1).count() * 1e3);
	}
	(void)dir;
	std::printf("slice move  %6u sources (%zu elements), median of %d pairs, ms:\n", n, full->elementsAdded, pairs);
	std::printf("  gain (%zu elements added): moveSlice + moveDelta + applyDelta %.3f (transaction %.3f), "
		    "nft add element %.1f, ratio %.4f\n",
		    gainElems, median(gain), median(gainTx), median(addB), median(gain) / median(addB));
	std::printf("  loss (%zu elements changed): moveSlice + moveDelta + applyDelta %.3f (transaction %.3f), "
		    "nft delete element %.1f, ratio %.4f\n",
		    loseElems, median(lose), median(loseTx), median(delB), median(lose) / median(delB));
}

} // namespace

int main(int argc, char **argv)
{
	std::vector<uint32_t> sizes = {1000, 10000};
	int pairs = 3;
	uint32_t moveSources = 2600;
	for (int i = 1; i < argc; i++) {
		std::string arg = argv[i];
		if (arg == "--sizes" && i + 1 < argc) {
			sizes.clear();
			std::string list = argv[++i];
			size_t p = 0;
			while (p <= list.size()) {
				size_t c = list.find(',', p);
				sizes.push_back(static_cast<uint32_t>(std::stoul(list.substr(p, c - p))));
				if (c == std::string::npos)
					break;
				p = c + 1;
			}
		} else if (arg == "--pairs" && i + 1 < argc) {
			pairs = std::stoi(argv[++i]);
		} else if (arg == "--move-sources" && i + 1 < argc) {
			moveSources = static_cast<uint32_t>(std::stoul(argv[++i]));
		} else {
			std::fprintf(stderr, "usage: apply_bench [--sizes N,N] [--pairs K] [--move-sources N]\n");
			return 2;
		}
	}
	if (geteuid() != 0) {
		std::printf("apply_bench: needs root (fresh network namespaces)\n");
		return 77;
	}
	std::string dir = std::filesystem::temp_directory_path() / ("psn-bench-" + std::to_string(getpid()));
	std::filesystem::create_directories(dir);
	for (uint32_t n : sizes)
		if (n)
			fullApply(n, pairs, dir);
	if (moveSources)
		sliceMove(moveSources, pairs, dir);
	std::filesystem::remove_all(dir);
	return 0;
}
