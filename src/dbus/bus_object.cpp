// SPDX-License-Identifier: MIT
// D-Bus edge of the service: Answers become replies, Failures become org.portslice.Error.* exceptions.
#include "dbus/bus_object.h"

#include <fstream>
#include <iostream>

#include "common/log.h"

namespace portslice::dbus {

using service::Answer;
using service::faultName;
using service::StatRow;

namespace {

template<class T>
const T &replyOrThrow(const Answer<T> &answer)
{
	if (!answer.ok())
		throw sdbus::Error(std::string(faultName(answer.failure().fault)), answer.failure().message);
	return answer.value();
}

} // namespace

BusObject::BusObject(sdbus::IConnection &connection, Service &service)
	: AdaptorInterfaces(connection, kObjectPath), service_(service)
{
	registerAdaptor();
}

BusObject::~BusObject()
{
	unregisterAdaptor();
}

// A signal that cannot be sent must not take the daemon down: the state is applied either way.
void BusObject::announce(std::string what, std::function<void()> emit)
{
	announcements_.push_back([what = std::move(what), emit = std::move(emit)] {
		try {
			emit();
		} catch (const sdbus::Error &e) {
			log::Line(log::Priority::Warning) << "emitting " << what << ": " << e.getMessage();
		}
	});
}

void BusObject::announceApplied(uint64_t generation)
{
	announce("Applied", [this, generation] { emitApplied(generation); });
}

void BusObject::announceApplyFailed(const std::string &error)
{
	announce("ApplyFailed", [this, error] { emitApplyFailed(error); });
}

void BusObject::announceChanged(const std::vector<std::string> &names)
{
	// As the XML annotations say: Generation and State emit their values,
	// Server an invalidation, LastError nothing (it is read with State).
	std::vector<std::string> emitted;
	for (const std::string &n : names)
		if (n == "Generation" || n == "State" || n == "Server")
			emitted.push_back(n);
	if (!emitted.empty())
		announce("PropertiesChanged", [this, emitted] { getObject().emitPropertiesChangedSignal(kInterface, emitted); });
}

void BusObject::flushAnnouncements()
{
	std::vector<std::function<void()>> due;
	due.swap(announcements_);
	for (const auto &announce : due)
		announce();
}

// Who asked for a change, in the journal (CALLER_UID): the bus says which uid sent the call.
void BusObject::logCaller(const char *member)
{
	std::optional<uint32_t> caller = callerUid();
	// The bus would not tell: log the call without it.
	std::string uid = caller ? std::to_string(*caller) : "unknown";
	log::write(log::Priority::Notice, std::string(member) + " called by uid " + uid,
		   {{"CALLER_UID", uid}, {"DBUS_MEMBER", member}});
}

void BusObject::announceOwners(const std::vector<journal::Change> &changes)
{
	for (const journal::Change &c : changes) {
		if (!c.key || c.drainEnd || c.old == c.now)
			continue;
		announce("SliceOwnerChanged", [this, address = Ipv4{c.key->address}.str(), slice = c.key->slice,
					       old = c.old, now = c.now, generation = c.generation] {
			emitSliceOwnerChanged(address, slice, old, now, generation);
		});
	}
}

std::optional<uint32_t> BusObject::callerUid()
{
	try {
		const sdbus::Message *message = getObject().getCurrentlyProcessedMessage();
		if (!message)
			return std::nullopt;
		std::string sender = message->getSender();
		if (!sender.empty() && sender == lastSender_)
			return lastUid_;
		auto uid = static_cast<uint32_t>(message->getCredsUid());
		lastSender_ = std::move(sender);
		lastUid_ = uid;
		return uid;
	} catch (const sdbus::Error &) {
	}
	return std::nullopt;
}

namespace {

// Whether the sender of `message` is portslice-fleetd: the kernel's name of
// the calling process (/proc/PID/comm, "portslice-fleet", the first 15
// characters of the program's name). The why of the journal is a label for
// people, not a permission: any root caller may call SetSliceOwners.
bool fromFleetd(const sdbus::Message *message)
{
	if (!message)
		return false;
	try {
		std::ifstream comm("/proc/" + std::to_string(message->getCredsPid()) + "/comm");
		std::string name;
		return std::getline(comm, name) && name == "portslice-fleet";
	} catch (const sdbus::Error &) {
	}
	return false;
}

// The caller's uid goes with the change into the journal, and no further.
class CallerScope {
public:
	CallerScope(Service &service, std::optional<uint32_t> uid) : service_(service) { service_.setCaller(uid); }
	~CallerScope() { service_.setCaller(std::nullopt); }
	CallerScope(const CallerScope &) = delete;
	CallerScope &operator=(const CallerScope &) = delete;

private:
	Service &service_;
};

void putAnswer(std::map<std::string, std::string> &f, const journal::PortAnswer &a, const std::string &prefix)
{
	f[prefix + "server"] = a.server;
	f[prefix + "source"] = a.source;
	f[prefix + "mode"] = a.mode;
	f[prefix + "inside"] = a.inside;
	f[prefix + "inside_prefix"] = a.insidePrefix;
}

// A past moment's drain: the previous owner's answer as it kept its flows,
// its deadline, and when the drain began and ended as the journal applied it.
void putDrain(std::map<std::string, std::string> &f, const journal::AnswerAt &at, const std::string &prefix)
{
	if (at.draining.server.empty())
		return;
	putAnswer(f, at.draining, prefix + "draining_");
	f[prefix + "draining_until"] = std::to_string(at.answer.drainUntil);
	f[prefix + "draining_from"] = std::to_string(at.drainFrom);
	f[prefix + "draining_ended"] = std::to_string(at.drainTo);
}

} // namespace

uint64_t BusObject::Reload()
{
	logCaller("Reload");
	CallerScope caller(service_, callerUid());
	return replyOrThrow(service_.reload());
}

uint64_t BusObject::SetSliceOwner(const std::string &address, const uint32_t &slice, const std::string &server)
{
	logCaller("SetSliceOwner");
	CallerScope caller(service_, callerUid());
	return replyOrThrow(service_.setSliceOwner(address, slice, server));
}

uint64_t BusObject::SetSliceOwners(const std::vector<sdbus::Struct<std::string, uint32_t, std::string>> &moves,
				   const uint32_t &drainSeconds)
{
	logCaller("SetSliceOwners");
	std::vector<service::OwnerMove> list;
	list.reserve(moves.size());
	for (const auto &m : moves)
		list.push_back({m.get<0>(), m.get<1>(), m.get<2>()});
	return moveSlices(list, drainSeconds);
}

uint64_t BusObject::moveSlices(const std::vector<service::OwnerMove> &moves, uint32_t drainSeconds)
{
	CallerScope caller(service_, callerUid());
	service_.setMovesWhy(fromFleetd(getObject().getCurrentlyProcessedMessage()) ? "fleet" : "set-owner");
	return replyOrThrow(service_.setSliceOwners(moves, drainSeconds));
}

uint64_t BusObject::SetSliceOwnersDrains(
	const std::vector<sdbus::Struct<std::string, uint32_t, std::string, uint32_t>> &moves)
{
	logCaller("SetSliceOwnersDrains");
	std::vector<service::OwnerMove> list;
	list.reserve(moves.size());
	for (const auto &m : moves)
		list.push_back({m.get<0>(), m.get<1>(), m.get<2>(), m.get<3>()});
	return moveSlices(list, 0);
}

std::vector<sdbus::Struct<std::string, uint32_t, std::string, std::string, uint64_t>> BusObject::Owners()
{
	auto answer = service_.owners();
	std::vector<sdbus::Struct<std::string, uint32_t, std::string, std::string, uint64_t>> rows;
	for (const service::OwnerRow &r : replyOrThrow(answer))
		rows.emplace_back(r.address, r.slice, r.owner, r.previous, r.until);
	return rows;
}

std::tuple<std::string, std::string, uint64_t, uint64_t> BusObject::OwnerAt(const std::string &address,
									     const uint16_t &port, const uint64_t &when)
{
	auto answer = service_.ownerAt(address, port, when);
	const journal::AnswerAt &at = replyOrThrow(answer);
	return {at.answer.server, at.answer.inside, static_cast<uint64_t>(at.from), static_cast<uint64_t>(at.until)};
}

std::map<std::string, std::string> BusObject::OwnerDetails(const std::string &address, const uint16_t &port,
							    const uint64_t &when)
{
	std::map<std::string, std::string> f;
	if (when == 0) {
		auto answer = service_.ownerNow(address, port);
		const service::LiveOwner &live = replyOrThrow(answer);
		if (!live.now.slice)
			throw sdbus::Error(std::string(service::faultName(service::Fault::NotFound)),
					   "port " + std::to_string(port) + " of " + address + " is outside its usable slices");
		putAnswer(f, live.now, "");
		f["slice"] = std::to_string(*live.now.slice);
		f["generation"] = std::to_string(service_.generation());
		if (live.draining) {
			putAnswer(f, *live.draining, "draining_");
			f["draining_until"] = std::to_string(live.now.drainUntil);
		}
	} else {
		std::vector<journal::AnswerAt> within;
		auto answer = service_.ownerAt(address, port, when, &within);
		const journal::AnswerAt &at = replyOrThrow(answer);
		putAnswer(f, at.answer, "");
		f["slice"] = std::to_string(*at.answer.slice);
		f["generation"] = std::to_string(at.generation);
		f["from"] = std::to_string(at.from);
		f["until"] = std::to_string(at.until);
		putDrain(f, at, "");
		// The answer changed within that second: each one, to the microsecond.
		if (!within.empty())
			f["within_second"] = std::to_string(within.size());
		for (size_t k = 0; k < within.size(); k++) {
			std::string prefix = "within" + std::to_string(k) + "_";
			const journal::AnswerAt &w = within[k];
			putAnswer(f, w.answer, prefix);
			f[prefix + "slice"] = w.answer.slice ? std::to_string(*w.answer.slice) : "";
			f[prefix + "generation"] = std::to_string(w.generation);
			f[prefix + "from_us"] = std::to_string(w.fromUs);
			f[prefix + "until_us"] = std::to_string(w.untilUs);
			if (!w.unknown.empty())
				f[prefix + "unknown"] = w.unknown;
			putDrain(f, w, prefix);
		}
	}
	return f;
}

std::vector<sdbus::Struct<uint64_t, uint64_t, std::string, uint32_t, std::string, std::string, std::string,
			  std::string, std::string>>
BusObject::History(const uint64_t &since)
{
	auto answer = service_.history(static_cast<int64_t>(std::min<uint64_t>(since, INT64_MAX / 1000000)) * 1000000);
	std::vector<sdbus::Struct<uint64_t, uint64_t, std::string, uint32_t, std::string, std::string, std::string,
				  std::string, std::string>>
		rows;
	for (const journal::Change &c : replyOrThrow(answer))
		rows.emplace_back(static_cast<uint64_t>(c.timeUs), c.generation, c.key ? Ipv4{c.key->address}.str() : "",
				  c.key ? c.key->slice : 0, c.old, c.now, c.why, c.uid ? std::to_string(*c.uid) : "", c.damaged.empty() ? c.hash : c.damaged);
	return rows;
}

std::vector<std::string> BusObject::Audit()
{
	return replyOrThrow(service_.audit());
}

std::string BusObject::Plan()
{
	return replyOrThrow(service_.planJson());
}

std::string BusObject::Dump()
{
	// Moved out, not copied: the text is 17 MB at 10,000 sources, and the
	// reply copies it once more.
	Answer<std::string> text = service_.dump();
	replyOrThrow(text);
	return std::move(text.value());
}

std::tuple<std::string, std::string> BusObject::Owner(const std::string &address, const uint16_t &port)
{
	auto answer = service_.owner(address, port);
	const auto &[server, inside] = replyOrThrow(answer);
	return {server, inside};
}

std::vector<sdbus::Struct<std::string, std::string, std::string, uint64_t>> BusObject::Stats()
{
	auto answer = service_.stats();
	std::vector<sdbus::Struct<std::string, std::string, std::string, uint64_t>> rows;
	for (const StatRow &r : replyOrThrow(answer))
		rows.emplace_back(r.kind, r.name, r.counter, r.value);
	return rows;
}

std::string BusObject::Server()
{
	return service_.server();
}

uint64_t BusObject::Generation()
{
	return service_.generation();
}

std::string BusObject::State()
{
	return std::string(stateName(service_.state()));
}

std::string BusObject::LastError()
{
	return service_.lastError();
}

} // namespace portslice::dbus
