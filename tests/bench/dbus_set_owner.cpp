// SPDX-License-Identifier: MIT
// Benchmark: one SetSliceOwner over D-Bus against a running portsliced vs the nft CLI changing one element of the same table.
//
// dbus_set_owner [--sources 10000] [--pairs 5] [--no-xdp] [--tmpfs-state] [--drain-seconds S] [--drift-pairs 3] [--daemon PATH]
// dbus_set_owner --batch [--sources 10000]: instead, one SetSliceOwners of a fleet failover (s31's slice of every
// address to the 30 others, s1 included, no drain) and of its return home (all back to s31, drained).
// Needs root. The process moves into a network namespace of its own (it dies
// with the process), starts a private dbus-daemon and portsliced there, and
// prints the figures; it asserts nothing. 10,000 sources make about 375k
// elements. The three move cases of docs/performance.md ("Generated fleets"), peak RSS, a Dump(), then
// drift repair (element deleted, sets flushed, a rule deleted, table deleted).
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
#include <sys/mount.h>
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

// docs/performance.md "Generated fleets": 31 servers, N shared addresses of
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
// Undone on a failure too: the bpffs mount (in the host's mount namespace)
// and the state directory on /dev/shm; the work directory is kept for its log.
std::string gBpfMount, gShmDir;

[[noreturn]] void fail(const std::string &why)
{
	std::fprintf(stderr, "%s\n", why.c_str());
	for (pid_t pid : gChildren)
		::kill(pid, SIGKILL);
	for (pid_t pid : gChildren)
		::waitpid(pid, nullptr, 0);
	if (!gBpfMount.empty())
		::umount2(gBpfMount.c_str(), MNT_DETACH);
	if (!gShmDir.empty())
		fs::remove_all(gShmDir);
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

// The largest set of the table, its largest stateless map, and the set
// whose element the reference (the nft CLI) changes. Past 256 stateless
// inside addresses the generated fleet (blocks of 128 ports in slices of
// 2,048 from port 1024) takes the unit form (nft/model.h, portForm):
// sl_egress_K and sl_return_K are hash maps of a sixteenth of the blocks
// each, my_blocks (two blocks a slice) is the largest set, and my_ports
// stays empty (the CLI's change of it still reads the whole table).
struct Largest {
	const char *kind;
	std::string name;
	std::string stateless;
	uint32_t statelessElements;
};
Largest largestSets(uint32_t sources)
{
	return {"set", "my_blocks", "sl_egress_0", sources};
}
const char *const kReferenceSet = "my_ports";

std::string statusField(pid_t pid, const std::string &field)
{
	std::ifstream in("/proc/" + std::to_string(pid) + "/status");
	for (std::string line; std::getline(in, line);)
		if (line.starts_with(field + ":"))
			return line.substr(field.size() + 1);
	return "?";
}
std::string peakRss(pid_t pid) { return statusField(pid, "VmHWM"); }
std::string rss(pid_t pid) { return statusField(pid, "VmRSS"); }

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
	void onSliceOwnerChanged(const std::string &, const uint32_t &, const std::string &, const std::string &,
				 const uint64_t &) override
	{
	}
};

} // namespace

int main(int argc, char **argv)
{
	uint32_t sources = 10000;
	int pairs = 5;
	int driftPairs = 3;
	bool batch = false;
	bool xdp = true;
	bool tmpfsState = false; // state directory on /dev/shm: the fsync of the overlay costs nothing
	// Long enough that no drain ends during the run (an ended drain is a
	// generation of its own, not one of the cases measured).
	std::string drainSeconds = "3600";
	std::string daemonPath = std::string(PSD_BUILD_ROOT) + "/src/daemon/portsliced"; // another build's, to compare
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
		else if (a == "--daemon" && i + 1 < argc)
			daemonPath = argv[++i];
		else if (a == "--drift-pairs" && i + 1 < argc)
			driftPairs = std::stoi(argv[++i]);
		else if (a == "--batch")
			batch = true;
		else {
			std::fprintf(stderr, "usage: dbus_set_owner [--sources N] [--pairs K] [--no-xdp] [--tmpfs-state] "
					     "[--drain-seconds S] [--drift-pairs K] [--daemon PATH] [--batch]\n");
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
	if (xdp)
		gBpfMount = (dir / "bpf").string();
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
		gShmDir = shm;
	}
	std::vector<std::string> daemonArgs = {daemonPath, "--config",
					       (dir / "fleet.toml").string(), "--state-dir", stateDir};
	if (xdp) {
		daemonArgs.push_back("--xdp-pin-dir");
		daemonArgs.push_back((dir / "bpf" / "portslice").string());
	} else {
		daemonArgs.push_back("--no-xdp");
	}
	daemonArgs.push_back("--drain-seconds");
	daemonArgs.push_back(drainSeconds);
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
	// Elements of the first full apply, as the daemon logged it ("table
	// created in 15 transactions, +N", or "table replaced, +N").
	size_t elements = 0;
	{
		std::ifstream in(log);
		for (std::string line; std::getline(in, line) && elements == 0;) {
			if (line.find("table created") == std::string::npos && line.find("table replaced") == std::string::npos)
				continue;
			size_t at = line.find(", +");
			if (at != std::string::npos)
				elements = std::stoul(line.substr(at + 3));
		}
	}

	if (batch) {
		// What portslice-fleetd hands over when s31 dies and when it comes back.
		std::vector<sdbus::Struct<std::string, uint32_t, std::string>> away, home;
		for (uint32_t i = 0; i < sources; i++) {
			std::string shared = Ipv4{(198u << 24 | 18u << 16) + i}.str();
			away.emplace_back(shared, 30u, "s" + std::to_string(1 + i % 30));
			home.emplace_back(shared, 30u, std::string("s31"));
		}
		auto t0 = Clock::now();
		uint64_t g1 = proxy.SetSliceOwners(away, 0);
		double failover = std::chrono::duration<double>(Clock::now() - t0).count();
		t0 = Clock::now();
		uint64_t g2 = proxy.SetSliceOwners(home, 60);
		double back = std::chrono::duration<double>(Clock::now() - t0).count();
		std::printf("SetSliceOwners, %u sources (%zu elements, xdp %s), one call each, D-Bus round trip:\n", sources,
			    elements, xdp ? "on" : "off");
		std::printf("  failover: %u slices of s31 to the 30 others (s1 gains %u), no drain: %.3f s (%.1f us a slice), "
			    "generation %llu\n",
			    sources, (sources + 29) / 30, failover, failover * 1e6 / sources, static_cast<unsigned long long>(g1));
		std::printf("  return home: the %u slices back to s31, drained 60 s: %.3f s (%.1f us a slice), generation %llu\n",
			    sources, back, back * 1e6 / sources, static_cast<unsigned long long>(g2));
		std::printf("  daemon start (full apply): %.2f s; peak RSS %s\n", startSeconds, peakRss(daemon).c_str());
		std::ifstream in(log);
		for (std::string line; std::getline(in, line);)
			if (line.find("moving ") != std::string::npos || line.find("applied generation") != std::string::npos)
				std::printf("  log: %s\n", line.c_str());
		for (pid_t pid : gChildren)
			::kill(pid, SIGTERM);
		return 0;
	}

	// B runs on a copy of the table in a namespace of its own: the daemon
	// would (rightly) restore its table after the CLI's change. The copy
	// comes from the offline `portslicectl dump` of the same file, so that
	// the daemon's peak RSS below is that of holding what a move needs; a
	// Dump() over the bus (the whole table as text) is measured after.
	std::string refNs = "psd-bref-" + std::to_string(::getpid());
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
	auto addressOf = [](uint32_t index) { return Ipv4{(198u << 24 | 18u << 16) + index}.str(); };
	auto sliceText = [](uint32_t k) {
		return std::to_string(1024 + k * 2048) + "-" + std::to_string(1024 + k * 2048 + 2047);
	};
	auto call = [&](const std::string &shared, uint32_t slice, const std::string &to) {
		auto t0 = Clock::now();
		proxy.SetSliceOwner(shared, slice, to);
		return std::chrono::duration<double>(Clock::now() - t0).count();
	};
	// The three move cases (docs/performance.md), each on addresses of its own (pair i):
	// gain: s1 takes slice k of address 1+i from s(k+1) (s1 keeps its slice 0);
	// loss: s1's only slice of address n/2+i (slice 0) goes to s2;
	// other: slice 5 of address n/4+i goes from s6 to s7 (s1 only learns of it).
	// Each is undone by a second call (timed too: giving back a slice that is
	// not the last, and a first slice arriving). A = the call, B = the nft CLI
	// changing an element of my_ports on the copy,
	// alternating A B A B.
	enum { Gain, GiveBack, Loss, FirstBack, Other, OtherBack, Cases };
	const char *caseNames[Cases] = {"gain (s1 takes a second slice of an address)",
					"give back (s1 loses a slice that is not its last)",
					"loss (s1's only slice of an address goes)",
					"first slice back (s1 gets a first slice of an address)",
					"other (a move between two other servers)",
					"other, back"};
	std::vector<double> a[Cases], addB, delB, otherB, listB, coldFloor;
	const Largest largest = largestSets(sources);
	for (int i = 0; i < pairs; ++i) { // --pairs 0: drift repair only
		uint32_t k = 1 + static_cast<uint32_t>(i) % 30;
		uint32_t gi = 1 + static_cast<uint32_t>(i), li = sources / 2 + static_cast<uint32_t>(i),
			 oi = sources / 4 + static_cast<uint32_t>(i);
		std::string g = addressOf(gi), l = addressOf(li), o = addressOf(oi);
		a[Gain].push_back(call(g, k, "s1"));
		addB.push_back(nft({"add", "element", "inet", "portslice", kReferenceSet, "{ " + g + " . " + sliceText(k) + " }"}));
		a[GiveBack].push_back(call(g, k, "s" + std::to_string(k + 1)));
		nft({"delete", "element", "inet", "portslice", kReferenceSet, "{ " + g + " . " + sliceText(k) + " }"});
		a[Loss].push_back(call(l, 0, "s2"));
		nft({"add", "element", "inet", "portslice", kReferenceSet, "{ " + l + " . " + sliceText(0) + " }"});
		delB.push_back(nft({"delete", "element", "inet", "portslice", kReferenceSet, "{ " + l + " . " + sliceText(0) + " }"}));
		a[FirstBack].push_back(call(l, 0, "s1"));
		a[Other].push_back(call(o, 5, "s7"));
		otherB.push_back(nft({"add", "element", "inet", "portslice", kReferenceSet, "{ " + o + " . " + sliceText(5) + " }"}));
		a[OtherBack].push_back(call(o, 5, "s6"));
		nft({"delete", "element", "inet", "portslice", kReferenceSet, "{ " + o + " . " + sliceText(5) + " }"});
		// The bus alone right after an nft command, as cold as the calls
		// that follow one (not before the gain: it would warm it).
		auto cold = Clock::now();
		(void)proxy.State();
		coldFloor.push_back(std::chrono::duration<double>(Clock::now() - cold).count());
		// The first step of any nft CLI change of a large set: listing it.
		std::vector<std::string> list = nsenter;
		for (const std::string &arg : {std::string("list"), std::string(largest.kind), std::string("inet"),
					       std::string("portslice"), largest.name})
			list.push_back(arg);
		listB.push_back(timedRun(list, "/dev/null")); // its lines are not the log's
	}
	timedRun({"ip", "netns", "del", refNs}, log);
	// The floor under every call: a D-Bus round trip that does nothing (the
	// State property), as many times as the calls.
	std::vector<double> floorCalls;
	for (int i = 0; i < std::max(pairs, 1) * Cases; ++i) {
		auto t0 = Clock::now();
		(void)proxy.State();
		floorCalls.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
	}
	std::string holding = peakRss(daemon);
	std::string resident = rss(daemon);
	auto dumpStart = Clock::now();
	size_t dumpBytes = proxy.Dump().size();
	double dumpSeconds = std::chrono::duration<double>(Clock::now() - dumpStart).count();
	std::string afterDump = peakRss(daemon);

	std::printf("SetSliceOwner, %u sources (%zu elements, xdp %s, drain %s), D-Bus round trip, median of %d pairs:\n",
		    sources, elements, xdp ? "on" : "off", drainSeconds.c_str(), pairs);
	std::printf("  a property get (State), the D-Bus round trip alone: %.2f ms; right after an nft command: %.2f ms\n",
		    median(floorCalls) * 1e3, coldFloor.empty() ? 0.0 : median(coldFloor) * 1e3);
	const std::vector<double> *refs[Cases] = {&addB, &addB, &delB, &delB, &otherB, &otherB};
	const char *refNames[Cases] = {"nft add element", "nft add element", "nft delete element",
				       "nft delete element", "nft add element", "nft add element"};
	for (int c = 0; c < Cases && pairs > 0; ++c) {
		std::vector<double> ratios, listRatios;
		for (size_t i = 0; i < a[c].size(); ++i) {
			ratios.push_back(a[c][i] / (*refs[c])[i]);
			listRatios.push_back(a[c][i] / listB[i]);
		}
		std::printf("  %-56s %8.2f ms; %s %6.1f ms, ratio %.4f; nft list %s %s %6.1f ms, ratio %.4f\n",
			    caseNames[c], median(a[c]) * 1e3, refNames[c], median(*refs[c]) * 1e3, median(ratios),
			    largest.kind, largest.name.c_str(), median(listB) * 1e3, median(listRatios));
	}
	std::printf("  daemon start to applied %.2f s; daemon peak RSS after start and %d calls of each case:%s "
		    "(resident now:%s)\n  then one Dump() (%zu bytes, %.2f s): daemon peak RSS%s\n",
		    startSeconds, pairs, holding.c_str(), resident.c_str(), dumpBytes, dumpSeconds, afterDump.c_str());
	// The daemon's own account of each SetSliceOwner (its log): plan, persist, apply.
	{
		std::ifstream in(log);
		std::vector<std::string> lines;
		for (std::string line; std::getline(in, line);)
			if (line.find("; ms: plan ") != std::string::npos)
				lines.push_back(line);
		std::printf("  inside the daemon (its log), the calls of the last pair:\n");
		for (size_t i = lines.size() >= Cases ? lines.size() - Cases : 0; i < lines.size(); ++i)
			std::printf("    %s\n", lines[i].c_str());
	}
	std::fflush(stdout);

	// Drift repair: an outside change to the live table until the daemon has
	// restored it (its log says "restored generation"), against a full apply
	// (the deleted table, which the daemon applies whole), alternating.
	if (driftPairs > 0) {
		// Counted in what the log gained since the last look (it is long).
		std::ifstream logIn(log);
		size_t restored = 0;
		std::string partial;
		auto restoredCount = [&] {
			logIn.clear();
			for (std::string line; std::getline(logIn, line);) {
				if (logIn.eof()) { // no newline yet: the rest comes later
					partial += line;
					break;
				}
				line = partial + line;
				partial.clear();
				if (line.find("restored generation") != std::string::npos)
					restored++;
			}
			return restored;
		};
		// From the end of the nft command (its change is committed: the
		// daemon cannot act before) until the daemon has restored the table.
		std::vector<double> changeSeconds; // the nft commands' own time
		auto repair = [&](std::vector<std::string> change) -> double {
			size_t before = restoredCount();
			change.insert(change.begin(), "nft");
			changeSeconds.push_back(timedRun(change, log));
			auto t0 = Clock::now();
			while (std::chrono::duration<double>(Clock::now() - t0).count() < 300) {
				if (restoredCount() > before) {
					double took = std::chrono::duration<double>(Clock::now() - t0).count();
					// A restore of the whole table sends the daemon an event
					// per element (420,000 here), more than its socket holds;
					// a change made while it reads them loses its events too,
					// and the daemon then replaces the table whole (correct,
					// but not the repair measured). Operators do not edit
					// within seconds of a restore: neither does this.
					std::this_thread::sleep_for(std::chrono::seconds(3));
					return took;
				}
				std::this_thread::sleep_for(std::chrono::milliseconds(1));
			}
			fail("the daemon did not restore the table within 300 s (see " + log + ")");
		};
		std::string last = addressOf(sources - 1);
		std::vector<double> element, flushSmall, flushLarge, rule, table;
		// The handle of egress's `counter name ip saddr map @count_sl` rule (it changes with every restore).
		auto ruleHandle = [&] {
			std::string listing;
			if (FILE *p = ::popen("nft -a list chain inet portslice egress", "r")) {
				char buf[4096];
				for (size_t n; (n = std::fread(buf, 1, sizeof(buf), p)) > 0;)
					listing.append(buf, n);
				::pclose(p);
			}
			const std::string tag = "map @count_sl # handle ";
			size_t at = listing.find(tag);
			if (at == std::string::npos)
				fail("no count_sl rule in chain egress");
			return listing.substr(at + tag.size(), listing.find('\n', at) - at - tag.size());
		};
		for (int i = 0; i < driftPairs; ++i) {
			element.push_back(repair({"delete", "element", "inet", "portslice", "my_blocks",
						  "{ " + last + " . 1024 }"}));
			table.push_back(repair({"delete", "table", "inet", "portslice"}));
			flushSmall.push_back(repair({"flush", "set", "inet", "portslice", "my_blocks"}));
			table.push_back(repair({"delete", "table", "inet", "portslice"}));
			flushLarge.push_back(repair({"flush", "map", "inet", "portslice", largest.stateless}));
			table.push_back(repair({"delete", "table", "inet", "portslice"}));
			rule.push_back(repair({"delete", "rule", "inet", "portslice", "egress", "handle", ruleHandle()}));
			table.push_back(repair({"delete", "table", "inet", "portslice"}));
		}
		std::vector<double> re, rs, rl, rr;
		for (int i = 0; i < driftPairs; ++i) {
			re.push_back(element[i] / table[4 * i]);
			rs.push_back(flushSmall[i] / table[4 * i + 1]);
			rl.push_back(flushLarge[i] / table[4 * i + 2]);
			rr.push_back(rule[i] / table[4 * i + 3]);
		}
		// my_blocks: s1's slice 0 of each address, two 1024-port blocks.
		std::printf("Drift repair (from the end of the nft change until restored; the nft commands took %.1f ms, "
			    "median), median of %d pairs against the deleted table "
			    "(a full apply) %.1f ms:\n"
			    "  element deleted (my_blocks) %8.1f ms, ratio %.4f\n"
			    "  set flushed (my_blocks, %u elements) %8.1f ms, ratio %.4f\n"
			    "  set flushed (%s, %u elements) %8.1f ms, ratio %.4f\n"
			    "  rule deleted (egress: counter name ip saddr map @count_sl) %8.1f ms, ratio %.4f\n"
			    "  daemon peak RSS after the repairs:%s\n",
			    median(changeSeconds) * 1e3, driftPairs, median(table) * 1e3, median(element) * 1e3, median(re), 2 * sources,
			    median(flushSmall) * 1e3, median(rs), largest.stateless.c_str(), largest.statelessElements,
			    median(flushLarge) * 1e3, median(rl), median(rule) * 1e3, median(rr),
			    peakRss(daemon).c_str());
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
