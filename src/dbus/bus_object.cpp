// SPDX-License-Identifier: MIT
// D-Bus edge of the service: Answers become replies, Failures become org.portslice.Error.* exceptions.
#include "dbus/bus_object.h"

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
void BusObject::announceApplied(uint64_t generation)
{
	try {
		emitApplied(generation);
	} catch (const sdbus::Error &e) {
		log::Line(log::Priority::Warning) << "emitting Applied: " << e.getMessage();
	}
}

void BusObject::announceApplyFailed(const std::string &error)
{
	try {
		emitApplyFailed(error);
	} catch (const sdbus::Error &e) {
		log::Line(log::Priority::Warning) << "emitting ApplyFailed: " << e.getMessage();
	}
}

void BusObject::announceChanged(const std::vector<std::string> &names)
{
	// As the XML annotations say: Generation and State emit their values,
	// Server an invalidation, LastError nothing (it is read with State).
	std::vector<std::string> emitted;
	for (const std::string &n : names)
		if (n == "Generation" || n == "State" || n == "Server")
			emitted.push_back(n);
	if (emitted.empty())
		return;
	try {
		getObject().emitPropertiesChangedSignal(kInterface, emitted);
	} catch (const sdbus::Error &e) {
		log::Line(log::Priority::Warning) << "emitting PropertiesChanged: " << e.getMessage();
	}
}

// Who asked for a change, in the journal (CALLER_UID): the bus says which uid sent the call.
void BusObject::logCaller(const char *member)
{
	std::string uid = "unknown";
	try {
		if (const sdbus::Message *m = getObject().getCurrentlyProcessedMessage())
			uid = std::to_string(m->getCredsUid());
	} catch (const sdbus::Error &) {
		// The bus would not tell: log the call without it.
	}
	log::write(log::Priority::Notice, std::string(member) + " called by uid " + uid,
		   {{"CALLER_UID", uid}, {"DBUS_MEMBER", member}});
}

uint64_t BusObject::Reload()
{
	logCaller("Reload");
	return replyOrThrow(service_.reload());
}

uint64_t BusObject::SetSliceOwner(const std::string &address, const uint32_t &slice, const std::string &server)
{
	logCaller("SetSliceOwner");
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
	return replyOrThrow(service_.setSliceOwners(list, drainSeconds));
}

std::string BusObject::Plan()
{
	return replyOrThrow(service_.planJson());
}

std::string BusObject::Dump()
{
	return replyOrThrow(service_.dump());
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
