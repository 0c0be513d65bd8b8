// SPDX-License-Identifier: MIT
// Benchmark: packets per second through a server namespace running portsliced's table (docs/performance.md "Datapath").
//
// datapath_bench [--pairs 3] [--frames 2000000] [--seconds 3] [--sources 10000]
//                [--rows scaling,stateless-scaling,stateless,reference] [--tweak FILE] [--daemon PATH]
// --rows runs only the named rows; --tweak FILE is an `nft -f` script applied in the
// server namespace after every apply (to measure what one set or rule costs); --daemon
// applies the tables with another build's portsliced (a before/after of the table's shape).
// Needs root. Builds two lanes, A and B, each sender --veth--> server (eth0 uplink)
// --veth--> sink in namespaces psp-PID-LANE-{snd,srv,snk}, deleted on every way out
// (also SIGINT/SIGTERM). An AF_PACKET socket in each sender sends prebuilt
// Ethernet/IPv4/UDP frames with sendmmsg; the sink veth's rx_packets counts what the
// server forwarded. A pair applies A's table in lane A and B's in lane B, then sends
// in 12 alternating turns (A B, B A, ...), so both tables see the same machine load.
// Rows: 10 vs N conntrack sources, 10 vs N stateless sources, stateless vs conntrack on new flows, and N conntrack
// sources vs a one-rule-per-source nft table (the second reference of docs/performance.md).
// Prints the figures; it asserts nothing.
#include <algorithm>
#include <arpa/inet.h>
#include <array>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <sched.h>
#include <string>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include "common/handle.h"
#include "nat_fleet.h"

using Clock = std::chrono::steady_clock;

namespace {

const std::string kBuild = PORTSLICE_BUILD_ROOT;
// The daemon that applies the tables: this build's, or --daemon PATH (another build's, for a before/after).
std::string gDaemon = kBuild + "/src/daemon/portsliced";
volatile std::sig_atomic_t gStop = 0;
std::vector<std::string> gNamespaces; // deleted by cleanup()
std::string gTmp;

void onSignal(int)
{
	gStop = 1;
}

int sh(const std::string &cmd)
{
	int rc = std::system(("exec >/dev/null 2>&1; " + cmd).c_str());
	return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

std::string capture(const std::string &cmd)
{
	std::string out;
	FILE *p = popen((cmd + " 2>/dev/null").c_str(), "r");
	if (!p)
		return out;
	std::array<char, 256> buf{};
	while (fgets(buf.data(), buf.size(), p))
		out += buf.data();
	pclose(p);
	while (!out.empty() && (out.back() == '\n' || out.back() == ' '))
		out.pop_back();
	return out;
}

void cleanup()
{
	for (const auto &ns : gNamespaces)
		sh("ip netns del " + ns);
	gNamespaces.clear();
	if (!gTmp.empty())
		sh("rm -rf " + gTmp);
	gTmp.clear();
}

[[noreturn]] void fail(const std::string &what)
{
	std::fprintf(stderr, "datapath_bench: %s\n", what.c_str());
	std::exit(1); // atexit: cleanup()
}

void must(const std::string &cmd)
{
	if (gStop)
		fail("interrupted");
	if (sh(cmd) != 0)
		fail("command failed: " + cmd);
}

double median(std::vector<double> v)
{
	std::sort(v.begin(), v.end());
	size_t n = v.size();
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

struct Lab {
	std::string snd, srv, snk;
};

std::array<uint8_t, 6> parseMac(const std::string &s)
{
	std::array<unsigned, 6> v{};
	if (std::sscanf(s.c_str(), "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6)
		fail("bad MAC address '" + s + "'");
	std::array<uint8_t, 6> m{};
	for (size_t i = 0; i < 6; i++)
		m[i] = static_cast<uint8_t>(v[i]);
	return m;
}

// One lane: sender, server and sink namespaces. The bench runs two, A and B.
Lab makeLab(const std::string &lane)
{
	std::string base = "psp-" + std::to_string(getpid()) + "-" + lane;
	Lab l{base + "-snd", base + "-srv", base + "-snk"};
	for (const auto &ns : {l.snd, l.srv, l.snk}) {
		must("ip netns add " + ns);
		gNamespaces.push_back(ns);
		must("ip -n " + ns + " link set lo up");
	}
	// sender snd0 192.0.2.1/30 -- in0 192.0.2.2/30 server eth0 192.0.2.5/30 -- snk0 192.0.2.6/30 sink
	must("ip -n " + l.snd + " link add name snd0 type veth peer name in0 netns " + l.srv);
	must("ip -n " + l.srv + " link add name eth0 type veth peer name snk0 netns " + l.snk);
	must("ip -n " + l.snd + " addr add 192.0.2.1/30 dev snd0 && ip -n " + l.snd + " link set snd0 up");
	must("ip -n " + l.srv + " addr add 192.0.2.2/30 dev in0 && ip -n " + l.srv + " link set in0 up");
	must("ip -n " + l.srv + " addr add 192.0.2.5/30 dev eth0 && ip -n " + l.srv + " link set eth0 up");
	must("ip -n " + l.snk + " addr add 192.0.2.6/30 dev snk0 && ip -n " + l.snk + " link set snk0 up");
	must("ip -n " + l.srv + " route add 203.0.113.0/24 via 192.0.2.6");
	must("ip -n " + l.srv + " route add 100.64.0.0/10 via 192.0.2.1");
	must("ip netns exec " + l.srv +
	     " sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0"
	     " net.ipv4.conf.in0.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0");
	// No batching: each frame is its own trip through the server.
	for (const auto &[ns, dev] : {std::pair{l.snd, "snd0"}, {l.srv, "in0"}, {l.srv, "eth0"}, {l.snk, "snk0"}})
		sh("ip netns exec " + ns + " ethtool -K " + dev + " gro off gso off tso off");
	std::string rxMac = capture("ip netns exec " + l.snk + " cat /sys/class/net/snk0/address");
	std::string sndMac = capture("ip netns exec " + l.snd + " cat /sys/class/net/snd0/address");
	parseMac(rxMac);
	parseMac(sndMac);
	must("ip -n " + l.srv + " neigh replace 192.0.2.6 lladdr " + rxMac + " dev eth0 nud permanent");
	must("ip -n " + l.srv + " neigh replace 192.0.2.1 lladdr " + sndMac + " dev in0 nud permanent");
	return l;
}

uint64_t sinkPackets(const Lab &l)
{
	std::string s = capture("ip netns exec " + l.snk + " cat /sys/class/net/snk0/statistics/rx_packets");
	if (s.empty())
		fail("cannot read the sink's rx_packets");
	return std::stoull(s);
}

uint16_t ipChecksum(const uint8_t *p, size_t n)
{
	uint32_t sum = 0;
	for (size_t i = 0; i + 1 < n; i += 2)
		sum += static_cast<uint32_t>(p[i] << 8 | p[i + 1]);
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return static_cast<uint16_t>(~sum);
}

constexpr size_t kFrameLen = 60;
constexpr size_t kBatch = 64;
constexpr uint32_t kInside = 16; // 100.64.0.0/28: the first source's prefix

// Frame i comes from inside address a = 100.64.0.(i % 16) with a source port in
// a's stateless block (1024 + 128a .. +127), so the stateless source forwards it too.
// newFlows: every frame its own 5-tuple (128 sports x 254 daddrs of 203.0.113.0/24
// x dports 5000..5007 per inside address: unique up to 4,161,536 frames);
// otherwise 16 x 16 fixed 5-tuples, established after the first few frames.
void fillFrame(uint8_t *f, uint64_t i, bool newFlows, const std::array<uint8_t, 6> &dst,
	       const std::array<uint8_t, 6> &src)
{
	std::memset(f, 0, kFrameLen);
	std::memcpy(f, dst.data(), 6);
	std::memcpy(f + 6, src.data(), 6);
	f[12] = 0x08;
	f[13] = 0x00;
	auto a = static_cast<uint32_t>(i % kInside);
	uint64_t k = i / kInside;
	uint32_t port = 1024 + a * 128 + static_cast<uint32_t>(newFlows ? k % 128 : k % 16);
	uint64_t m = k / 128;
	uint32_t host = newFlows ? 1 + static_cast<uint32_t>(m % 254) : 10 + a;
	uint32_t service = newFlows ? 5000 + static_cast<uint32_t>((m / 254) % 8) : 5000;
	uint8_t *ip = f + 14;
	ip[0] = 0x45;
	uint16_t totLen = htons(kFrameLen - 14);
	std::memcpy(ip + 2, &totLen, 2);
	ip[8] = 64;
	ip[9] = IPPROTO_UDP;
	uint32_t saddr = htonl((100u << 24 | 64u << 16) + a);
	uint32_t daddr = htonl((203u << 24 | 113u << 8) + host);
	std::memcpy(ip + 12, &saddr, 4);
	std::memcpy(ip + 16, &daddr, 4);
	uint16_t csum = htons(ipChecksum(ip, 20));
	std::memcpy(ip + 10, &csum, 2);
	uint8_t *udp = ip + 20;
	uint16_t sport = htons(static_cast<uint16_t>(port));
	uint16_t dport = htons(static_cast<uint16_t>(service));
	uint16_t ulen = htons(kFrameLen - 34);
	std::memcpy(udp, &sport, 2);
	std::memcpy(udp + 2, &dport, 2);
	std::memcpy(udp + 4, &ulen, 2); // checksum 0: none (IPv4)
}

class Sender {
public:
	explicit Sender(const Lab &l)
	{
		dst_ = parseMac(capture("ip netns exec " + l.srv + " cat /sys/class/net/in0/address"));
		src_ = parseMac(capture("ip netns exec " + l.snd + " cat /sys/class/net/snd0/address"));
		portslice::UniqueFd home(open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC));
		portslice::UniqueFd there(open(("/var/run/netns/" + l.snd).c_str(), O_RDONLY | O_CLOEXEC));
		if (home.get() < 0 || there.get() < 0 || setns(there.get(), CLONE_NEWNET) != 0)
			fail("cannot enter the sender namespace");
		fd_ = portslice::UniqueFd(socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0));
		unsigned idx = if_nametoindex("snd0");
		int one = 1;
		if (fd_.get() >= 0)
			setsockopt(fd_.get(), SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one));
		sockaddr_ll sll{};
		sll.sll_family = AF_PACKET;
		sll.sll_protocol = 0;
		sll.sll_ifindex = static_cast<int>(idx);
		bool ok = fd_.get() >= 0 && idx != 0 && bind(fd_.get(), reinterpret_cast<sockaddr *>(&sll), sizeof(sll)) == 0;
		if (setns(home.get(), CLONE_NEWNET) != 0)
			fail("cannot return to the original namespace");
		if (!ok)
			fail("cannot open the AF_PACKET socket in the sender namespace");
	}

	struct Sent {
		uint64_t frames;
		double seconds;
		double cpuSeconds; // this thread's CPU time: sendmmsg runs the whole forwarding path inline
	};

	// Frame numbers start again at 0 (a new 5-tuple per frame counts from here).
	void restart() { next_ = 0; }

	// Sends until maxFrames or maxSeconds, continuing the frame numbers.
	Sent send(bool newFlows, uint64_t maxFrames, double maxSeconds)
	{
		std::vector<uint8_t> frames(kBatch * kFrameLen);
		std::array<iovec, kBatch> iov{};
		std::array<mmsghdr, kBatch> msgs{};
		for (size_t j = 0; j < kBatch; j++) {
			iov[j] = {frames.data() + j * kFrameLen, kFrameLen};
			msgs[j].msg_hdr.msg_iov = &iov[j];
			msgs[j].msg_hdr.msg_iovlen = 1;
		}
		uint64_t sent = 0;
		double cpu0 = threadCpuSeconds();
		auto t0 = Clock::now();
		double elapsed = 0;
		while (sent < maxFrames && elapsed < maxSeconds && !gStop) {
			size_t n = static_cast<size_t>(std::min<uint64_t>(kBatch, maxFrames - sent));
			for (size_t j = 0; j < n; j++)
				fillFrame(frames.data() + j * kFrameLen, next_ + sent + j, newFlows, dst_, src_);
			size_t done = 0;
			while (done < n && !gStop) {
				int r = sendmmsg(fd_.get(), msgs.data() + done, static_cast<unsigned>(n - done), 0);
				if (r > 0)
					done += static_cast<size_t>(r);
				else if (r < 0 && errno != ENOBUFS && errno != EAGAIN && errno != EINTR)
					fail(std::string("sendmmsg: ") + std::strerror(errno));
				if (std::chrono::duration<double>(Clock::now() - t0).count() > maxSeconds + 1)
					break;
			}
			sent += done;
			elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
		}
		next_ += sent;
		return {sent, elapsed, threadCpuSeconds() - cpu0};
	}

private:
	static double threadCpuSeconds()
	{
		timespec ts{};
		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
		return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
	}

	portslice::UniqueFd fd_;
	std::array<uint8_t, 6> dst_{}, src_{};
	uint64_t next_ = 0;
};

// generatedFleet makes stateless sources; the conntrack variant is the same fleet with nat = "conntrack".
std::string writeFleet(uint32_t n, bool conntrack)
{
	std::string t = portslice::testing::generatedFleet(n);
	if (conntrack) {
		const std::string from = "nat = \"stateless\"\nblock = 128\n", to = "nat = \"conntrack\"\n";
		for (size_t p = t.find(from); p != std::string::npos; p = t.find(from, p + to.size()))
			t.replace(p, from.size(), to);
	}
	std::string path = gTmp + "/fleet-" + std::to_string(n) + (conntrack ? "-ct" : "-sl") + ".toml";
	std::ofstream(path) << t;
	return path;
}

// The second reference of docs/performance.md: a hand-written table, one `ip saddr X snat to Y`
// rule per source of generatedFleet(n), the traffic's prefix (100.64.0.0/28) last.
std::string writeRulePerSource(uint32_t n)
{
	std::string t = "table ip psref {\n\tchain post {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n";
	for (uint32_t i = n; i-- > 0;)
		t += "\t\toifname \"eth0\" ip saddr " + portslice::Ipv4{(100u << 24 | 64u << 16) + i * 16}.str() +
		     "/28 snat to " + portslice::Ipv4{(198u << 24 | 18u << 16) + i}.str() + "\n";
	t += "\t}\n}\n";
	std::string path = gTmp + "/rule-per-source-" + std::to_string(n) + ".nft";
	std::ofstream(path) << t;
	return path;
}

struct Run {
	double pps;
	double sendPps;
	double cpuNs; // sender CPU time per delivered frame, less sensitive to other load than pps
	long conntrack;
};

uint64_t gFrames = 2000000;
double gSeconds = 3;
std::string gTweak; // nft -f script applied after every apply, empty: none

// A fresh table (and tweak) and an empty conntrack table in a lane's server.
void prepare(const Lab &l, const std::string &cfg)
{
	must("ip netns exec " + l.srv + " nft flush ruleset");
	if (cfg.ends_with(".nft"))
		must("ip netns exec " + l.srv + " nft -f " + cfg);
	else
		must("ip netns exec " + l.srv + " " + gDaemon + " --config " + cfg +
		     " --apply-once --no-xdp --state-dir " + gTmp + "/state-" + l.srv);
	if (!gTweak.empty())
		must("ip netns exec " + l.srv + " nft -f " + gTweak);
	sh("ip netns exec " + l.srv + " conntrack -F");
}

struct Lane {
	const Lab &lab;
	Sender &sender;
	std::string cfg;
	uint64_t sent = 0, before = 0;
	double seconds = 0, cpuSeconds = 0;

	void send(bool newFlows, uint64_t frames, double secs)
	{
		auto r = sender.send(newFlows, frames, secs);
		sent += r.frames;
		seconds += r.seconds;
		cpuSeconds += r.cpuSeconds;
	}
	Run result()
	{
		uint64_t got = sinkPackets(lab) - before;
		std::string c = capture("ip netns exec " + lab.srv + " conntrack -C");
		if (got < sent / 100)
			fail("the sink saw " + std::to_string(got) + " of " + std::to_string(sent) + " frames through " + cfg +
			     ": the server does not forward");
		return {static_cast<double>(got) / seconds, static_cast<double>(sent) / seconds,
			cpuSeconds * 1e9 / static_cast<double>(std::max<uint64_t>(1, got)), c.empty() ? -1 : std::stol(c)};
	}
};

// One pair: A and B each get gFrames frames or gSeconds, in kSlices turns that
// alternate (A B, B A, ...), so that both see the same load of the machine.
constexpr int kSlices = 12;

std::pair<Run, Run> measurePair(Lane a, Lane b, bool newFlows)
{
	prepare(a.lab, a.cfg);
	prepare(b.lab, b.cfg);
	a.sender.restart();
	b.sender.restart();
	usleep(200000);
	a.before = sinkPackets(a.lab);
	b.before = sinkPackets(b.lab);
	for (int k = 0; k < kSlices && !gStop; k++) {
		Lane &first = k % 2 ? b : a, &second = k % 2 ? a : b;
		first.send(newFlows, gFrames / kSlices, gSeconds / kSlices);
		second.send(newFlows, gFrames / kSlices, gSeconds / kSlices);
	}
	usleep(300000);
	if (gStop)
		fail("interrupted");
	return {a.result(), b.result()};
}

void compare(const Lab &la, Sender &sa, const Lab &lb, Sender &sb, int pairs, const std::string &name,
	     const std::string &aName, const std::string &aCfg, const std::string &bName, const std::string &bCfg,
	     bool newFlows, double target)
{
	std::vector<double> a, b, ratio, cpuA, cpuB, cpuRatio;
	long ctA = 0;
	for (int i = 0; i < pairs; i++) {
		auto [ra, rb] = measurePair(Lane{la, sa, aCfg}, Lane{lb, sb, bCfg}, newFlows);
		std::printf("  %s pair %d: %s %.0f pps (sent %.0f/s, %.0f ns CPU/frame, %ld conntrack), %s %.0f pps (sent "
			    "%.0f/s, %.0f ns CPU/frame, %ld conntrack)\n",
			    name.c_str(), i + 1, aName.c_str(), ra.pps, ra.sendPps, ra.cpuNs, ra.conntrack, bName.c_str(),
			    rb.pps, rb.sendPps, rb.cpuNs, rb.conntrack);
		std::fflush(stdout);
		a.push_back(ra.pps);
		b.push_back(rb.pps);
		ratio.push_back(ra.pps / rb.pps);
		cpuA.push_back(ra.cpuNs);
		cpuB.push_back(rb.cpuNs);
		cpuRatio.push_back(rb.cpuNs / ra.cpuNs);
		ctA = std::max(ctA, ra.conntrack);
	}
	std::printf("| %s | %s %.0f pps, %.0f ns | %s %.0f pps, %.0f ns | %.3f | %.3f | >= %.2f | %ld |\n", name.c_str(),
		    aName.c_str(), median(a), median(cpuA), bName.c_str(), median(b), median(cpuB), median(ratio),
		    median(cpuRatio), target, ctA);
	std::fflush(stdout);
}

} // namespace

int main(int argc, char **argv)
{
	int pairs = 3;
	uint32_t sources = 10000;
	std::string rows = "scaling,stateless-scaling,stateless,reference";
	for (int i = 1; i + 1 < argc; i += 2) {
		std::string a = argv[i];
		if (a == "--pairs")
			pairs = std::max(1, std::atoi(argv[i + 1]));
		else if (a == "--frames")
			gFrames = std::strtoull(argv[i + 1], nullptr, 10);
		else if (a == "--seconds")
			gSeconds = std::atof(argv[i + 1]);
		else if (a == "--sources")
			sources = static_cast<uint32_t>(std::atol(argv[i + 1]));
		else if (a == "--rows")
			rows = argv[i + 1];
		else if (a == "--tweak")
			gTweak = argv[i + 1];
		else if (a == "--daemon")
			gDaemon = argv[i + 1];
		else {
			std::fprintf(stderr, "usage: datapath_bench [--pairs 3] [--frames 2000000] [--seconds 3] [--sources 10000]"
					     " [--rows scaling,stateless-scaling,stateless,reference] [--tweak FILE] [--daemon PATH]\n");
			return 2;
		}
	}
	gFrames = std::min<uint64_t>(gFrames, 2000000);
	gSeconds = std::min(gSeconds, 10.0);
	if (geteuid() != 0) {
		std::fprintf(stderr, "datapath_bench: needs root (network namespaces)\n");
		return 77;
	}
	std::signal(SIGINT, onSignal);
	std::signal(SIGTERM, onSignal);
	std::signal(SIGHUP, onSignal);
	std::atexit(cleanup);
	char tmpl[] = "/tmp/psp-bench-XXXXXX";
	if (!mkdtemp(tmpl))
		fail("mkdtemp");
	gTmp = tmpl;

	Lab la = makeLab("a"), lb = makeLab("b");
	Sender sa(la), sb(lb);
	std::string ct10 = writeFleet(10, true), ctN = writeFleet(sources, true), sl10 = writeFleet(10, false);
	std::printf("datapath_bench: %d pairs, at most %llu frames or %.1f s per run, %ld CPUs\n", pairs,
		    static_cast<unsigned long long>(gFrames), gSeconds, sysconf(_SC_NPROCESSORS_ONLN));
	std::printf("| what | A (pps, CPU ns/frame) | B (pps, CPU ns/frame) | median A/B pps | median A/B per CPU (B ns / A ns) "
		    "| target | conntrack entries after A |\n| --- | --- | --- | --- | --- | --- | --- |\n");
	std::fflush(stdout);
	auto wanted = [&](const std::string &row) { return ("," + rows + ",").find("," + row + ",") != std::string::npos; };
	if (wanted("scaling"))
		compare(la, sa, lb, sb, pairs, "datapath scaling (fixed 5-tuples)", std::to_string(sources) + " conntrack sources",
			ctN, "10 conntrack sources", ct10, false, 0.95);
	if (wanted("stateless-scaling"))
		compare(la, sa, lb, sb, pairs, "stateless scaling (fixed 5-tuples)", std::to_string(sources) + " stateless sources",
			writeFleet(sources, false), "10 stateless sources", sl10, false, 0.95);
	if (wanted("stateless"))
		compare(la, sa, lb, sb, pairs, "stateless vs conntrack (new flow per packet)", "stateless", sl10, "conntrack", ct10,
			true, 1.3);
	if (wanted("reference"))
		compare(la, sa, lb, sb, pairs, "vs one rule per source (new flow per packet)",
			std::to_string(sources) + " conntrack sources", ctN,
			"nft, " + std::to_string(sources) + " rules, match last", writeRulePerSource(sources), true, 10);
	cleanup();
	return 0;
}
