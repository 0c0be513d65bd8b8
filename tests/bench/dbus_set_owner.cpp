// SPDX-License-Identifier: MIT
// Benchmark: one SetSliceOwner over D-Bus against a running portsliced vs the nft CLI changing one element of the same table.
//
// dbus_set_owner [--sources 6250] [--pairs 5] [--no-xdp] [--tmpfs-state] [--drain-seconds S]
// Needs root. The process moves into a network namespace of its own (it dies
// with the process), starts a private dbus-daemon and portsliced there, and
// prints the figures; it asserts nothing. 6250 sources make about 237k elements.
// KEEP=1 keeps its directory (the daemon's log) and prints where.
#include <algorithm>
#include <array>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <sched.h>
#include <spawn.h>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include <sdbus-c++/sdbus-c++.h>

#include "common/net.h"
#include "dbus/egress1_proxy.h"

extern char **environ;

using namespace portslice;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

namespace {

// BENCHMARKS.md "Generated fleets": 31 servers, N shared addresses of
// 198.18.0.0/15 (one slice each per server), N stateless /28 sources with
// block 128 (one whole slice each).
std::string fleet(uint32_t n)
{
	std::string t = "[server]\nname = \"s1\"\nuplink = \"eth0\"\n\n[defaults]\nport_range = \"1024-65535\"\n"
			"slice_size = 2048\n\n[[datacenters]]\nname = \"dc1\"\n\n";
	for (int s = 1; s <= 31; s++)
		t += "[[servers]]\nname = \"s" + std::to_string(s) + "\"\naddress = \"192.0.2." + std::to_string(10 + s) +
		     "\"\ndatacenter = \"dc1\"\nmac = \"02:00:00:00:00:" + (s < 16 ? "0" : "") +
		     ([&] { char b[3]; std::snprintf(b, sizeof(b), "%x", s); return std::string(b); })() + "\"\n\n";
	std::string slices = "{ ";
	for (int s = 1; s <= 31; s++)
		slices += (s > 1 ? ", s" : "s") + std::to_string(s) + " = " + std::to_string(s - 1);
	slices += " }";
	for (uint32_t i = 0; i < n; i++)
		t += "[[addresses]]\naddress = \"" + Ipv4{(198u << 24 | 18u << 16) + i}.str() +
		     "\"\ndatacenter = \"dc1\"\ntags = { id = \"a" + std::to_string(i) + "\" }\nslices = " + slices + "\n\n";
	for (uint32_t i = 0; i < n; i++)
		t += "[[sources]]\nname = \"src" + std::to_string(i) + "\"\nmatch = { saddr = \"" +
		     Ipv4{(100u << 24 | 64u << 16) + i * 16}.str() + "/28\" }\nwant = { id = \"a" + std::to_string(i) +
		     "\" }\nnat = \"stateless\"\nblock = 128\n\n";
	return t;
}

// dbus-daemon and portsliced: stopped on every way out, also on errors.
std::vector<pid_t> gChildren;

[[noreturn]] void fail(const std::string &why)
{
	std::fprintf(stderr, "%s\n", why.c_str());
	for (pid_t pid : gChildren)
		::kill(pid, SIGKILL);
	std::exit(1);
}

pid_t spawn(std::vector<std::string> argv, const std::string &log)
{
	std::vector<char *> args;
	for (auto &a : argv)
		args.push_back(a.data());
	args.push_back(nullptr);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
	posix_spawn_file_actions_adddup2(&fa, 1, 2);
	pid_t pid = -1;
	int rc = posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ);
	posix_spawn_file_actions_destroy(&fa);
	return rc == 0 ? pid : -1;
}

int wait(pid_t pid)
{
	int status = 0;
	while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
	}
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

double timedRun(const std::vector<std::string> &argv, const std::string &log)
{
	auto t0 = Clock::now();
	int rc = wait(spawn(argv, log));
	double s = std::chrono::duration<double>(Clock::now() - t0).count();
	if (rc != 0)
		fail(argv[0] + " failed (see " + log + ")");
	return s;
}

double median(std::vector<double> v)
{
	std::sort(v.begin(), v.end());
	return v[v.size() / 2];
}

std::string peakRss(pid_t pid)
{
	std::ifstream in("/proc/" + std::to_string(pid) + "/status");
	for (std::string line; std::getline(in, line);)
		if (line.starts_with("VmHWM:"))
			return line.substr(6);
	return "?";
}

class Egress1 final : public sdbus::ProxyInterfaces<org::portslice::Egress1_proxy> {
public:
	explicit Egress1(sdbus::IConnection &c) : ProxyInterfaces(c, "org.portslice.Egress1", "/org/portslice/Egress1")
	{
		registerProxy();
	}
	~Egress1() { unregisterProxy(); }

private:
	void onApplied(const uint64_t &) override {}
	void onApplyFailed(const std::string &) override {}
};

} // namespace

int main(int argc, char **argv)
{
	uint32_t sources = 6250;
	int pairs = 5;
	bool xdp = true;
	bool tmpfsState = false; // state directory on /dev/shm: the fsync of the overlay costs nothing
	std::string drainSeconds; // empty: the daemon's default
	for (int i = 1; i < argc; ++i) {
		std::string a = argv[i];
		if (a == "--sources" && i + 1 < argc)
			sources = static_cast<uint32_t>(std::stoul(argv[++i]));
		else if (a == "--pairs" && i + 1 < argc)
			pairs = std::stoi(argv[++i]);
		else if (a == "--no-xdp")
			xdp = false;
		else if (a == "--tmpfs-state")
			tmpfsState = true;
		else if (a == "--drain-seconds" && i + 1 < argc)
			drainSeconds = argv[++i];
		else {
			std::fprintf(stderr, "usage: dbus_set_owner [--sources N] [--pairs K] [--no-xdp] [--tmpfs-state] "
					     "[--drain-seconds S]\n");
			return 2;
		}
	}
	if (::geteuid() != 0) {
		std::fprintf(stderr, "dbus_set_owner: needs root (network namespace, nftables, dbus-daemon)\n");
		return 77;
	}
	if (::unshare(CLONE_NEWNET) != 0) {
		std::perror("unshare");
		return 1;
	}
	std::string pattern = (fs::temp_directory_path() / "psd-bench-XXXXXX").string();
	if (!::mkdtemp(pattern.data()))
		return 1;
	fs::path dir = pattern;
	std::string log = (dir / "log").string();
	timedRun({"ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"}, log);
	timedRun({"ip", "link", "set", "eth0", "up"}, log);
	timedRun({"ip", "link", "set", "eth0p", "up"}, log);
	fs::create_directory(dir / "bpf");
	if (xdp)
		timedRun({"mount", "-t", "bpf", "bpf", (dir / "bpf").string()}, log);
	std::ofstream(dir / "fleet.toml") << fleet(sources);
	std::ofstream(dir / "bus.conf") << "<busconfig><type>system</type><listen>unix:path=" << (dir / "bus").string()
					<< "</listen><auth>EXTERNAL</auth><policy context=\"default\"><allow user=\"*\"/>"
					   "<allow own=\"*\"/><allow send_type=\"*\"/><allow receive_type=\"*\"/></policy>"
					   "</busconfig>\n";
	pid_t bus = spawn({"dbus-daemon", "--config-file=" + (dir / "bus.conf").string(), "--nofork", "--nopidfile"},
			  log);
	gChildren.push_back(bus);
	std::string address = "unix:path=" + (dir / "bus").string();
	for (int i = 0; i < 200 && !fs::exists(dir / "bus"); ++i)
		std::this_thread::sleep_for(std::chrono::milliseconds(10));
	::setenv("DBUS_SYSTEM_BUS_ADDRESS", address.c_str(), 1);
	std::string stateDir = (dir / "state").string();
	if (tmpfsState) {
		std::string shm = "/dev/shm/psd-bench-XXXXXX";
		if (!::mkdtemp(shm.data()))
			return 1;
		stateDir = shm;
	}
	std::vector<std::string> daemonArgs = {std::string(PSD_BUILD_ROOT) + "/src/daemon/portsliced", "--config",
					       (dir / "fleet.toml").string(), "--state-dir", stateDir};
	if (xdp) {
		daemonArgs.push_back("--xdp-pin-dir");
		daemonArgs.push_back((dir / "bpf" / "portslice").string());
	} else {
		daemonArgs.push_back("--no-xdp");
	}
	if (!drainSeconds.empty()) {
		daemonArgs.push_back("--drain-seconds");
		daemonArgs.push_back(drainSeconds);
	}
	auto started = Clock::now();
	pid_t daemon = spawn(daemonArgs, log);
	gChildren.push_back(daemon);

	auto connection = sdbus::createSessionBusConnectionWithAddress(address);
	Egress1 proxy(*connection);
	std::string state;
	for (int i = 0; i < 1200 && state != "applied"; ++i) {
		try {
			state = proxy.State();
		} catch (const sdbus::Error &) {
			std::this_thread::sleep_for(std::chrono::milliseconds(100));
		}
	}
	double startSeconds = std::chrono::duration<double>(Clock::now() - started).count();
	if (state != "applied")
		fail("portsliced did not apply (see " + log + ")");
	// Elements of the first full replace, as the daemon logged it ("table replaced, +N").
	size_t elements = 0;
	{
		std::ifstream in(log);
		for (std::string line; std::getline(in, line) && elements == 0;) {
			size_t at = line.find("table replaced, +");
			if (at != std::string::npos)
				elements = std::stoul(line.substr(at + 17));
		}
	}

	// A: s1 takes a slice of the first address from its owner, then gives it back
	// (each call one SetSliceOwner: validate, plan, persist, element delta, conntrack clean-up, XDP maps).
	// B: the nft CLI adding one my_ports element of the same move, and deleting it.
	std::string first = Ipv4{198u << 24 | 18u << 16}.str();
	// B runs on a copy of the table in a namespace of its own: the daemon
	// would (rightly) restore its table after the CLI's change.
	std::string refNs = "psd-bref-" + std::to_string(::getpid());
	// The copy comes from the offline `portslicectl dump` of the same file, so
	// that the daemon's peak RSS below is that of holding the plan; a Dump()
	// over the bus (the whole table as text) is measured after, on its own.
	timedRun({"sh", "-c", std::string(PSD_BUILD_ROOT) + "/src/ctl/portslicectl dump --config " +
				      (dir / "fleet.toml").string() + " > " + (dir / "table.nft").string()},
		 log);
	timedRun({"ip", "netns", "add", refNs}, log);
	timedRun({"ip", "netns", "exec", refNs, "nft", "-f", (dir / "table.nft").string()}, log);
	std::vector<std::string> nsenter = {"nsenter", "--net=/run/netns/" + refNs, "nft"};
	auto nft = [&](std::vector<std::string> args) {
		args.insert(args.begin(), nsenter.begin(), nsenter.end());
		return timedRun(args, log);
	};
	std::vector<double> gain, loss, addB, delB;
	// Pair i moves slice k = i + 1 (owned by server k + 1): s1 has never
	// held it, so the gain is a plain gain, not the end of s1's own drain.
	for (int i = 0; i < pairs; ++i) {
		uint32_t k = 1 + static_cast<uint32_t>(i) % 30;
		std::string element = "{ " + first + " . " + std::to_string(1024 + k * 2048) + "-" +
				      std::to_string(1024 + k * 2048 + 2047) + " }";
		addB.push_back(nft({"add", "element", "inet", "portslice", "my_ports", element}));
		delB.push_back(nft({"delete", "element", "inet", "portslice", "my_ports", element}));
		std::string owner = "s" + std::to_string(k + 1);
		for (const std::string &to : {std::string("s1"), owner}) {
			auto t0 = Clock::now();
			proxy.SetSliceOwner(first, k, to);
			(to == "s1" ? gain : loss).push_back(std::chrono::duration<double>(Clock::now() - t0).count());
		}
	}
	timedRun({"ip", "netns", "del", refNs}, log);
	// The daemon's own account of each SetSliceOwner (its log): plan, persist, apply.
	// The daemon's log splits each call: plan, persist, apply (and the apply
	// into nft, conntrack and XDP).
	struct Split {
		std::vector<double> plan, persist, apply, nft, conntrack, xdp;
	} split[2]; // gain, loss
	{
		std::ifstream in(log);
		for (std::string line; std::getline(in, line);) {
			size_t at = line.find("; ms: plan ");
			if (at == std::string::npos || line.find(": slice ") == std::string::npos)
				continue;
			int which = line.find(" to s1 ") != std::string::npos ? 0 : 1; // else back to its owner
			double p = 0, f = 0, y = 0;
			if (std::sscanf(line.c_str() + at, "; ms: plan %lf, persist %lf, apply %lf", &p, &f, &y) == 3) {
				split[which].plan.push_back(p);
				split[which].persist.push_back(f);
				split[which].apply.push_back(y);
			}
		}
		// The backend's lines (nft, conntrack, XDP), in call order: gain, loss, gain, ...
		std::ifstream again(log);
		std::vector<std::array<double, 3>> parts;
		for (std::string line; std::getline(again, line);) {
			size_t at = line.find(": slice move, ");
			if (at == std::string::npos)
				continue;
			size_t m = line.find(" bytes, "), cm = line.find("deleted ("), xm = line.find("slice synced (");
			parts.push_back({m == std::string::npos ? 0 : std::atof(line.c_str() + m + 8),
					 cm == std::string::npos ? 0 : std::atof(line.c_str() + cm + 9),
					 xm == std::string::npos ? 0 : std::atof(line.c_str() + xm + 14)});
		}
		for (size_t i = 0; i < parts.size(); i++) {
			Split &sp = split[i % 2]; // gain, loss, gain, ...
			sp.nft.push_back(parts[i][0]);
			sp.conntrack.push_back(parts[i][1]);
			sp.xdp.push_back(parts[i][2]);
		}
	}
	// With a drain (the daemon's default), a loss starts one (s1 keeps the
	// slice's flows) and the next gain ends it: both walk the conntrack table.
	std::string holding = peakRss(daemon);
	auto dumpStart = Clock::now();
	size_t dumpBytes = proxy.Dump().size();
	double dumpSeconds = std::chrono::duration<double>(Clock::now() - dumpStart).count();
	std::printf("SetSliceOwner %u sources (%zu elements, xdp %s, drain %s), D-Bus round trip, median of %d pairs:\n"
		    "  gain (s1 takes the slice): %.2f ms; nft add element %.1f ms; ratio %.4f\n"
		    "  loss (s1 gives it back): %.2f ms; nft delete element %.1f ms; ratio %.4f\n"
		    "  daemon start to applied %.2f s; daemon peak RSS after start and the calls:%s\n"
		    "  then one Dump() (%zu bytes, %.2f s): daemon peak RSS%s\n",
		    sources, elements, xdp ? "on" : "off",
		    drainSeconds.empty() ? "default" : (drainSeconds + " s").c_str(), pairs, median(gain) * 1e3,
		    median(addB) * 1e3,
		    median(gain) / median(addB), median(loss) * 1e3, median(delB) * 1e3, median(loss) / median(delB),
		    startSeconds, holding.c_str(), dumpBytes, dumpSeconds, peakRss(daemon).c_str());
	for (int w = 0; w < 2; w++) {
		const Split &sp = split[w];
		if (sp.plan.empty() || sp.nft.empty())
			continue;
		std::printf("  inside the daemon, %s (median): plan %.2f ms, persist (write, fsync, rename; state on %s) "
			    "%.2f ms, apply %.2f ms = nft delta %.2f + conntrack clean-up %.2f + XDP slice %.2f\n",
			    w == 0 ? "gain" : "loss", median(sp.plan), tmpfsState ? "tmpfs" : "disk", median(sp.persist),
			    median(sp.apply), median(sp.nft), median(sp.conntrack), median(sp.xdp));
	}

	::kill(daemon, SIGTERM);
	wait(daemon);
	::kill(bus, SIGTERM);
	wait(bus);
	if (xdp)
		timedRun({"umount", (dir / "bpf").string()}, log);
	if (tmpfsState)
		fs::remove_all(stateDir);
	if (std::getenv("PSD_BENCH_KEEP"))
		std::printf("kept %s\n", dir.c_str());
	else
		if (!std::getenv("KEEP")) fs::remove_all(dir); else std::printf("kept %s\n", dir.c_str());
	return 0;
}
