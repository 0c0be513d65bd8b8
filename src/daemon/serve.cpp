// SPDX-License-Identifier: MIT
// One thread, one poll loop: the bus, signals (signalfd), nftables events and a timer for the drift check and drain deadlines.
#include "daemon/serve.h"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdarg>
#include <arpa/inet.h>
#include <cstdio>
#include <cstring>
#include <libmnl/libmnl.h>
#include <linux/netfilter/nf_tables.h>
#include <malloc.h>
#include <memory>
#include <fcntl.h>
#include <functional>
#include <poll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <sdbus-c++/sdbus-c++.h>
#ifdef PORTSLICE_HAVE_XDP
#include <bpf/libbpf.h>
#endif

#include "common/handle.h"
#include "daemon/nft_monitor.h"
#include "nft/model.h"
#include "nft/render.h"
#include "nft/wire.h"
#include "dbus/bus_object.h"
#include "common/log.h"
#include "common/version.h"
#include "service/metrics.h"
#include "service/service.h"

namespace portslice::daemon {

namespace {

#ifdef PORTSLICE_HAVE_XDP
// libbpf's own lines (a warning while loading the forwarder, the kernel's
// message for a tc request) go to the daemon's log with a priority, not
// bare on standard error; its debug lines are dropped, as by default.
int libbpfLine(libbpf_print_level level, const char *format, va_list args)
{
	if (level == LIBBPF_DEBUG)
		return 0;
	char text[1024];
	int n = std::vsnprintf(text, sizeof(text), format, args);
	if (n < 0)
		return n;
	std::string_view line(text);
	while (!line.empty() && line.back() == '\n')
		line.remove_suffix(1);
	if (!line.empty())
		log::write(level == LIBBPF_WARN ? log::Priority::Warning : log::Priority::Info, "libbpf: " + std::string(line));
	return n;
}
#endif

// A full apply frees its netlink batch and a Dump() its text, tens of MB at
// 10,000 sources, and the heap keeps such memory resident until trimmed.
// Given back at the end of a turn (the replies are out by then) whenever
// the resident size grew by more than 8 MiB since the last trim: a move
// grows it by nothing, so it costs a move one pread of /proc/self/statm.
class FreedMemory {
public:
	void giveBack(bool always = false)
	{
		size_t now = residentBytes();
		if (now == 0)
			return; // /proc unreadable: no figure to go by
		if (always || now > trimmed_ + kSlack) {
			malloc_trim(0);
			now = residentBytes();
		}
		trimmed_ = always ? now : std::min(trimmed_, now);
	}

private:
	static constexpr size_t kSlack = 8u << 20;
	size_t residentBytes()
	{
		char text[128] = {};
		if (!statm_.isValid() || ::pread(statm_.get(), text, sizeof(text) - 1, 0) <= 0)
			return 0;
		unsigned long size = 0, resident = 0;
		if (std::sscanf(text, "%lu %lu", &size, &resident) != 2)
			return 0;
		return resident * static_cast<size_t>(::sysconf(_SC_PAGESIZE));
	}
	UniqueFd statm_{::open("/proc/self/statm", O_RDONLY | O_CLOEXEC)};
	size_t trimmed_ = SIZE_MAX;
};

constexpr uint8_t kFamilyInet = 1; // NFPROTO_INET
constexpr const char *kTable = "portslice";

// Logs to stderr (the journal under systemd), forwards signals to the bus and STATUS= to systemd.
class DaemonListener final : public service::Listener {
public:
	void attach(dbus::BusObject *bus, const service::Service *service)
	{
		bus_ = bus;
		service_ = service;
	}

	void applied(uint64_t generation) override
	{
		if (bus_)
			bus_->announceApplied(generation);
		notifyStatus();
	}
	void applyFailed(const std::string &error) override
	{
		if (bus_)
			bus_->announceApplyFailed(error);
		notifyStatus();
	}
	void propertiesChanged(const std::vector<std::string> &names) override
	{
		if (bus_)
			bus_->announceChanged(names);
		notifyStatus();
		// A failure (LastError, the failure count) or a recovery: the
		// metrics file says so before the caller of the change has its reply.
		if (stateChanged_ && std::ranges::any_of(names, [](const std::string &n) {
			    return n == "State" || n == "LastError";
		    }))
			stateChanged_();
	}
	void onStateChange(std::function<void()> call) { stateChanged_ = std::move(call); }
	void log(const std::string &line) override { log::write(log::Priority::Info, line); }
	void logEvent(int priority, const std::string &line,
		      const std::vector<std::pair<std::string, std::string>> &fields) override
	{
		std::vector<log::Field> f;
		for (const auto &[name, value] : fields)
			f.push_back({name, value});
		log::write(static_cast<log::Priority>(priority), line, f);
	}
	// Each applied change of the ownership journal, through the log: to the
	// systemd journal with the record's fields under systemd, otherwise one
	// "<5>" line on standard error that names the same fields.
	void ownershipChanged(const std::vector<journal::Change> &changes) override
	{
		for (const journal::Change &c : changes) {
			std::string address = c.key ? Ipv4{c.key->address}.str() : "";
			std::string slice = c.key ? std::to_string(c.key->slice) : "";
			std::string uid = c.uid ? std::to_string(*c.uid) : "";
			// The record's own time (the systemd journal's is when it was sent, after the apply).
			std::string time = journal::formatTime(c.timeUs);
			std::string message = c.key ? "slice " + slice + " of " + address + ": " + (c.old.empty() ? "nobody" : c.old) +
							      " -> " + (c.now.empty() ? "nobody" : c.now) + " (" + c.why + ")"
						    : "applied file sha256 " + c.hash;
			message += ", generation " + std::to_string(c.generation) + ", at " + time;
			if (c.uid)
				message += ", uid " + uid;
			// MESSAGE_ID: the 128-bit id of portslice ownership changes (journalctl MESSAGE_ID=...).
			log::write(log::Priority::Notice, message,
				   {{"MESSAGE_ID", "5c1d7e0a9b3f4e2d8a6c0b1e2f3a4d5c"},
				    {"OWNERSHIP_TIME", time},
				    {"GENERATION", std::to_string(c.generation)},
				    {"ADDRESS", address},
				    {"SLICE", slice},
				    {"OLD_OWNER", c.old},
				    {"NEW_OWNER", c.now},
				    {"WHY", c.why},
				    {"FILE_SHA256", c.hash},
				    {"CALLER_UID", uid}});
		}
		if (bus_)
			bus_->announceOwners(changes);
	}

	void notifyStatus()
	{
		if (!service_)
			return;
		std::string status = "STATUS=" + std::string(service::stateName(service_->state())) + ", generation " +
				     std::to_string(service_->generation());
		if (!service_->lastError().empty()) {
			std::string first = service_->lastError().substr(0, service_->lastError().find('\n'));
			status += ": " + first;
		}
		sd_notify(0, status.c_str());
	}

private:
	dbus::BusObject *bus_ = nullptr;
	const service::Service *service_ = nullptr;
	std::function<void()> stateChanged_;
};

// The metrics file of --metrics-file, from the same rows as Stats().
void writeMetrics(const std::string &path, service::Service &service)
{
	service::Answer<std::vector<service::StatRow>> rows = service.stats();
	std::vector<service::StatRow> none;
	std::string text = service::prometheusText(
		{PORTSLICE_VERSION, service.server(), std::string(service::stateName(service.state()))},
		rows.ok() ? rows.value() : none);
	if (Status s = service::writeFileAtomically(path, text); !s)
		log::Line(log::Priority::Warning) << "portsliced: metrics file: " << s.error().message();
}

Result<UniqueFd> blockSignals()
{
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGHUP);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	if (sigprocmask(SIG_BLOCK, &mask, nullptr) < 0)
		return Error(errno, "blocking signals");
	UniqueFd fd(signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC));
	if (!fd.isValid())
		return Error(errno, "creating signalfd");
	return fd;
}

Result<UniqueFd> periodicTimer(std::chrono::milliseconds interval)
{
	UniqueFd fd(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
	if (!fd.isValid())
		return Error(errno, "creating timerfd");
	itimerspec spec{};
	spec.it_interval.tv_sec = interval.count() / 1000;
	spec.it_interval.tv_nsec = (interval.count() % 1000) * 1000000;
	spec.it_value = spec.it_interval;
	if (timerfd_settime(fd.get(), 0, &spec, nullptr) < 0)
		return Error(errno, "arming timerfd");
	return fd;
}

// The elements a foreign commit added or deleted, named as audit names them
// (decoded from the commit's own events by the sets' declarations in the
// applied plan, so naming them costs the size of the commit, not of the
// sets): ": set my_ports: element ... missing from the kernel; ..." (at
// most kShown, then how many more), or "" when none can be named.
std::string namedEdits(const service::Service &service, const std::vector<ElementEdit> &edits)
{
	constexpr size_t kShown = 10;
	const plan::Plan *plan = service.appliedPlan();
	if (!plan)
		return "";
	nft::TableModel model = nft::declarations(*plan);
	std::vector<std::string> lines;
	size_t total = 0;
	for (const ElementEdit &edit : edits) {
		const nft::Set *set = model.find(edit.set);
		if (!set || edit.elements.size() < MNL_ATTR_HDRLEN)
			continue;
		// The nests of NFTA_SET_ELEM_LIST_ELEMENTS, as the kernel sent them.
		std::vector<nft::WireElem> wire;
		auto nested = [](const nlattr *parent, const auto &take) {
			const auto *a = static_cast<const nlattr *>(mnl_attr_get_payload(parent));
			int left = static_cast<int>(mnl_attr_get_payload_len(parent));
			while (mnl_attr_ok(a, left)) {
				take(a);
				left -= static_cast<int>(MNL_ALIGN(a->nla_len));
				a = reinterpret_cast<const nlattr *>(reinterpret_cast<const char *>(a) + MNL_ALIGN(a->nla_len));
			}
		};
		auto value = [](const nlattr *a) {
			const auto *inner = static_cast<const nlattr *>(mnl_attr_get_payload(a));
			return std::string(static_cast<const char *>(mnl_attr_get_payload(inner)),
					   mnl_attr_get_payload_len(inner));
		};
		bool rbtree = set->interval && set->key.size() == 1; // ranges as start and end elements
		nested(reinterpret_cast<const nlattr *>(edit.elements.data()), [&](const nlattr *elem) {
			if (lines.size() >= kShown && !rbtree) {
				total++; // enough named: count the rest
				return;
			}
			nft::WireElem w;
			nested(elem, [&](const nlattr *attr) {
				switch (mnl_attr_get_type(attr)) {
				case NFTA_SET_ELEM_FLAGS: w.flags = ntohl(mnl_attr_get_u32(attr)); break;
				case NFTA_SET_ELEM_KEY: w.key = value(attr); break;
				case NFTA_SET_ELEM_KEY_END: w.keyEnd = value(attr); break;
				case NFTA_SET_ELEM_DATA: {
					// A verdict map's data is a verdict: its chain.
					const auto *inner = static_cast<const nlattr *>(mnl_attr_get_payload(attr));
					if (mnl_attr_get_type(inner) == NFTA_DATA_VERDICT)
						nested(inner, [&](const nlattr *v) {
							if (mnl_attr_get_type(v) == NFTA_VERDICT_CHAIN)
								w.chain = mnl_attr_get_str(v);
							else if (mnl_attr_get_type(v) == NFTA_VERDICT_CODE)
								w.gotoChain = static_cast<int32_t>(ntohl(mnl_attr_get_u32(v))) == NFT_GOTO;
						});
					else
						w.data = value(attr);
					break;
				}
				case NFTA_SET_ELEM_OBJREF: w.objref = mnl_attr_get_str(attr); break;
				default: break;
				}
			});
			// Only the first few are decoded; the rest are counted.
			bool end = (w.flags & NFT_SET_ELEM_INTERVAL_END) != 0;
			if (!(rbtree && end))
				total++;
			if (lines.size() < kShown && wire.size() < 2 * kShown + 2)
				wire.push_back(std::move(w));
		});
		if (wire.empty())
			continue;
		size_t malformed = 0;
		std::vector<nft::Element> named = nft::decodeElements(*set, wire, &malformed);
		std::string object = (set->kind == nft::SetKind::Set ? "set " : "map ") + set->name;
		for (const nft::Element &e : named)
			if (lines.size() < kShown)
				lines.push_back(object + ": element " + nft::formatElement(*set, e) +
						(edit.added ? " in the kernel, not in the plan" : " missing from the kernel"));
	}
	if (lines.empty())
		return "";
	std::string out = ": ";
	for (size_t i = 0; i < lines.size(); i++)
		out += (i ? "; " : "") + lines[i];
	if (total > lines.size())
		out += "; and " + std::to_string(total - lines.size()) + " more";
	return out;
}

} // namespace

int serve(const ServeOptions &options, service::Backend &backend)
{
	// Blocks of 128 KiB and more (a full apply's netlink batch pages and
	// element vectors, a Dump()'s text) are mapped apart and unmapped when
	// freed. By default glibc raises that threshold after the first such
	// free, up to 32 MiB, and the heap then keeps what a full apply frees
	// resident beside what comes next (the XDP sync's map windows at the
	// end of the first apply). Not for --apply-once, which exits at once:
	// the page faults of fresh mappings cost it 5-10 % of its time.
	mallopt(M_MMAP_THRESHOLD, 128 * 1024);
#ifdef PORTSLICE_HAVE_XDP
	libbpf_set_print(libbpfLine);
#endif
	Result<UniqueFd> signals = blockSignals();
	if (!signals) {
		log::Line(log::Priority::Err) << "portsliced: " << signals.error().message();
		return 1;
	}
	Result<UniqueFd> timer = periodicTimer(options.checkInterval);
	if (!timer) {
		log::Line(log::Priority::Err) << "portsliced: " << timer.error().message();
		return 1;
	}
	Result<NftMonitor> monitor = NftMonitor::open(kFamilyInet, kTable);
	if (!monitor) {
		log::Line(log::Priority::Err) << "portsliced: " << monitor.error().message();
		return 1;
	}

	std::unique_ptr<sdbus::IConnection> connection;
	try {
		connection = sdbus::createSystemBusConnection();
	} catch (const sdbus::Error &e) {
		log::Line(log::Priority::Err) << "portsliced: cannot connect to the system bus (" << e.getMessage()
			  << "); is dbus running, and DBUS_SYSTEM_BUS_ADDRESS right if set?";
		return 1;
	}

	DaemonListener listener;
	service::Service service({options.configPath, options.stateDir, options.drain, {}, options.journalDays}, backend,
				 listener);
	dbus::BusObject bus(*connection, service);
	listener.attach(&bus, &service);

	// Apply before taking the name: a caller that finds the name finds a state.
	// The unit is active only after the first apply: a file that cannot be
	// applied at start is an exit 1 with the errors in the journal.
	service::Answer<uint64_t> started = service.start();
	bus.flushAnnouncements();
	if (!started.ok()) {
		log::Line(log::Priority::Err) << "portsliced: nothing applied: " << started.failure().message;
		return 1;
	}
	FreedMemory freed;
	freed.giveBack(true); // the start's full apply
	// The metrics file too is written before the name is taken: a caller
	// that finds the name finds the state in it.
	auto metricsWritten = std::chrono::steady_clock::now();
	uint64_t metricsGeneration = service.generation();
	auto rewriteMetrics = [&] {
		writeMetrics(options.metricsFile, service);
		metricsWritten = std::chrono::steady_clock::now();
		metricsGeneration = service.generation();
	};
	if (!options.metricsFile.empty()) {
		rewriteMetrics();
		listener.onStateChange(rewriteMetrics);
	}
	try {
		connection->requestName(dbus::kBusName);
	} catch (const sdbus::Error &e) {
		log::Line(log::Priority::Err) << "portsliced: cannot own " << dbus::kBusName << " on the system bus (" << e.getMessage()
			  << "); is another portsliced running, and is dbus/org.portslice.Egress1.conf installed?";
		return 1;
	}
	sd_notify(0, "READY=1");
	listener.notifyStatus();

	// Read the table's events and answer a foreign change. `afterOwnWork`:
	// read right after this turn's own commits, so lost events (the socket
	// overflowed) are most likely ours: compare the table's comment. Read
	// after waiting idle, lost events are someone else's large commit (a set
	// of ours flushed, say): restore in full. True when it repaired.
	auto readEvents = [&](bool afterOwnWork) {
		Result<std::optional<ForeignChange>> change = monitor->read();
		if (!change) {
			log::Line(log::Priority::Err) << "portsliced: " << change.error().message();
			return false;
		}
		if (!*change)
			return false;
		if (!options.repair) {
			// Left as it is: State says degraded while it differs
			// from the plan, applied again once it is equal. Also when
			// read right after a call of this turn: a change by hand
			// whose events come in the same turn as a call (an audit
			// asked for just after it) is no more ours to undo. Events
			// lost right after our own commits are most likely ours: the
			// cheap check (the comment and the generation) then.
			if ((*change)->lost() && afterOwnWork)
				service.leaveDrift("", false);
			else
				service.leaveDrift((*change)->lost() ? "" : (*change)->str(), true);
			return true;
		}
		if ((*change)->lost() && (*change)->foreignLost)
			service.restore("nftables events were lost, another process's commits among them");
		else if ((*change)->lost() && afterOwnWork)
			service.repairDrift("nftables events were lost");
		else if ((*change)->lost())
			service.restore("nftables events were lost while nothing of ours was applied");
		else if ((*change)->onlyElements)
			// Only elements changed: name them as audit would, then
			// put them back as they were (a delta), not the whole table.
			service.restoreBy("table inet portslice changed by " + (*change)->str() +
						  namedEdits(service, (*change)->edits),
					  "undoing its " + std::to_string((*change)->edits.size()) + " element changes",
					  [&] { return undoElementEdits((*change)->edits); });
		else if ((*change)->onlyRules && service.appliedPlan()) {
			// Only rules changed: rewrite the rules of those chains.
			std::string names;
			for (const std::string &c : (*change)->chains)
				names += (names.empty() ? "" : ", ") + c;
			service.restoreBy("table inet portslice changed by " + (*change)->str() + ": rules of chain " + names,
					  "rewriting the rules of " + std::to_string((*change)->chains.size()) + " chain" +
						  ((*change)->chains.size() == 1 ? "" : "s"),
					  [&] { return rewriteChains(nft::declarations(*service.appliedPlan()), (*change)->chains); });
		} else
			service.restore("table inet portslice changed by " + (*change)->str());
		return true;
	};

	// The start's own apply: its events are ours.
	for (int turn = 0; turn < 3 && readEvents(true); turn++) {
	}
	for (;;) {
		sdbus::IConnection::PollData bus_poll = connection->getEventLoopPollData();
		pollfd fds[4] = {
			{bus_poll.fd, bus_poll.events, 0},
			{signals->get(), POLLIN, 0},
			{monitor->fd(), POLLIN, 0},
			{timer->get(), POLLIN, 0},
		};
		int n = ::poll(fds, 4, bus_poll.getPollTimeout());
		if (n < 0 && errno != EINTR) {
			log::Line(log::Priority::Err) << "portsliced: poll: " << std::strerror(errno);
			return 1;
		}
		if (fds[1].revents & POLLIN) {
			signalfd_siginfo info;
			while (::read(signals->get(), &info, sizeof(info)) == sizeof(info)) {
				if (info.ssi_signo == SIGHUP) {
					sd_notify(0, "RELOADING=1");
					log::Line(log::Priority::Notice) << "portsliced: SIGHUP: reloading " << options.configPath;
					(void)service.reload();
					sd_notify(0, "READY=1");
					listener.notifyStatus();
				} else {
					// The table stays: egress must keep working while the daemon restarts.
					sd_notify(0, "STOPPING=1");
					log::Line(log::Priority::Notice) << "portsliced: " << strsignal(static_cast<int>(info.ssi_signo))
						  << ": exiting, the applied table stays in place";
					return 0;
				}
			}
		}
		if (fds[2].revents & POLLIN)
			(void)readEvents(false);
		if (fds[3].revents & POLLIN) {
			uint64_t expirations;
			(void)!::read(timer->get(), &expirations, sizeof(expirations));
			if (options.repair)
				service.repairDrift("periodic check");
			else
				service.leaveDrift("", false);
			// A drain deadline passed: the previous owner is dropped (one generation).
			service.expireDrains();
			// A new UTC day: the journal rotates and expires even when nothing changes.
			service.rotateJournal();
		}
		// Each call's signals go out after its reply.
		while (connection->processPendingRequest())
			bus.flushAnnouncements();
		// The events of what we applied in this turn, read now: an overflow
		// among them is our own large commit's. A repair is a commit of
		// ours too (bounded: someone may be fighting us).
		for (int turn = 0; turn < 3 && readEvents(true); turn++) {
		}
		// After this turn's calls, so that a new generation is in the file
		// in the same turn (a failure or a recovery is there before its reply).
		if (!options.metricsFile.empty() &&
		    (std::chrono::steady_clock::now() - metricsWritten >= options.metricsInterval ||
		     service.generation() != metricsGeneration))
			rewriteMetrics();
		bus.flushAnnouncements(); // those of a reload, a repair or a drain's end
		freed.giveBack();
	}
}

} // namespace portslice::daemon
