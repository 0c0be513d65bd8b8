// SPDX-License-Identifier: MIT
// Lab: ICMP errors about a NATed flow (fragmentation needed, time exceeded, port unreachable) reach the workload through the table portsliced applies.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <linux/errqueue.h>
#include <netinet/in.h>
#include <netinet/ip_icmp.h>
#include <optional>
#include <sched.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <thread>

#include "lab_fixture.h"

namespace portslice {
namespace {

using lab::buildPath;
using lab::sourcePath;

// A UDP socket of the workload's namespace, connected to an internet host.
UniqueFd udpSocketIn(const std::string &ns, const char *addr, uint16_t port)
{
	UniqueFd out;
	std::thread t([&] {
		UniqueFd nsFd(::open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC));
		if (!nsFd.isValid() || ::setns(nsFd.get(), CLONE_NEWNET) != 0)
			return;
		UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
		sockaddr_in sa{};
		sa.sin_family = AF_INET;
		sa.sin_port = htons(port);
		::inet_pton(AF_INET, addr, &sa.sin_addr);
		int on = 1, pmtu = IP_PMTUDISC_DO;
		timeval tv{2, 0};
		::setsockopt(s.get(), IPPROTO_IP, IP_MTU_DISCOVER, &pmtu, sizeof(pmtu));
		::setsockopt(s.get(), IPPROTO_IP, IP_RECVERR, &on, sizeof(on));
		::setsockopt(s.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		if (::connect(s.get(), reinterpret_cast<sockaddr *>(&sa), sizeof(sa)) == 0)
			out = std::move(s);
	});
	t.join();
	return out;
}

int pathMtu(int fd)
{
	int mtu = 0;
	socklen_t len = sizeof(mtu);
	::getsockopt(fd, IPPROTO_IP, IP_MTU, &mtu, &len);
	return mtu;
}

// Sends `bytes` of payload until the socket learns a path MTU below 1500
// (bounded: 6 tries, 3 s).
int learnPathMtu(int fd, size_t bytes)
{
	std::vector<char> payload(bytes, 'p');
	for (int i = 0; i < 6 && pathMtu(fd) == 1500; i++) {
		(void)::send(fd, payload.data(), payload.size(), 0);
		std::this_thread::sleep_for(std::chrono::milliseconds(500));
	}
	return pathMtu(fd);
}

// The ICMP type and code of the first error on the socket's error queue
// within ~2 s, as the kernel hands it to the application (IP_RECVERR).
std::optional<std::pair<int, int>> icmpError(int fd)
{
	for (int i = 0; i < 20; i++) {
		char data[64], control[512];
		iovec iov{data, sizeof(data)};
		msghdr msg{};
		msg.msg_iov = &iov;
		msg.msg_iovlen = 1;
		msg.msg_control = control;
		msg.msg_controllen = sizeof(control);
		if (::recvmsg(fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT) >= 0) {
			for (cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
				if (c->cmsg_level != IPPROTO_IP || c->cmsg_type != IP_RECVERR)
					continue;
				sock_extended_err ee;
				std::memcpy(&ee, CMSG_DATA(c), sizeof(ee));
				if (ee.ee_origin == SO_EE_ORIGIN_ICMP)
					return std::make_pair(int(ee.ee_type), int(ee.ee_code));
			}
		}
		std::this_thread::sleep_for(std::chrono::milliseconds(100));
	}
	return std::nullopt;
}

class IcmpErrors : public lab::LabFixture {
protected:
	// w1 (100.64.1.0/24) is the conntrack source warp-gb1 of s1.
	lab::LabOptions labOptions() const override
	{
		lab::LabOptions o;
		o.prefix = "psi";
		o.servers = 3;
		o.bus = false;
		o.workloads = {"s1:w1:100.64.1.0/24"};
		return o;
	}

	void SetUp() override
	{
		LabFixture::SetUp();
		if (IsSkipped() || HasFatalFailure())
			return;
		std::string cfg = labDir() + "/s1/portslice.toml";
		auto fleet = run(sourcePath("tests/lab/lib/fleet.sh") + " --server s1 > " + cfg);
		ASSERT_TRUE(fleet.ok()) << fleet.output;
		// The netlink path: portsliced builds the table itself, not `nft -f`.
		auto applied = inNode("s1", buildPath("src/daemon/portsliced") + " --no-xdp --config " + cfg +
						    " --state-dir \"$LAB_STATE_DIR\" --apply-once 2>&1");
		ASSERT_TRUE(applied.ok()) << applied.output;
		// The internet side of the router takes 1400 bytes at most, and
		// every try gets its error (the rate limit is not under test).
		ASSERT_TRUE(inNode("rtr", "ip link set eth0 mtu 1400").ok());
		ASSERT_TRUE(inNode("inet", "ip link set eth0 mtu 1400").ok());
		ASSERT_TRUE(inNode("rtr", "sysctl -qw net.ipv4.icmp_ratelimit=0").ok());
		ASSERT_TRUE(inNode("inet", "sysctl -qw net.ipv4.icmp_ratelimit=0").ok());
	}
};

TEST_F(IcmpErrors, ReachTheConntrackWorkloadAndStopReachingItWithoutTheIcmpZoneRule)
{
	// Fragmentation needed from the router: the socket learns the path MTU.
	UniqueFd big = udpSocketIn(ns("w1"), "203.0.113.10", 9100);
	ASSERT_TRUE(big.isValid());
	EXPECT_EQ(learnPathMtu(big.get(), 1400), 1400) << "fragmentation needed must reach w1";

	// Time exceeded from the router (two hops: s1, then rtr).
	UniqueFd ttl = udpSocketIn(ns("w1"), "203.0.113.10", 9101);
	ASSERT_TRUE(ttl.isValid());
	int two = 2;
	ASSERT_EQ(::setsockopt(ttl.get(), IPPROTO_IP, IP_TTL, &two, sizeof(two)), 0);
	ASSERT_EQ(::send(ttl.get(), "t", 1, 0), 1);
	auto timeExceeded = icmpError(ttl.get());
	ASSERT_TRUE(timeExceeded.has_value()) << "time exceeded must reach w1";
	EXPECT_EQ(timeExceeded->first, ICMP_TIME_EXCEEDED);

	// Port unreachable from the internet host (nobody listens on 9102).
	UniqueFd closed = udpSocketIn(ns("w1"), "203.0.113.10", 9102);
	ASSERT_TRUE(closed.isValid());
	ASSERT_EQ(::send(closed.get(), "u", 1, 0), 1);
	auto unreachable = icmpError(closed.get());
	ASSERT_TRUE(unreachable.has_value()) << "port unreachable must reach w1";
	EXPECT_EQ(*unreachable, std::make_pair(int(ICMP_DEST_UNREACH), int(ICMP_PORT_UNREACH)));

	// Control: without the icmp_zone rule the errors stay in zone 0, are not
	// related to w1's flows and never arrive (a fresh destination, so no
	// path MTU is cached).
	auto handle = inNode("s1", "nft -a list chain inet portslice from_uplink | "
				   "sed -n 's/.*@icmp_zone # handle \\([0-9]*\\)$/\\1/p'");
	ASSERT_TRUE(handle.ok() && !handle.output.empty()) << handle.output;
	auto deleted = inNode("s1", "nft delete rule inet portslice from_uplink handle " + handle.output);
	ASSERT_TRUE(deleted.ok()) << deleted.output;
	UniqueFd big2 = udpSocketIn(ns("w1"), "203.0.113.11", 9100);
	ASSERT_TRUE(big2.isValid());
	EXPECT_EQ(learnPathMtu(big2.get(), 1400), 1500) << "without icmp_zone w1 must not learn the path MTU";
	UniqueFd closed2 = udpSocketIn(ns("w1"), "203.0.113.11", 9102);
	ASSERT_TRUE(closed2.isValid());
	ASSERT_EQ(::send(closed2.get(), "u", 1, 0), 1);
	EXPECT_FALSE(icmpError(closed2.get()).has_value()) << "without icmp_zone no port unreachable must arrive";
}

} // namespace
} // namespace portslice
