// SPDX-License-Identifier: MIT
// Benchmark: ns per packet of each XDP forwarder verdict (bpf_prog_test_run_opts) against a trivial XDP_PASS program, A B A B.
//
// Usage: xdp_bench [--repeat N] [--pairs P] [--only NAME]   (root; defaults 10000000 and 5)
//        xdp_bench --sync ADDRESSES   (map sync time at that fleet size)
//
// One frame per verdict; for each, P pairs of runs A (portslice_pass, the
// trivial reference) and B (portslice_fwd), alternating, each with repeat N;
// the kernel reports ns per round (bpf_prog_test_run_opts duration, time
// spent preempted excluded). Printed: median ns of A and B and the median of
// the per-pair ratios B/A. The programs come from forwarder_bench.bpf.o, the
// product's source built with FWD_BENCH_UNDO: a test run hands every round
// the previous round's output, and the undo prologue restores the original
// frame after an encapsulation. Its cost (one bpf_xdp_adjust_head, measured
// by portslice_adjust2) lands in the encapsulating rows; "ratio-undo" takes
// it out. The verdict counters are checked after every run: every round must
// have taken the verdict being measured.
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sched.h>
#include <string>
#include <unistd.h>
#include <vector>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>

#include "../bpf/xdp_frames.h"
#include "xdp/forwarder.h"

using namespace portslice;
using namespace portslice::xdptest;

namespace {

const Mac kS1Mac = mac("02:00:00:00:00:11");
const Mac kS2Mac = mac("02:00:00:00:00:12");
const Mac kRouterMac = mac("02:00:00:00:00:01");
const Ipv4 kS1 = ip("192.0.2.11"), kS2 = ip("192.0.2.12"), kS3 = ip("192.0.2.13");
const Ipv4 kShared = ip("198.51.100.1"), kInet = ip("203.0.113.10");

plan::Plan fleet()
{
	plan::Plan p;
	p.server = "s1";
	p.serverIndex = 0;
	p.datacenter = "lab1";
	p.uplink = "lo";
	p.servers = {{"s1", kS1, "lab1", kS1Mac}, {"s2", kS2, "lab1", kS2Mac},
		     {"s3", kS3, "lab1", mac("02:00:00:00:00:13")}};
	p.datacenters = {{"lab1", ip("192.0.2.1")}};
	plan::PlannedAddress a;
	a.address = kShared;
	a.datacenter = "lab1";
	a.local = true;
	a.portRange = {1024, 65535};
	a.sliceSize = 2048;
	a.sliceCount = 31;
	a.owner.assign(31, plan::kNoServer);
	a.previous.assign(31, plan::kNoServer);
	for (uint32_t i = 0; i < 31; i++)
		a.owner[i] = static_cast<int32_t>(i % 3);
	a.previous[3] = 1; // slice 3: ours, s2 draining
	p.addresses.push_back(a);
	return p;
}

uint16_t port(uint32_t slice)
{
	return static_cast<uint16_t>(1024 + slice * 2048 + 100);
}

Bytes toUs(const Bytes &ipPacket)
{
	return ethernet(kS1Mac, kRouterMac, kEthIpv4, ipPacket);
}

struct Run {
	double ns = 0;
	uint64_t rounds = 0; // counted by the verdict counter (forwarder runs only)
};

Run runOnce(int progFd, const Bytes &frame, uint32_t repeat)
{
	Bytes in = frame;
	Bytes out(frame.size() + 256);
	bpf_test_run_opts opts{};
	opts.sz = sizeof(opts);
	opts.data_in = in.data();
	opts.data_size_in = static_cast<uint32_t>(in.size());
	opts.data_out = out.data();
	opts.data_size_out = static_cast<uint32_t>(out.size());
	opts.repeat = repeat;
	if (bpf_prog_test_run_opts(progFd, &opts) != 0) {
		std::fprintf(stderr, "bpf_prog_test_run_opts: %s\n", std::strerror(errno));
		std::exit(1);
	}
	return Run{static_cast<double>(opts.duration), 0};
}

// forwarder_bench.bpf.o opened with plain libbpf: same maps, same programs.
struct BenchObject {
	bpf_object *obj = nullptr;
	~BenchObject()
	{
		if (obj)
			bpf_object__close(obj);
	}
	int prog(const char *name) const { return bpf_program__fd(bpf_object__find_program_by_name(obj, name)); }
	int map(const char *name) const { return bpf_object__find_map_fd_by_name(obj, name); }
	xdp::MapFds maps() const
	{
		return xdp::MapFds{map(FWD_NAME(FWD_MAP_CONFIG)),  map(FWD_NAME(FWD_MAP_ADDR_INDEX)),
				   map(FWD_NAME(FWD_MAP_ADDRS)),   map(FWD_NAME(FWD_MAP_SLICES)),
				   map(FWD_NAME(FWD_MAP_TARGETS)), map(FWD_NAME(FWD_MAP_ZONES)),
				   map(FWD_NAME(FWD_MAP_PEERS)),   map(FWD_NAME(FWD_MAP_COUNTERS))};
	}
};

double median(std::vector<double> v)
{
	std::sort(v.begin(), v.end());
	size_t n = v.size();
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Map sync at fleet size: N addresses of 31 slices (198.18.0.0/15, no
// traffic), owners spread over 31 servers; a full sync into empty maps, then
// the sync of a plan that moves one slice (what SetSliceOwner costs).
int syncBench(uint32_t addresses)
{
	plan::Plan p;
	p.server = "s0";
	p.serverIndex = 0;
	p.uplink = "lo";
	for (uint32_t i = 0; i < 31; i++)
		p.servers.push_back({"s" + std::to_string(i), Ipv4{ip("192.0.2.100").value + i}, "lab1",
				     mac("02:00:00:00:01:00")});
	for (uint32_t i = 0; i < addresses; i++) {
		plan::PlannedAddress a;
		a.address = Ipv4{ip("198.18.0.0").value + i};
		a.datacenter = "lab1";
		a.local = true;
		a.portRange = {1024, 65535};
		a.sliceSize = 2048;
		a.sliceCount = 31;
		for (uint32_t s = 0; s < 31; s++)
			a.owner.push_back(static_cast<int32_t>((s + i) % 31));
		a.previous.assign(31, plan::kNoServer);
		p.addresses.push_back(std::move(a));
	}
	auto tables = xdp::buildTables(p, kS1Mac, 1, {});
	uint32_t capacity = FWD_SLICES_DEFAULT;
	while (capacity < 2 * tables.sliceCount())
		capacity <<= 1;
	auto obj = xdp::ForwarderObject::load("", false, capacity);
	if (!obj) {
		std::fprintf(stderr, "%s\n", obj.error().message().c_str());
		return 1;
	}
	auto time = [](auto f) {
		auto t0 = std::chrono::steady_clock::now();
		f();
		return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
	};
	double full = time([&] {
		if (auto s = xdp::syncMaps(obj->maps(), tables); !s)
			std::fprintf(stderr, "%s\n", s.error().message().c_str());
	});
	std::vector<double> build, move, one;
	for (int r = 0; r < 5; r++) {
		p.addresses[addresses / 2].owner[7] = (p.addresses[addresses / 2].owner[7] + 1) % 31;
		xdp::ForwarderTables moved;
		build.push_back(time([&] { moved = xdp::buildTables(p, kS1Mac, 1, {}); }));
		move.push_back(time([&] {
			if (auto s = xdp::syncMaps(obj->maps(), moved); !s)
				std::fprintf(stderr, "%s\n", s.error().message().c_str());
		}));
	}
	for (int r = 0; r < 5; r++) {
		p.addresses[addresses / 3].owner[9] = (p.addresses[addresses / 3].owner[9] + 1) % 31;
		one.push_back(time([&] {
			auto u = xdp::buildSlices(p, {{addresses / 3, 9}}, {});
			if (auto s = xdp::syncSlices(obj->maps(), u); !s)
				std::fprintf(stderr, "%s\n", s.error().message().c_str());
		}));
	}
	std::printf("map sync, %u addresses x 31 slices = %zu slice words (fwd_slices %u)\n", addresses,
		    tables.sliceCount(), capacity);
	std::printf("full sync into empty maps: %.1f ms\n", full);
	std::printf("one slice moved: buildTables %.1f ms + syncMaps %.1f ms (median of 5)\n", median(build),
		    median(move));
	std::printf("one slice moved, buildSlices + syncSlices: %.2f ms (median of 5)\n", median(one));
	return 0;
}

} // namespace

int main(int argc, char **argv)
{
	uint32_t repeat = 10000000;
	int pairs = 5;
	const char *only = nullptr;
	uint32_t syncAddresses = 0;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!std::strcmp(argv[i], "--only"))
			only = argv[i + 1];
		else if (!std::strcmp(argv[i], "--sync"))
			syncAddresses = static_cast<uint32_t>(std::strtoul(argv[i + 1], nullptr, 10));
		else if (!std::strcmp(argv[i], "--repeat"))
			repeat = static_cast<uint32_t>(std::strtoul(argv[i + 1], nullptr, 10));
		else if (!std::strcmp(argv[i], "--pairs"))
			pairs = std::atoi(argv[i + 1]);
	}
	if (geteuid() != 0) {
		std::printf("SKIP: xdp_bench loads BPF programs and needs root\n");
		return 77;
	}
	// Our own namespace: the conntrack lookups of second_hop stay in it.
	if (unshare(CLONE_NEWNET) != 0) {
		std::perror("unshare");
		return 1;
	}
	if (syncAddresses)
		return syncBench(syncAddresses);

	BenchObject bench;
	bench.obj = bpf_object__open_file(XDP_BENCH_OBJECT, nullptr);
	if (!bench.obj || bpf_object__load(bench.obj) != 0) {
		std::fprintf(stderr, "loading %s: %s\n", XDP_BENCH_OBJECT, std::strerror(errno));
		return 1;
	}
	const int fwdFd = bench.prog("portslice_fwd");
	const int refFd = bench.prog("portslice_pass");
	const xdp::MapFds maps = bench.maps();
	auto tables = xdp::buildTables(fleet(), kS1Mac, 1, {});
	if (auto s = xdp::syncMaps(maps, tables); !s) {
		std::fprintf(stderr, "%s\n", s.error().message().c_str());
		return 1;
	}

	const Bytes sentByS2 = ipv4(kShared, kInet, kProtoTcp, tcp(port(1), 443, 0x02));
	struct Verdict {
		const char *name;
		uint32_t counter;
		Bytes frame;
		bool encapsulates = false; // the bench's undo prologue runs every round
	};
	const std::vector<Verdict> verdicts = {
		{"pass_other (not shared)", FWD_V_PASS_OTHER, toUs(ipv4(kInet, kS1, kProtoTcp, tcp(443, 22)))},
		{"pass_own (own slice)", FWD_V_PASS_OWN, toUs(ipv4(kInet, kShared, kProtoTcp, tcp(443, port(0))))},
		{"forward (IPIP + TX)", FWD_V_FORWARD, toUs(ipv4(kInet, kShared, kProtoTcp, tcp(443, port(1)))), true},
		{"icmp_forward", FWD_V_ICMP_FORWARD,
		 toUs(ipv4(kInet, kShared, kProtoIcmp, icmp(3, 4, 1400, quote(sentByS2)))), true},
		{"second_hop (ct lookup + TX)", FWD_V_SECOND_HOP,
		 toUs(ipv4(kInet, kShared, kProtoTcp, tcp(443, port(3), 0x10))), true},
	};

	// The undo prologue's cost in the encapsulating rows: one bpf_xdp_adjust_head,
	// measured as half of what two cost over the reference.
	std::vector<double> adj;
	const Bytes plain = toUs(ipv4(kInet, kS1, kProtoTcp, tcp(443, 22)));
	for (int p = 0; p < pairs; p++) {
		Run a = runOnce(refFd, plain, repeat);
		Run b = runOnce(bench.prog("portslice_adjust2"), plain, repeat);
		adj.push_back((b.ns - a.ns) / 2);
	}
	const double undo = median(adj);

	std::printf("XDP forwarder, ns per packet, bpf_prog_test_run_opts repeat %u, %d A/B pairs, median\n", repeat,
		    pairs);
	std::printf("%-30s %10s %10s %7s %14s\n", "verdict", "reference", "forwarder", "ratio", "ratio-undo");
	for (const auto &v : verdicts) {
		if (only && !std::strstr(v.name, only))
			continue;
		std::vector<double> ref, fwd, ratio, net;
		for (int p = 0; p < pairs; p++) {
			Run a = runOnce(refFd, v.frame, repeat);
			auto before = xdp::readCounters(maps.counters);
			Run b = runOnce(fwdFd, v.frame, repeat);
			auto after = xdp::readCounters(maps.counters);
			uint64_t rounds = after->packets[v.counter] - before->packets[v.counter];
			if (rounds != repeat) {
				std::fprintf(stderr, "%s: %" PRIu64 " of %u rounds took the verdict\n", v.name, rounds,
					     repeat);
				return 1;
			}
			ref.push_back(a.ns);
			fwd.push_back(b.ns);
			ratio.push_back(b.ns / a.ns);
			net.push_back((b.ns - (v.encapsulates ? undo : 0)) / a.ns);
		}
		std::printf("%-30s %10.1f %10.1f %7.2f", v.name, median(ref), median(fwd), median(ratio));
		if (v.encapsulates)
			std::printf(" %14.2f", median(net));
		std::printf("\n");
		std::fflush(stdout);
	}
	std::printf("undo = one bpf_xdp_adjust_head: %.1f ns (ratio-undo: the forwarder's time without it)\n", undo);
	return 0;
}
