// SPDX-License-Identifier: MIT
// Lab: the router sends all return traffic to s1; TCP, UDP and path MTU discovery of workloads behind s2 and s3 work only through the XDP forwarder.
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fcntl.h>
#include <functional>
#include <netinet/in.h>
#include <sched.h>
#include <sstream>
#include <sys/socket.h>
#include <sys/time.h>
#include <thread>
#include <unistd.h>

#include <arpa/inet.h>
#include <bpf/libbpf.h>
#include <linux/if_link.h>
#include <net/if.h>

#include "config/config.h"
#include "lab_fixture.h"
#include "plan/plan.h"
#include "xdp/forwarder.h"

namespace portslice {
namespace {

using lab::CommandResult;

constexpr const char *kInet = "203.0.113.10";
const std::string kConfig = lab::sourcePath("tests/lab/xdp_lab.toml");

// Runs f on a thread that has entered the network namespace `ns`: sockets
// and netlink requests made there belong to that namespace for good.
template<class F>
auto inNamespace(const std::string &ns, F f) -> decltype(f())
{
	std::optional<decltype(f())> result;
	std::string failure;
	std::thread t([&] {
		UniqueFd fd(::open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC));
		if (!fd.isValid() || ::setns(fd.get(), CLONE_NEWNET) != 0) {
			failure = "entering " + ns + ": " + std::strerror(errno);
			return;
		}
		result.emplace(f());
	});
	t.join();
	if (!result)
		throw std::runtime_error(failure);
	return std::move(*result);
}

UniqueFd socketIn(const std::string &ns, int type)
{
	return inNamespace(ns, [type] { return UniqueFd(::socket(AF_INET, type | SOCK_CLOEXEC, 0)); });
}

sockaddr_in endpoint(const char *addr, uint16_t port)
{
	sockaddr_in sa{};
	sa.sin_family = AF_INET;
	sa.sin_port = htons(port);
	::inet_pton(AF_INET, addr, &sa.sin_addr);
	return sa;
}

void setTimeouts(int fd, int ms)
{
	timeval tv{ms / 1000, (ms % 1000) * 1000};
	::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

class XdpLab : public lab::LabFixture {
protected:
	lab::LabOptions labOptions() const override
	{
		lab::LabOptions o;
		o.prefix = "psx";
		o.steer = "s1"; // ALL return traffic for 198.51.100.0/24 to s1
		o.bus = false;
		return o;
	}

	void SetUp() override
	{
		LabFixture::SetUp();
		if (IsSkipped() || HasFatalFailure())
			return;
		// Lab only: IPIP adds 20 bytes, so the DC fabric carries 1600-byte
		// frames (docs/xdp.md: the product needs MTU + 20 between servers).
		for (int s = 1; s <= 3; s++) {
			ASSERT_TRUE(inNode("s" + std::to_string(s), "ip link set eth0 mtu 1600").ok());
			ASSERT_TRUE(inNode("dc", "ip link set s" + std::to_string(s) + " mtu 1600").ok());
		}
		auto r = inNode("dc", "for i in $(ls /sys/class/net/br0/brif); do ip link set $i mtu 1600; done; "
				      "ip link set br0 mtu 1600");
		ASSERT_TRUE(r.ok()) << r.output;
		ASSERT_TRUE(inNode("rtr", "ip link set eth1 mtu 1600").ok());
		// Lab only: veth flushes XDP_TX frames to its peer only when the
		// peer runs an XDP program itself (GRO alone leaves them queued until
		// the peer's next poll), so the bridge's ports run a pass program.
		auto reference = xdp::ForwarderObject::load("", true);
		ASSERT_TRUE(reference.ok()) << reference.error().message();
		for (int s = 1; s <= 3; s++) {
			std::string port = "s" + std::to_string(s);
			int rc = inNamespace(ns("dc"), [&] {
				return bpf_xdp_attach(static_cast<int>(if_nametoindex(port.c_str())),
						      reference->referenceProgramFd(), XDP_FLAGS_DRV_MODE, nullptr);
			});
			ASSERT_EQ(rc, 0) << "attaching a pass program to dc port " << port;
		}
		// The product's own NAT table on every server.
		for (int s = 1; s <= 3; s++) {
			std::string name = "s" + std::to_string(s);
			auto nft = inNode(name, lab::buildPath("src/ctl/portslicectl") + " dump --config " + kConfig +
							" --server " + name + " | nft -f -");
			ASSERT_TRUE(nft.ok()) << nft.output;
		}
		// s3's MAC is not in the config: s1 learns it from its neighbour table.
		ASSERT_TRUE(inNode("s1", "ping -c1 -W2 192.0.2.13 >/dev/null").ok());
	}

	plan::Plan planFor(const std::string &server)
	{
		auto loaded = config::loadFile(kConfig);
		EXPECT_TRUE(loaded.ok());
		auto planned = plan::makePlan(*loaded.config, server);
		EXPECT_TRUE(planned.ok());
		return *planned.plan;
	}

	// Applies the plan of the lab's config, changed by `edit` (a slice move
	// that orchestration would make), on one server.
	void applyOn(const std::string &server, const std::function<void(plan::Plan &)> &edit = {})
	{
		auto p = planFor(server);
		if (edit)
			edit(p);
		Status s = inNamespace(ns(server), [&] { return xdp::applyForwarder(p, bpfDir(server)); });
		ASSERT_TRUE(s.ok()) << server << ": " << s.error().message();
	}

	void applyAll(const std::function<void(plan::Plan &)> &edit = {})
	{
		for (const char *s : {"s1", "s2", "s3"})
			applyOn(s, edit);
	}

	xdp::ForwarderCounters counters(const std::string &server)
	{
		auto c = xdp::readForwarderCounters(bpfDir(server));
		EXPECT_TRUE(c.ok()) << c.error().message();
		return c.ok() ? *c : xdp::ForwarderCounters{};
	}

	// A TCP connection from `workload` to the internet host: sends a request,
	// receives `bytes` bytes. Returns the bytes received, -1 if connect failed.
	long tcpDownload(const std::string &workload, uint16_t port, size_t bytes)
	{
		UniqueFd listener = socketIn(ns("inet"), SOCK_STREAM);
		int one = 1;
		::setsockopt(listener.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		auto sa = endpoint(kInet, port);
		if (::bind(listener.get(), reinterpret_cast<sockaddr *>(&sa), sizeof(sa)) != 0 ||
		    ::listen(listener.get(), 4) != 0) {
			ADD_FAILURE() << "listen: " << std::strerror(errno);
			return -1;
		}
		setTimeouts(listener.get(), 6000);
		std::thread server([&] {
			UniqueFd c(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
			if (!c.isValid())
				return;
			setTimeouts(c.get(), 5000);
			char req[100];
			size_t got = 0;
			while (got < sizeof(req)) {
				ssize_t n = ::recv(c.get(), req + got, sizeof(req) - got, 0);
				if (n <= 0)
					return;
				got += static_cast<size_t>(n);
			}
			std::vector<char> data(bytes, 'x');
			size_t sent = 0;
			while (sent < bytes) {
				ssize_t n = ::send(c.get(), data.data() + sent, bytes - sent, MSG_NOSIGNAL);
				if (n <= 0)
					return;
				sent += static_cast<size_t>(n);
			}
		});
		UniqueFd client = socketIn(ns(workload), SOCK_STREAM);
		setTimeouts(client.get(), 3000);
		long received = -1;
		if (::connect(client.get(), reinterpret_cast<sockaddr *>(&sa), sizeof(sa)) == 0) {
			char req[100] = {};
			received = 0;
			if (::send(client.get(), req, sizeof(req), MSG_NOSIGNAL) == sizeof(req)) {
				char buf[65536];
				for (;;) {
					ssize_t n = ::recv(client.get(), buf, sizeof(buf), 0);
					if (n <= 0)
						break;
					received += n;
				}
			}
		}
		client.reset();
		::shutdown(listener.get(), SHUT_RDWR); // wakes a server still in accept()
		server.join();
		return received;
	}

	// One UDP request and answer between `workload` and the internet host.
	bool udpRoundTrip(const std::string &workload, uint16_t port)
	{
		UniqueFd server = socketIn(ns("inet"), SOCK_DGRAM);
		auto sa = endpoint(kInet, port);
		if (::bind(server.get(), reinterpret_cast<sockaddr *>(&sa), sizeof(sa)) != 0)
			return false;
		setTimeouts(server.get(), 2000);
		UniqueFd client = socketIn(ns(workload), SOCK_DGRAM);
		setTimeouts(client.get(), 2000);
		if (::connect(client.get(), reinterpret_cast<sockaddr *>(&sa), sizeof(sa)) != 0)
			return false;
		const char ping[] = "ping";
		if (::send(client.get(), ping, sizeof(ping), 0) != sizeof(ping))
			return false;
		char buf[64];
		sockaddr_in from{};
		socklen_t len = sizeof(from);
		ssize_t n = ::recvfrom(server.get(), buf, sizeof(buf), 0, reinterpret_cast<sockaddr *>(&from), &len);
		if (n != sizeof(ping))
			return false;
		const char pong[] = "pong";
		::sendto(server.get(), pong, sizeof(pong), 0, reinterpret_cast<sockaddr *>(&from), len);
		n = ::recv(client.get(), buf, sizeof(buf), 0);
		return n == sizeof(pong) && std::memcmp(buf, pong, sizeof(pong)) == 0;
	}
};

constexpr size_t kDownload = 1 << 20;

TEST_F(XdpLab, WorkloadsBehindS2AndS3GetTheirAnswersOnlyThroughS1sForwarder)
{
	// Control: the router hands everything to s1, which has no state for
	// s2's and s3's flows. s1's own workload works, the others do not.
	EXPECT_EQ(tcpDownload("w1", 8001, kDownload), static_cast<long>(kDownload)) << "sanity: s1's own workload";
	EXPECT_LT(tcpDownload("w2", 8002, kDownload), 1) << "without the forwarder w2 must not connect";
	EXPECT_FALSE(udpRoundTrip("w3", 9003)) << "without the forwarder w3 must get no UDP answer";

	applyAll();
	auto s1Before = counters("s1");
	auto s2Before = counters("s2");
	auto s3Before = counters("s3");

	// The forwarder stays attached after the loader let go of it, and so
	// does its egress program, as the uplink's one tc egress filter.
	auto link = inNode("s1", "ip -d link show eth0");
	EXPECT_NE(link.output.find("xdp"), std::string::npos) << link.output;
	auto egressFilters = [&] {
		std::string out = inNode("s1", "tc filter show dev eth0 egress").output;
		size_t n = 0;
		std::istringstream lines(out);
		for (std::string line; std::getline(lines, line);)
			n += line.find("name portslice_recor") != std::string::npos; // names are cut at 15 characters
		return n;
	};
	EXPECT_EQ(egressFilters(), 1u) << inNode("s1", "tc filter show dev eth0 egress").output;

	for (const char *w : {"w1", "w2", "w3"}) {
		EXPECT_EQ(tcpDownload(w, 8010, kDownload), static_cast<long>(kDownload)) << w << " TCP";
		EXPECT_TRUE(udpRoundTrip(w, 9010)) << w << " UDP";
	}
	auto s1 = counters("s1");
	auto s2 = counters("s2");
	auto s3 = counters("s3");
	EXPECT_GT(s1.packets[FWD_V_FORWARD] - s1Before.packets[FWD_V_FORWARD], 2 * kDownload / 1500)
		<< "s1 forwards both downloads";
	EXPECT_GT(s1.packets[FWD_V_PASS_OWN] - s1Before.packets[FWD_V_PASS_OWN], kDownload / 1500);
	EXPECT_GT(s2.packets[FWD_V_DECAP] - s2Before.packets[FWD_V_DECAP], kDownload / 1500);
	EXPECT_GT(s3.packets[FWD_V_DECAP] - s3Before.packets[FWD_V_DECAP], kDownload / 1500);
	EXPECT_EQ(s1.packets[FWD_V_NO_NEIGH], 0u) << "s3's MAC came from s1's neighbour table";

	// Applying again with the same program only syncs the maps.
	applyOn("s1");
	EXPECT_TRUE(udpRoundTrip("w2", 9011));
	EXPECT_EQ(egressFilters(), 1u) << "applying again must not add a second egress filter";

	// Removing the forwarder from s1 brings the control back.
	Status removed = inNamespace(ns("s1"), [&] { return xdp::removeForwarder("eth0", bpfDir("s1")); });
	ASSERT_TRUE(removed.ok()) << removed.error().message();
	link = inNode("s1", "ip -d link show eth0");
	EXPECT_EQ(link.output.find("xdp"), std::string::npos) << link.output;
	EXPECT_FALSE(udpRoundTrip("w2", 9012)) << "after removeForwarder s1 no longer forwards";
	EXPECT_FALSE(xdp::readForwarderCounters(bpfDir("s1")).ok()) << "pins are gone";
	EXPECT_EQ(egressFilters(), 0u) << "removeForwarder leaves no egress filter";
}

TEST_F(XdpLab, FragmentationNeededFromTheRouterReachesTheWorkloadBehindS3)
{
	// The internet side of the router takes 1400 bytes at most.
	ASSERT_TRUE(inNode("rtr", "ip link set eth0 mtu 1400").ok());
	ASSERT_TRUE(inNode("inet", "ip link set eth0 mtu 1400").ok());
	// Every try gets its ICMP error (the router's rate limit is not under test).
	ASSERT_TRUE(inNode("rtr", "sysctl -qw net.ipv4.icmp_ratelimit=0").ok());

	UniqueFd sock = socketIn(ns("w3"), SOCK_DGRAM);
	int pmtu = IP_PMTUDISC_DO;
	ASSERT_EQ(::setsockopt(sock.get(), IPPROTO_IP, IP_MTU_DISCOVER, &pmtu, sizeof(pmtu)), 0);
	auto sa = endpoint(kInet, 9100);
	ASSERT_EQ(::connect(sock.get(), reinterpret_cast<sockaddr *>(&sa), sizeof(sa)), 0);
	std::vector<char> big(1400, 'p'); // 1428 bytes on the wire: too big past the router
	auto pathMtu = [&] {
		int mtu = 0;
		socklen_t len = sizeof(mtu);
		::getsockopt(sock.get(), IPPROTO_IP, IP_MTU, &mtu, &len);
		return mtu;
	};
	// Sends until the socket learns the path MTU (bounded: 8 tries, 4 s).
	auto learn = [&] {
		for (int i = 0; i < 8 && pathMtu() != 1400; i++) {
			(void)::send(sock.get(), big.data(), big.size(), 0);
			std::this_thread::sleep_for(std::chrono::milliseconds(500));
		}
		return pathMtu();
	};

	// No lab rule helps here: the product's table (SetUp) gives the router's
	// ICMP error the conntrack zone of w3's flow by the quoted source port
	// (map icmp_zone), so s3's conntrack relates it and undoes the NAT.
	// Control: the router's "fragmentation needed" goes to s1 and dies there.
	EXPECT_EQ(learn(), 1500) << "without the forwarder w3 must not learn the path MTU";

	applyAll();
	auto before = counters("s1");
	auto s3Before = counters("s3");
	EXPECT_EQ(learn(), 1400) << "the ICMP error must reach w3 through s1 and s3";
	auto after = counters("s1");
	auto s3After = counters("s3");
	EXPECT_GE(after.packets[FWD_V_ICMP_FORWARD] - before.packets[FWD_V_ICMP_FORWARD], 1u);
	EXPECT_GE(s3After.packets[FWD_V_DECAP] - s3Before.packets[FWD_V_DECAP], 1u);
}

TEST_F(XdpLab, DuringAHandoverTheNewOwnerPassesFlowsItHasNoStateForToThePreviousOwner)
{
	applyAll();
	// A UDP flow of w2 through s2 (slice 1 of 198.51.100.1).
	UniqueFd server = socketIn(ns("inet"), SOCK_DGRAM);
	auto sa = endpoint(kInet, 9200);
	ASSERT_EQ(::bind(server.get(), reinterpret_cast<sockaddr *>(&sa), sizeof(sa)), 0);
	setTimeouts(server.get(), 2000);
	UniqueFd client = socketIn(ns("w2"), SOCK_DGRAM);
	setTimeouts(client.get(), 1500);
	ASSERT_EQ(::connect(client.get(), reinterpret_cast<sockaddr *>(&sa), sizeof(sa)), 0);
	ASSERT_EQ(::send(client.get(), "hi", 2, 0), 2);
	sockaddr_in peer{};
	socklen_t len = sizeof(peer);
	char buf[16];
	ASSERT_EQ(::recvfrom(server.get(), buf, sizeof(buf), 0, reinterpret_cast<sockaddr *>(&peer), &len), 2);
	uint16_t natPort = ntohs(peer.sin_port);
	ASSERT_GE(natPort, 3072) << "w2's flow must use s2's slice 1";
	ASSERT_LE(natPort, 5119);
	auto answer = [&](const char *what) {
		::sendto(server.get(), what, 1, 0, reinterpret_cast<sockaddr *>(&peer), len);
		char got[16];
		ssize_t n = ::recv(client.get(), got, sizeof(got), 0);
		return n == 1 && got[0] == what[0];
	};
	ASSERT_TRUE(answer("a")) << "before the move";

	const int32_t s2 = 1, s3 = 2; // indices in the plan's server list
	// Control: slice 1 moves to s3 and nobody drains it: s3 has no state for
	// w2's flow and the answer is lost.
	applyAll([&](plan::Plan &p) {
		p.addresses[0].owner[1] = s3;
		p.addresses[0].setPrevious(1, plan::kNoServer);
	});
	EXPECT_FALSE(answer("b")) << "without a previous owner the draining flow must break";

	// The same move with s2 as the previous owner: s1 sends the answer to s3,
	// s3's conntrack does not know the flow, s3 hands it to s2. Applied as
	// the daemon's SetSliceOwner does: only slice 1's word changes.
	for (const char *name : {"s1", "s2", "s3"}) {
		auto p = planFor(name);
		p.addresses[0].owner[1] = s3;
		p.addresses[0].setPrevious(1, s2);
		Status st = inNamespace(ns(name), [&] { return xdp::applyForwarderSlices(p, {{0, 1}}, bpfDir(name)); });
		ASSERT_TRUE(st.ok()) << name << ": " << st.error().message();
	}
	auto s3Before = counters("s3");
	auto s2Before = counters("s2");
	EXPECT_TRUE(answer("c")) << "the previous owner must still get its flow's answers";
	EXPECT_GE(counters("s3").packets[FWD_V_SECOND_HOP] - s3Before.packets[FWD_V_SECOND_HOP], 1u);
	EXPECT_GE(counters("s2").packets[FWD_V_DECAP] - s2Before.packets[FWD_V_DECAP], 1u);
}

} // namespace
} // namespace portslice
