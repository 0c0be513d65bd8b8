// SPDX-License-Identifier: MIT
// portslicectl's online commands (status, reload, set-owner, stats) over D-Bus, through the proxy generated from dbus/*.xml.
#include "ctl/online.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>

#include <sdbus-c++/sdbus-c++.h>

#include "common/json.h"
#include "common/version.h"
#include "ctl/fleet.h"
#include "service/metrics.h"
#include "dbus/egress1_proxy.h"

namespace portslice::ctl {

namespace {

constexpr const char *kBusName = "org.portslice.Egress1";
constexpr const char *kObjectPath = "/org/portslice/Egress1";

// Exit codes a script can tell apart; documented in docs/service.md.
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitNotRunning = 3;
constexpr int kExitDenied = 4;

class Egress1 final : public sdbus::ProxyInterfaces<org::portslice::Egress1_proxy> {
public:
	explicit Egress1(sdbus::IConnection &connection) : ProxyInterfaces(connection, kBusName, kObjectPath)
	{
		registerProxy();
	}
	~Egress1() { unregisterProxy(); }

private:
	void onApplied(const uint64_t &) override {}
	void onApplyFailed(const std::string &) override {}
};

struct StatRow {
	std::string kind, name, counter;
	uint64_t value = 0;
};
using StatRows = std::vector<StatRow>;

// Turn a D-Bus error into a sentence and an exit code.
int explain(const sdbus::Error &e, const std::string &command)
{
	const std::string &name = e.getName();
	if (name == "org.freedesktop.DBus.Error.ServiceUnknown" || name == "org.freedesktop.DBus.Error.NameHasNoOwner" ||
	    name == "org.freedesktop.DBus.Error.NoReply" || name == "org.freedesktop.systemd1.NoSuchUnit") {
		std::cerr << "portslicectl: portsliced is not running (nobody owns " << kBusName
			  << " on the system bus); start it with `systemctl start portsliced`\n";
		return kExitNotRunning;
	}
	if (name == "org.freedesktop.DBus.Error.AccessDenied") {
		std::cerr << "portslicectl: access denied for `" << command
			  << "`: reload and set-owner need root; status and stats need root or membership of group "
			     "portslice\n";
		return kExitDenied;
	}
	if (name.starts_with("org.portslice.Error.")) {
		std::cerr << "portslicectl: " << command << ": " << e.getMessage() << "\n";
		return kExitFailed;
	}
	std::cerr << "portslicectl: " << command << ": " << name << ": " << e.getMessage() << "\n";
	return kExitFailed;
}

int status(Egress1 &proxy, const OnlineOptions &options)
{
	std::string state = proxy.State();
	uint64_t generation = proxy.Generation();
	std::string server = proxy.Server();
	std::string error = proxy.LastError();
	if (options.json) {
		JsonWriter w;
		w.beginObject().key("state").value(state).key("generation").value(generation);
		w.key("server").value(server).key("last_error");
		error.empty() ? w.null() : w.value(error);
		printFleetLink(options, &w);
		w.endObject();
		std::cout << w.str() << "\n";
	} else {
		std::cout << "state:      " << state << "\n"
			  << "generation: " << generation << "\n"
			  << "server:     " << server << "\n"
			  << "last error: " << (error.empty() ? "none" : error) << "\n";
		printFleetLink(options, nullptr);
	}
	return state == "applied" ? 0 : kExitFailed;
}

void printPrometheus(const StatRows &rows, const std::string &server, const std::string &state)
{
	std::vector<service::StatRow> serviceRows;
	for (const auto &[kind, name, what, value] : rows)
		serviceRows.push_back({kind, name, what, value});
	std::cout << service::prometheusText({PORTSLICE_VERSION, server, state}, serviceRows);
}

void printJson(const StatRows &rows)
{
	JsonWriter json;
	json.beginArray();
	for (const auto &[kind, name, what, value] : rows)
		json.beginObject().key("kind").value(kind).key("name").value(name).key("counter").value(what)
			.key("value").value(value).endObject();
	json.endArray();
	std::cout << json.str() << "\n";
}

void printTable(const StatRows &rows)
{
	size_t kindWidth = 4, nameWidth = 4, counterWidth = 7;
	for (const auto &[kind, name, what, value] : rows) {
		kindWidth = std::max(kindWidth, kind.size());
		nameWidth = std::max(nameWidth, name.size());
		counterWidth = std::max(counterWidth, what.size());
	}
	auto pad = [](const std::string &text, size_t width) { return text + std::string(width - text.size() + 2, ' '); };
	std::cout << pad("KIND", kindWidth) << pad("NAME", nameWidth) << pad("COUNTER", counterWidth) << "VALUE\n";
	for (const auto &[kind, name, what, value] : rows)
		std::cout << pad(kind, kindWidth) << pad(name, nameWidth) << pad(what, counterWidth) << value << "\n";
}

int stats(Egress1 &proxy, const OnlineOptions &options)
{
	StatRows rows;
	for (const auto &row : proxy.Stats())
		rows.push_back({row.get<0>(), row.get<1>(), row.get<2>(), row.get<3>()});
	if (options.json)
		printJson(rows);
	else if (options.prometheus)
		printPrometheus(rows, proxy.Server(), proxy.State());
	else
		printTable(rows);
	return 0;
}

int reload(Egress1 &proxy)
{
	try {
		uint64_t generation = proxy.Reload();
		std::cout << "reloaded: generation " << generation << "\n";
		return 0;
	} catch (const sdbus::Error &e) {
		if (!e.getName().starts_with("org.portslice.Error."))
			throw;
		std::cerr << "portslicectl: reload failed; the applied state stays:\n" << e.getMessage() << "\n";
		return kExitFailed;
	}
}

int setOwner(Egress1 &proxy, const OnlineOptions &options)
{
	uint64_t generation = proxy.SetSliceOwner(options.address, options.slice, options.server);
	std::cout << "slice " << options.slice << " of " << options.address << " now belongs to " << options.server
		  << ": generation " << generation << "\n";
	return 0;
}

} // namespace

int runOnline(const OnlineOptions &options)
{
	const std::string &command = options.command;
	std::unique_ptr<sdbus::IConnection> connection;
	try {
		connection = sdbus::createSystemBusConnection();
	} catch (const sdbus::Error &e) {
		std::cerr << "portslicectl: cannot connect to the system bus (" << e.getMessage()
			  << "); is dbus running, and DBUS_SYSTEM_BUS_ADDRESS right if set?\n";
		return kExitNotRunning;
	}
	try {
		Egress1 proxy(*connection);
		if (command == "status")
			return status(proxy, options);
		if (command == "reload")
			return reload(proxy);
		if (command == "set-owner")
			return setOwner(proxy, options);
		if (command == "stats")
			return stats(proxy, options);
		std::cerr << "portslicectl: unknown online command " << command << "\n";
		return kExitUsage;
	} catch (const sdbus::Error &e) {
		return explain(e, command);
	}
}

} // namespace portslice::ctl
