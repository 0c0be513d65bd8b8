// SPDX-License-Identifier: MIT
// Frames through the real XDP forwarder (bpf_prog_test_run_opts): fixture table of input, verdict and exact output.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <sched.h>
#include <string>
#include <unistd.h>

#include <bpf/bpf.h>
#include <gtest/gtest.h>
#include <linux/bpf.h>

#include "xdp/forwarder.h"
#include "xdp_frames.h"

namespace portslice::xdptest {
namespace {

using xdp::ForwarderObject;

// The fleet: three servers of lab1 (s1 is us), s4 with an unknown MAC, and
// lab2 reached through its gateway.
const Mac kS1Mac = mac("02:00:00:00:00:11");
const Mac kS2Mac = mac("02:00:00:00:00:12");
const Mac kS3Mac = mac("02:00:00:00:00:13"); // not in the config: from the neighbour table
const Mac kGw2Mac = mac("02:00:00:00:02:01");
const Mac kRouterMac = mac("02:00:00:00:00:01");
const Ipv4 kS1 = ip("192.0.2.11"), kS2 = ip("192.0.2.12"), kS3 = ip("192.0.2.13"), kS4 = ip("192.0.2.14");
const Ipv4 kGw2 = ip("203.0.113.2");
const Ipv4 kShared = ip("198.51.100.1"), kRemote = ip("198.51.100.2");
const Ipv4 kInet = ip("203.0.113.10");

// The nth address of 100.64.0.0/10 in kShared's index bucket.
Ipv4 sameBucket(int nth)
{
	uint32_t want = FWD_ADDR_BUCKET(kShared.value);
	for (uint32_t a = ip("100.64.0.0").value; a < ip("100.128.0.0").value; a++)
		if (FWD_ADDR_BUCKET(a) == want && nth-- == 0)
			return Ipv4{a};
	return Ipv4{};
}
const Ipv4 kTwin = sameBucket(0);     // a shared address in kShared's bucket
const Ipv4 kNotShared = sameBucket(1); // same bucket, not shared

// Slices of kShared (1024-65535, 2048 per slice): 0 s1, 1 s2, 2 s3, 3 s1
// taking over from s2, 4 s2 taking over from s1, 5 nobody, 6 s4.
uint16_t port(uint32_t slice, uint16_t offset = 100)
{
	return static_cast<uint16_t>(1024 + slice * 2048 + offset);
}

plan::Plan makeFleet()
{
	plan::Plan p;
	p.server = "s1";
	p.serverIndex = 0;
	p.datacenter = "lab1";
	p.uplink = "eth0";
	p.servers = {{"s1", kS1, "lab1", kS1Mac}, {"s2", kS2, "lab1", kS2Mac}, {"s3", kS3, "lab1", std::nullopt},
		     {"s4", kS4, "lab1", std::nullopt}};
	p.datacenters = {{"lab1", ip("192.0.2.1")}, {"lab2", kGw2}};
	plan::PlannedAddress a;
	a.address = kShared;
	a.datacenter = "lab1";
	a.local = true;
	a.portRange = {1024, 65535};
	a.sliceSize = 2048;
	a.sliceCount = 31;
	a.owner.assign(31, plan::kNoServer);
	a.previous.assign(31, plan::kNoServer);
	a.owner[0] = 0;
	a.owner[1] = 1;
	a.owner[2] = 2;
	a.owner[3] = 0;
	a.previous[3] = 1;
	a.owner[4] = 1;
	a.previous[4] = 0;
	a.owner[6] = 3;
	a.mySlices = {0, 3};
	p.addresses.push_back(a);
	plan::PlannedAddress r;
	r.address = kRemote;
	r.datacenter = "lab2";
	r.local = false;
	r.portRange = {1024, 65535};
	r.sliceSize = 2048;
	r.sliceCount = 31;
	r.owner.assign(31, plan::kNoServer);
	r.previous.assign(31, plan::kNoServer);
	p.addresses.push_back(r);
	// In kShared's index bucket: found through the hash.
	plan::PlannedAddress c = a;
	c.address = kTwin;
	c.sliceSize = 1000; // not a power of two: the program divides
	c.sliceCount = 64;
	c.owner.assign(64, 1);
	c.previous.assign(64, plan::kNoServer);
	c.mySlices.clear();
	p.addresses.push_back(c);
	// Slice 3 is shared by a conntrack source (zone 10, first half) and a
	// stateless one (second half).
	plan::PlannedSource ct;
	ct.name = "ct";
	ct.zone = 10;
	ct.assignments.push_back({ip("100.64.1.0"), ip("100.64.1.255"), 0, {port(3, 0), port(3, 1023)}});
	plan::PlannedSource sl;
	sl.name = "stateless";
	sl.mode = config::NatMode::Stateless;
	sl.zone = 11;
	sl.assignments.push_back({ip("100.64.2.0"), ip("100.64.2.0"), 0, {port(3, 1024), port(3, 2047)}});
	p.sources = {ct, sl};
	return p;
}

Bytes toUs(const Bytes &ipPacket)
{
	return ethernet(kS1Mac, kRouterMac, kEthIpv4, ipPacket);
}

Bytes tunnelled(Ipv4 from, const Bytes &innerIp, uint8_t ttl = FWD_OUTER_TTL)
{
	return ethernet(kS1Mac, kS2Mac, kEthIpv4, ipv4(from, kS1, kProtoIpip, innerIp, {.ttl = ttl}));
}

struct Case {
	const char *description;
	Bytes input;
	int action; // XDP_PASS, XDP_TX
	Bytes output;
	uint32_t verdict;
};

class XdpForwarder : public ::testing::Test {
protected:
	static void SetUpTestSuite()
	{
		if (geteuid() != 0)
			return;
		// A network namespace of our own: the conntrack entry below and the
		// FIB lookups stay in it, whatever the test does.
		if (unshare(CLONE_NEWNET) != 0) {
			std::perror("unshare(CLONE_NEWNET)");
			return;
		}
		unshared_ = true;
		// A flow of the conntrack source on slice 3, NATed to kShared:7300, zone 10.
		std::string cmd = "conntrack -I -p tcp -s 100.64.1.5 -d 203.0.113.10 --sport 40000 --dport 443 "
				  "-r 203.0.113.10 -q 198.51.100.1 --reply-port-src 443 --reply-port-dst " +
				  std::to_string(port(3, 76)) +
				  " --state ESTABLISHED -u SEEN_REPLY -t 600 -w 10 >/dev/null 2>&1";
		conntrackOk_ = std::system(cmd.c_str()) == 0;
	}

	void SetUp() override
	{
		if (geteuid() != 0)
			GTEST_SKIP() << "needs root (loads a BPF program)";
		ASSERT_TRUE(unshared_) << "could not make a network namespace";
		auto obj = ForwarderObject::load("");
		ASSERT_TRUE(obj.ok()) << obj.error().message();
		obj_.emplace(std::move(*obj));
		xdp::NeighbourTable neighbours{{kS3.value, kS3Mac}, {kGw2.value, kGw2Mac}};
		tables_ = xdp::buildTables(makeFleet(), kS1Mac, 1, neighbours);
		auto s = xdp::syncMaps(obj_->maps(), tables_);
		ASSERT_TRUE(s.ok()) << s.error().message();
	}

	void run(const Case &c)
	{
		SCOPED_TRACE(c.description);
		auto before = xdp::readCounters(obj_->maps().counters);
		ASSERT_TRUE(before.ok());
		Bytes out(c.input.size() + 256);
		bpf_test_run_opts opts{};
		opts.sz = sizeof(opts);
		opts.data_in = c.input.data();
		opts.data_size_in = static_cast<uint32_t>(c.input.size());
		opts.data_out = out.data();
		opts.data_size_out = static_cast<uint32_t>(out.size());
		opts.repeat = 1;
		ASSERT_EQ(bpf_prog_test_run_opts(obj_->programFd(), &opts), 0) << std::strerror(errno);
		out.resize(opts.data_size_out);
		EXPECT_EQ(static_cast<int>(opts.retval), c.action);
		EXPECT_EQ(out, c.output);
		auto after = xdp::readCounters(obj_->maps().counters);
		ASSERT_TRUE(after.ok());
		for (uint32_t v = 0; v < xdp::kVerdictCount; v++)
			EXPECT_EQ(after->packets[v] - before->packets[v], v == c.verdict ? 1u : 0u)
				<< "counter " << xdp::verdictName(v);
	}

	static inline bool unshared_ = false;
	static inline bool conntrackOk_ = false;
	std::optional<ForwarderObject> obj_;
	xdp::ForwarderTables tables_;
};

TEST_F(XdpForwarder, RoutesEachVerdictAsTheFixtureTableSays)
{
	const Bytes ownTcp = toUs(ipv4(kInet, kShared, kProtoTcp, tcp(443, port(0))));
	const Bytes s2Tcp = toUs(ipv4(kInet, kShared, kProtoTcp, tcp(443, port(1)), {.tos = 0x28, .id = 77}));
	const Bytes s3Udp = toUs(ipv4(kInet, kShared, kProtoUdp, udp(53, port(2), 100), {.fragOff = 0}));
	const Bytes remoteTcp = toUs(ipv4(kInet, kRemote, kProtoTcp, tcp(80, 5000)));
	const Bytes innerOwn = ipv4(kInet, kShared, kProtoTcp, tcp(443, port(0)));
	const Bytes withOptions = toUs(ipv4(kInet, kShared, kProtoTcp, tcp(443, port(1)),
					    {.options = {0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00}}));
	const Bytes ownWithOptions = toUs(ipv4(kInet, kShared, kProtoTcp, tcp(443, port(0)), {.options = {1, 1, 1, 0}}));

	// ICMP errors quote what we sent: kShared:port -> kInet.
	const Bytes sentByS3 = ipv4(kShared, kInet, kProtoUdp, udp(port(2), 53, 1400));
	const Bytes fragNeeded = toUs(ipv4(ip("192.0.2.1"), kShared, kProtoIcmp, icmp(3, 4, 1400, quote(sentByS3))));
	const Bytes sentByS2 = ipv4(kShared, kInet, kProtoTcp, tcp(port(1), 443, 0x02));
	const Bytes portUnreach = toUs(ipv4(kInet, kShared, kProtoIcmp, icmp(3, 3, 0, quote(sentByS2))));
	const Bytes sentByUs = ipv4(kShared, kInet, kProtoUdp, udp(port(0), 53));
	const Bytes ownUnreach = toUs(ipv4(kInet, kShared, kProtoIcmp, icmp(3, 3, 0, quote(sentByUs))));
	const Bytes sentByOther = ipv4(ip("198.51.100.9"), kInet, kProtoUdp, udp(port(1), 53));
	const Bytes foreignQuote = toUs(ipv4(kInet, kShared, kProtoIcmp, icmp(3, 3, 0, quote(sentByOther))));
	const Bytes timeExceeded = toUs(ipv4(ip("192.0.2.1"), kShared, kProtoIcmp, icmp(11, 0, 0, quote(sentByS2))));
	const Bytes echoReply = toUs(ipv4(kInet, kShared, kProtoIcmp, icmp(0, 0, uint32_t{port(1)} << 16 | 1, {})));

	Bytes truncatedIp = toUs(ipv4(kInet, kShared, kProtoTcp, tcp(443, port(1))));
	truncatedIp.resize(14 + 12);
	Bytes truncatedTcp = toUs(ipv4(kInet, kShared, kProtoTcp, tcp(443, port(1))));
	truncatedTcp.resize(14 + 20 + 3);
	Bytes badIhl = toUs(ipv4(kInet, kShared, kProtoTcp, tcp(443, port(1))));
	badIhl[14] = 0x44;
	Bytes truncatedQuote = portUnreach;
	truncatedQuote.resize(14 + 20 + 8 + 12);
	Bytes ipv6(60, 0);
	ipv6[0] = 0x60;

	const Bytes laterFragment = toUs(ipv4(kInet, kShared, kProtoUdp, Bytes(64, 1), {.fragOff = 185}));
	const Bytes firstFragment = toUs(ipv4(kInet, kShared, kProtoUdp, udp(53, port(1), 100), {.fragOff = kMf}));
	const Bytes remoteFragment = toUs(ipv4(kInet, kRemote, kProtoUdp, Bytes(64, 1), {.fragOff = 185}));

	// Handover: slice 3 is ours now, s2 still drains it.
	const Bytes handoverNoState = toUs(ipv4(kInet, kShared, kProtoTcp, tcp(443, port(3, 10), 0x10)));
	const Bytes handoverStateless = toUs(ipv4(kInet, kShared, kProtoUdp, udp(53, port(3, 1500))));
	const Bytes handoverInner = ipv4(kInet, kShared, kProtoTcp, tcp(443, port(3, 10), 0x10));
	const Bytes drainingInner = ipv4(kInet, kShared, kProtoTcp, tcp(443, port(4)));
	const Bytes draining = toUs(drainingInner);

	const Bytes s2Inner = ipv4(kInet, kShared, kProtoTcp, tcp(443, port(1)));

	const std::vector<Case> cases = {
		{"TCP to our own slice passes untouched", ownTcp, XDP_PASS, ownTcp, FWD_V_PASS_OWN},
		{"TCP to s2's slice goes to s2 in IPIP", s2Tcp, XDP_TX, encapsulated(s2Tcp, kS2Mac, kS1Mac, kS1, kS2),
		 FWD_V_FORWARD},
		{"UDP to s3's slice goes to s3, MAC from the neighbour table, DF clear", s3Udp, XDP_TX,
		 encapsulated(s3Udp, kS3Mac, kS1Mac, kS1, kS3), FWD_V_FORWARD},
		{"an address of lab2 goes to lab2's gateway", remoteTcp, XDP_TX,
		 encapsulated(remoteTcp, kGw2Mac, kS1Mac, kS1, kGw2), FWD_V_REMOTE_DC},
		{"IPIP from s2 is stripped and passed", tunnelled(kS2, innerOwn), XDP_PASS,
		 ethernet(kS1Mac, kS2Mac, kEthIpv4, innerOwn), FWD_V_DECAP},
		{"IPIP from s2 for a slice we drain is taken, not bounced", tunnelled(kS2, drainingInner), XDP_PASS,
		 ethernet(kS1Mac, kS2Mac, kEthIpv4, drainingInner), FWD_V_DECAP},
		{"IPIP for s2's slice, which we neither own nor drain: the sender's view or ours is behind, on to s2 once",
		 tunnelled(kS3, s2Inner), XDP_TX,
		 encapsulated(ethernet(kS1Mac, kS2Mac, kEthIpv4, s2Inner), kS2Mac, kS1Mac, kS1, kS2, FWD_OUTER_TTL_LAST),
		 FWD_V_SECOND_HOP},
		{"IPIP from s2 for s2's slice goes back to s2 once too (s2 moved it; we have not yet)",
		 tunnelled(kS2, s2Inner), XDP_TX,
		 encapsulated(ethernet(kS1Mac, kS2Mac, kEthIpv4, s2Inner), kS2Mac, kS1Mac, kS1, kS2, FWD_OUTER_TTL_LAST),
		 FWD_V_SECOND_HOP},
		{"IPIP for s2's slice already on its last hop is taken, never sent on again",
		 tunnelled(kS3, s2Inner, FWD_OUTER_TTL_LAST), XDP_PASS, ethernet(kS1Mac, kS2Mac, kEthIpv4, s2Inner),
		 FWD_V_DECAP},
		{"IPIP from a stranger is not ours to strip", tunnelled(kInet, s2Inner), XDP_PASS,
		 tunnelled(kInet, s2Inner), FWD_V_PASS_OTHER},
		{"ICMP frag-needed goes to the server of the quoted source port (s3)", fragNeeded, XDP_TX,
		 encapsulated(fragNeeded, kS3Mac, kS1Mac, kS1, kS3), FWD_V_ICMP_FORWARD},
		{"ICMP port-unreachable goes to the server of the quoted source port (s2)", portUnreach, XDP_TX,
		 encapsulated(portUnreach, kS2Mac, kS1Mac, kS1, kS2), FWD_V_ICMP_FORWARD},
		{"ICMP time-exceeded goes to s2 too", timeExceeded, XDP_TX,
		 encapsulated(timeExceeded, kS2Mac, kS1Mac, kS1, kS2), FWD_V_ICMP_FORWARD},
		{"ICMP error about our own slice passes", ownUnreach, XDP_PASS, ownUnreach, FWD_V_ICMP_PASS},
		{"ICMP error quoting another source address is malformed", foreignQuote, XDP_PASS, foreignQuote,
		 FWD_V_MALFORMED},
		{"ICMP echo reply goes by its identifier", echoReply, XDP_TX,
		 encapsulated(echoReply, kS2Mac, kS1Mac, kS1, kS2), FWD_V_FORWARD},
		{"IP options: forwarded whole, options kept inside", withOptions, XDP_TX,
		 encapsulated(withOptions, kS2Mac, kS1Mac, kS1, kS2), FWD_V_FORWARD},
		{"IP options: own slice found past the options", ownWithOptions, XDP_PASS, ownWithOptions,
		 FWD_V_PASS_OWN},
		{"truncated IPv4 header", truncatedIp, XDP_PASS, truncatedIp, FWD_V_MALFORMED},
		{"truncated TCP header", truncatedTcp, XDP_PASS, truncatedTcp, FWD_V_MALFORMED},
		{"IHL below 5", badIhl, XDP_PASS, badIhl, FWD_V_MALFORMED},
		{"ICMP quote cut short", truncatedQuote, XDP_PASS, truncatedQuote, FWD_V_MALFORMED},
		{"Ethernet header only", Bytes(14, 0), XDP_PASS, Bytes(14, 0), FWD_V_PASS_OTHER},
		{"a later fragment has no port: passed, counted", laterFragment, XDP_PASS, laterFragment,
		 FWD_V_FRAGMENT},
		{"a first fragment is passed too (same policy for the whole datagram)", firstFragment, XDP_PASS,
		 firstFragment, FWD_V_FRAGMENT},
		{"a fragment for lab2 needs no port: to the gateway", remoteFragment, XDP_TX,
		 encapsulated(remoteFragment, kGw2Mac, kS1Mac, kS1, kGw2), FWD_V_REMOTE_DC},
		{"ARP passes", ethernet(kS1Mac, kRouterMac, kEthArp, Bytes(28, 0)), XDP_PASS,
		 ethernet(kS1Mac, kRouterMac, kEthArp, Bytes(28, 0)), FWD_V_PASS_OTHER},
		{"IPv6 passes", ethernet(kS1Mac, kRouterMac, kEthIpv6, ipv6), XDP_PASS,
		 ethernet(kS1Mac, kRouterMac, kEthIpv6, ipv6), FWD_V_PASS_OTHER},
		{"an address sharing kShared's index bucket: all its slices are s2's",
		 toUs(ipv4(kInet, kTwin, kProtoTcp, tcp(443, port(0)))), XDP_TX,
		 encapsulated(toUs(ipv4(kInet, kTwin, kProtoTcp, tcp(443, port(0)))), kS2Mac, kS1Mac, kS1, kS2),
		 FWD_V_FORWARD},
		{"same bucket, not shared", toUs(ipv4(kInet, kNotShared, kProtoTcp, tcp(443, port(0)))), XDP_PASS,
		 toUs(ipv4(kInet, kNotShared, kProtoTcp, tcp(443, port(0)))), FWD_V_PASS_OTHER},
		{"not a shared address", toUs(ipv4(kInet, kS1, kProtoTcp, tcp(443, 22))), XDP_PASS,
		 toUs(ipv4(kInet, kS1, kProtoTcp, tcp(443, 22))), FWD_V_PASS_OTHER},
		{"a port below the range", toUs(ipv4(kInet, kShared, kProtoTcp, tcp(443, 80))), XDP_PASS,
		 toUs(ipv4(kInet, kShared, kProtoTcp, tcp(443, 80))), FWD_V_UNOWNED},
		{"a slice nobody owns", toUs(ipv4(kInet, kShared, kProtoTcp, tcp(443, port(5)))), XDP_PASS,
		 toUs(ipv4(kInet, kShared, kProtoTcp, tcp(443, port(5)))), FWD_V_UNOWNED},
		{"GRE to a shared address has no port", toUs(ipv4(kInet, kShared, 47, Bytes(8, 0))), XDP_PASS,
		 toUs(ipv4(kInet, kShared, 47, Bytes(8, 0))), FWD_V_UNOWNED},
		{"s4's MAC is unknown and the FIB has no neighbour", toUs(ipv4(kInet, kShared, kProtoTcp, tcp(1, port(6)))),
		 XDP_PASS, toUs(ipv4(kInet, kShared, kProtoTcp, tcp(1, port(6)))), FWD_V_NO_NEIGH},
		{"handover: no conntrack state, second hop to the previous owner s2", handoverNoState, XDP_TX,
		 encapsulated(handoverNoState, kS2Mac, kS1Mac, kS1, kS2, FWD_OUTER_TTL_LAST), FWD_V_SECOND_HOP},
		{"handover: tunnelled from s3 without state, on to s2", tunnelled(kS3, handoverInner), XDP_TX,
		 encapsulated(ethernet(kS1Mac, kS2Mac, kEthIpv4, handoverInner), kS2Mac, kS1Mac, kS1, kS2,
			      FWD_OUTER_TTL_LAST),
		 FWD_V_SECOND_HOP},
		{"handover: already a second hop, taken here even without state", tunnelled(kS3, handoverInner, FWD_OUTER_TTL_LAST),
		 XDP_PASS, ethernet(kS1Mac, kS2Mac, kEthIpv4, handoverInner), FWD_V_DECAP},
		{"handover: a stateless share keeps its packets", handoverStateless, XDP_PASS, handoverStateless,
		 FWD_V_PASS_OWN},
		{"a slice we drain for s2 goes to s2", draining, XDP_TX, encapsulated(draining, kS2Mac, kS1Mac, kS1, kS2),
		 FWD_V_FORWARD},
	};
	for (const auto &c : cases)
		run(c);
}

TEST_F(XdpForwarder, KeepsFlowsWithConntrackStateDuringHandover)
{
	ASSERT_TRUE(conntrackOk_) << "conntrack -I failed";
	if (!xdp::kernelLookupTakesZones())
		GTEST_SKIP() << "this kernel's bpf_xdp_ct_lookup takes no conntrack zone (Linux 6.1): the handover "
				"check knows only the flows the egress program noted";
	// The flow inserted in SetUpTestSuite, zone 10: stays here.
	const Bytes known = toUs(ipv4(kInet, kShared, kProtoTcp, tcp(443, port(3, 76), 0x10)));
	run({"handover: the flow is in conntrack zone 10, it stays", known, XDP_PASS, known, FWD_V_PASS_OWN});
	// Same ports, another peer: no state, so it belongs to the previous owner.
	const Bytes unknown = toUs(ipv4(ip("203.0.113.11"), kShared, kProtoTcp, tcp(443, port(3, 76), 0x10)));
	run({"handover: another peer, no state: second hop", unknown, XDP_TX,
	     encapsulated(unknown, kS2Mac, kS1Mac, kS1, kS2, FWD_OUTER_TTL_LAST), FWD_V_SECOND_HOP});
}

// Flows this server opens in slice 3 (taken over from s2, which drains it)
// are noted by the egress program as they leave, after NAT: their answers stay
// here without any conntrack entry, as they must where the kernel's lookup
// takes no zone (Linux 6.1: struct bpf_ct_opts of 12 bytes) and finds none.
TEST_F(XdpForwarder, KeepsTheAnswersOfFlowsItsEgressProgramSawLeave)
{
	auto leave = [&](const Bytes &ipPacket) {
		Bytes frame = ethernet(kRouterMac, kS1Mac, kEthIpv4, ipPacket);
		bpf_test_run_opts opts{};
		opts.sz = sizeof(opts);
		opts.data_in = frame.data();
		opts.data_size_in = static_cast<uint32_t>(frame.size());
		opts.repeat = 1;
		ASSERT_EQ(bpf_prog_test_run_opts(obj_->recordProgramFd(), &opts), 0) << std::strerror(errno);
		EXPECT_EQ(opts.retval, 0u) << "the egress program passes everything (TC_ACT_OK)";
	};
	auto noted = [&] {
		size_t n = 0;
		fwd_flow key{}, next{};
		for (const void *prev = nullptr; bpf_map_get_next_key(obj_->maps().flows, prev, &next) == 0; prev = &key) {
			key = next;
			n++;
		}
		return n;
	};
	const Ipv4 peer = ip("203.0.113.12");
	const Bytes innerAnswer = ipv4(peer, kShared, kProtoTcp, tcp(443, port(3, 200), 0x12));
	const Bytes answer = toUs(innerAnswer);
	run({"before the flow left: no state, second hop to s2", answer, XDP_TX,
	     encapsulated(answer, kS2Mac, kS1Mac, kS1, kS2, FWD_OUTER_TTL_LAST), FWD_V_SECOND_HOP});

	ASSERT_NO_FATAL_FAILURE(leave(ipv4(kShared, peer, kProtoTcp, tcp(port(3, 200), 443, 0x02))));
	EXPECT_EQ(noted(), 1u);
	run({"its SYN left: the answer stays", answer, XDP_PASS, answer, FWD_V_PASS_OWN});
	run({"tunnelled by s2, which got it from the router: stays", tunnelled(kS2, innerAnswer), XDP_PASS,
	     ethernet(kS1Mac, kS2Mac, kEthIpv4, innerAnswer), FWD_V_DECAP});
	const Bytes otherPeerPort = toUs(ipv4(peer, kShared, kProtoTcp, tcp(444, port(3, 200), 0x12)));
	run({"same shared port, another peer port: s2's", otherPeerPort, XDP_TX,
	     encapsulated(otherPeerPort, kS2Mac, kS1Mac, kS1, kS2, FWD_OUTER_TTL_LAST), FWD_V_SECOND_HOP});
	const Bytes udpAnswer = toUs(ipv4(peer, kShared, kProtoUdp, udp(443, port(3, 200))));
	run({"same ports over UDP: s2's", udpAnswer, XDP_TX,
	     encapsulated(udpAnswer, kS2Mac, kS1Mac, kS1, kS2, FWD_OUTER_TTL_LAST), FWD_V_SECOND_HOP});

	// IP options: the ports are found by IHL, as the forwarder finds them.
	ASSERT_NO_FATAL_FAILURE(leave(ipv4(kShared, peer, kProtoTcp, tcp(port(3, 250), 443, 0x02), {.options = {1, 1, 1, 0}})));
	const Bytes optionsAnswer = toUs(ipv4(peer, kShared, kProtoTcp, tcp(443, port(3, 250), 0x12)));
	run({"a flow whose packets carry IP options: its answer stays", optionsAnswer, XDP_PASS, optionsAnswer,
	     FWD_V_PASS_OWN});
	EXPECT_EQ(noted(), 2u);

	ASSERT_NO_FATAL_FAILURE(leave(ipv4(kShared, peer, kProtoUdp, udp(port(3, 300), 53))));
	const Bytes udpOwn = toUs(ipv4(peer, kShared, kProtoUdp, udp(53, port(3, 300))));
	run({"a UDP flow that left: its answer stays", udpOwn, XDP_PASS, udpOwn, FWD_V_PASS_OWN});
	EXPECT_EQ(noted(), 3u);

	// Only slices this server takes over are noted: not its own slice 0, not
	// slice 4 that it drains for s2, not another address, not ICMP.
	ASSERT_NO_FATAL_FAILURE(leave(ipv4(kShared, peer, kProtoTcp, tcp(port(0), 443, 0x02))));
	ASSERT_NO_FATAL_FAILURE(leave(ipv4(kShared, peer, kProtoTcp, tcp(port(4), 443, 0x02))));
	ASSERT_NO_FATAL_FAILURE(leave(ipv4(kS1, peer, kProtoTcp, tcp(port(3, 400), 443, 0x02))));
	ASSERT_NO_FATAL_FAILURE(leave(ipv4(kShared, peer, kProtoIcmp, icmp(8, 0, uint32_t{port(3, 500)} << 16 | 1, {}))));
	EXPECT_EQ(noted(), 3u);
}

TEST_F(XdpForwarder, MovesASliceWithOneMapUpdate)
{
	const Bytes toSlice1 = toUs(ipv4(kInet, kShared, kProtoTcp, tcp(443, port(1))));
	run({"before the move: s2", toSlice1, XDP_TX, encapsulated(toSlice1, kS2Mac, kS1Mac, kS1, kS2), FWD_V_FORWARD});
	auto fleet = makeFleet();
	fleet.addresses[0].owner[1] = 2;
	auto moved = xdp::buildTables(fleet, kS1Mac, 1, {{kS3.value, kS3Mac}, {kGw2.value, kGw2Mac}});
	size_t changed = 0;
	for (size_t a = 0; a < moved.addresses.size(); a++)
		for (size_t i = 0; i < moved.addresses[a].slices.size(); i++)
			changed += !(moved.slice(a, i) == tables_.slice(a, i));
	EXPECT_EQ(changed, 1u) << "a move must change exactly one slice";
	// ... and exactly one 8-byte word of fwd_slices.
	auto words = [&] {
		std::vector<uint64_t> all;
		uint64_t w = 0;
		for (uint32_t i = 0; i < FWD_SLICES_DEFAULT; i++)
			if (bpf_map_lookup_elem(obj_->maps().slices, &i, &w) == 0)
				all.push_back(w);
		return all;
	};
	auto before = words();
	ASSERT_TRUE(xdp::syncMaps(obj_->maps(), moved).ok());
	auto after = words();
	ASSERT_EQ(before.size(), after.size());
	size_t changedWords = 0;
	for (size_t i = 0; i < before.size(); i++)
		changedWords += before[i] != after[i];
	EXPECT_EQ(changedWords, 1u);
	run({"after the move: s3", toSlice1, XDP_TX, encapsulated(toSlice1, kS3Mac, kS1Mac, kS1, kS3), FWD_V_FORWARD});
	// Removing the address from the plan removes its entries: packets pass.
	fleet.addresses.erase(fleet.addresses.begin());
	fleet.sources.clear();
	ASSERT_TRUE(xdp::syncMaps(obj_->maps(), xdp::buildTables(fleet, kS1Mac, 1, {})).ok());
	run({"after removing the address", toSlice1, XDP_PASS, toSlice1, FWD_V_PASS_OTHER});
}

TEST_F(XdpForwarder, MovesASliceWithoutAFullSync)
{
	const Bytes toSlice1 = toUs(ipv4(kInet, kShared, kProtoTcp, tcp(443, port(1))));
	auto fleet = makeFleet();
	fleet.addresses[0].owner[1] = 2;
	xdp::NeighbourTable neighbours{{kS3.value, kS3Mac}};
	auto updates = xdp::buildSlices(fleet, {{0, 1}}, neighbours);
	ASSERT_EQ(updates.size(), 1u);
	auto s = xdp::syncSlices(obj_->maps(), updates);
	ASSERT_TRUE(s.ok()) << s.error().message();
	run({"moved by syncSlices: s3", toSlice1, XDP_TX, encapsulated(toSlice1, kS3Mac, kS1Mac, kS1, kS3),
	     FWD_V_FORWARD});
	// A server the maps have never seen needs the full sync.
	fleet.servers.push_back({"s5", ip("192.0.2.15"), "lab1", mac("02:00:00:00:00:15")});
	fleet.addresses[0].owner[1] = 4;
	s = xdp::syncSlices(obj_->maps(), xdp::buildSlices(fleet, {{0, 1}}, neighbours));
	ASSERT_FALSE(s.ok());
	EXPECT_EQ(s.error().code().value(), ENOENT);
	run({"unchanged after the refusal", toSlice1, XDP_TX, encapsulated(toSlice1, kS3Mac, kS1Mac, kS1, kS3),
	     FWD_V_FORWARD});
}

// A slice taken over with zone runs that the maps do not hold yet: the slice
// move writes them to an unused slot of fwd_zones itself (it used to need the
// whole maps synced, 32 ms at 10,000 addresses), and the handover check of
// that slice uses them.
TEST_F(XdpForwarder, TakesOverASliceWithNewZoneRunsWithoutAFullSync)
{
	auto fleet = makeFleet();
	fleet.addresses[0].owner[5] = 0; // s1 takes slice 5 over from s2, which drains it
	fleet.addresses[0].previous[5] = 1;
	plan::PlannedSource ct2;
	ct2.name = "ct2";
	ct2.zone = 12;
	ct2.assignments.push_back({ip("100.64.3.0"), ip("100.64.3.255"), 0, {port(5, 0), port(5, 1023)}});
	fleet.sources.push_back(ct2);
	auto updates = xdp::buildSlices(fleet, {{0, 5}}, {{kS3.value, kS3Mac}});
	ASSERT_EQ(updates.size(), 1u);
	ASSERT_TRUE(updates[0].want.zones.has_value());
	auto s = xdp::syncSlices(obj_->maps(), updates);
	ASSERT_TRUE(s.ok()) << s.error().message();

	auto sliceWord = [&](uint32_t slice) {
		uint32_t bucket = FWD_ADDR_BUCKET(kShared.value);
		fwd_address a{};
		EXPECT_EQ(bpf_map_lookup_elem(obj_->maps().addrIndex, &bucket, &a), 0);
		uint32_t index = a.slice_base + slice;
		fwd_slice w{};
		EXPECT_EQ(bpf_map_lookup_elem(obj_->maps().slices, &index, &w), 0);
		return w;
	};
	auto zonesAt = [&](uint16_t slot) {
		uint32_t key = slot;
		fwd_zones z{};
		EXPECT_EQ(bpf_map_lookup_elem(obj_->maps().zones, &key, &z), 0);
		return z;
	};
	fwd_slice taken = sliceWord(5), slice3 = sliceWord(3);
	ASSERT_NE(taken.zones, 0);
	EXPECT_NE(taken.zones, slice3.zones) << "slice 3's zone runs are others, and stay where they are";
	fwd_zones got = zonesAt(taken.zones);
	EXPECT_EQ(std::memcmp(&got, &*updates[0].want.zones, sizeof(got)), 0);
	EXPECT_EQ(got.zone_id[0], 12);
	EXPECT_EQ(got.zone_end[0], port(5, 1023));
	fwd_zones kept = zonesAt(slice3.zones);
	EXPECT_EQ(kept.zone_id[0], 10);

	// No flow of it here: the answer goes to s2, which drains the slice.
	const Bytes answer = toUs(ipv4(kInet, kShared, kProtoTcp, tcp(443, port(5, 76), 0x10)));
	run({"slice 5 in handover, no state: second hop to s2", answer, XDP_TX,
	     encapsulated(answer, kS2Mac, kS1Mac, kS1, kS2, FWD_OUTER_TTL_LAST), FWD_V_SECOND_HOP});
	if (xdp::kernelLookupTakesZones()) {
		// A flow of ct2 in conntrack zone 12: its answer stays.
		std::string cmd = "conntrack -I -p tcp -s 100.64.3.5 -d 203.0.113.10 --sport 40001 --dport 443 "
				  "-r 203.0.113.10 -q 198.51.100.1 --reply-port-src 443 --reply-port-dst " +
				  std::to_string(port(5, 76)) +
				  " --state ESTABLISHED -u SEEN_REPLY -t 600 -w 12 >/dev/null 2>&1";
		ASSERT_EQ(std::system(cmd.c_str()), 0) << "conntrack -I failed";
		run({"slice 5 in handover, a flow of zone 12: stays", answer, XDP_PASS, answer, FWD_V_PASS_OWN});
	}

	// The same runs again take the same slot; the whole sync keeps it.
	ASSERT_TRUE(xdp::syncSlices(obj_->maps(), xdp::buildSlices(fleet, {{0, 5}}, {{kS3.value, kS3Mac}})).ok());
	EXPECT_EQ(sliceWord(5).zones, taken.zones);
	ASSERT_TRUE(xdp::syncMaps(obj_->maps(), xdp::buildTables(fleet, kS1Mac, 1, {{kS3.value, kS3Mac}})).ok());
	EXPECT_EQ(sliceWord(5).zones, taken.zones);
}

TEST_F(XdpForwarder, GivesAnAddressWhoseSlicesChangeANewRunBeforeSwitchingToIt)
{
	auto fleet = makeFleet();
	auto &a = fleet.addresses[0];
	a.sliceSize = 1024; // 63 slices: a new run of fwd_slices
	a.sliceCount = 63;
	a.owner.assign(63, 0);
	a.previous.assign(63, plan::kNoServer);
	a.owner[5] = 2; // ports 6144-7167
	ASSERT_TRUE(xdp::syncMaps(obj_->maps(), xdp::buildTables(fleet, kS1Mac, 1, {{kS3.value, kS3Mac}})).ok());
	const Bytes toS3 = toUs(ipv4(kInet, kShared, kProtoTcp, tcp(443, 6200)));
	run({"resized: slice 5 of 1024 ports is s3's", toS3, XDP_TX, encapsulated(toS3, kS3Mac, kS1Mac, kS1, kS3),
	     FWD_V_FORWARD});
	const Bytes own = toUs(ipv4(kInet, kShared, kProtoTcp, tcp(443, 3000)));
	run({"resized: slice 1 is ours now", own, XDP_PASS, own, FWD_V_PASS_OWN});
}

} // namespace
} // namespace portslice::xdptest

int main(int argc, char **argv)
{
	::testing::InitGoogleTest(&argc, argv);
	if (geteuid() != 0) {
		std::printf("SKIP: the XDP packet tests load a BPF program and need root\n");
		return 77;
	}
	return RUN_ALL_TESTS();
}
