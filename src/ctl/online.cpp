// SPDX-License-Identifier: MIT
// portslicectl's online commands (status, reload, set-owner, stats, owner, history, audit) over D-Bus, through the proxy generated from dbus/*.xml.
#include "ctl/online.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>

#include <sdbus-c++/sdbus-c++.h>

#include "common/json.h"
#include "common/net.h"
#include "common/version.h"
#include "ctl/fleet.h"
#include "service/metrics.h"
#include "dbus/egress1_proxy.h"
#include "journal/journal.h"

namespace portslice::ctl {

namespace {

constexpr const char *kBusName = "org.portslice.Egress1";
constexpr const char *kObjectPath = "/org/portslice/Egress1";

// Exit codes a script can tell apart; documented in docs/portslicectl.8.scd (EXIT STATUS).
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
	void onSliceOwnerChanged(const std::string &, const uint32_t &, const std::string &, const std::string &,
				 const uint64_t &) override
	{
	}
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
		std::cout << w.str(); // it ends its line
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

// Stats() rows grouped by what they count, numbers as numbers: the names that
// join two things in a row ("SOURCE ADDRESS", "ADDRESS/SLICE") come apart.
// Rows of a kind this reader does not know go to "other" as they are.
class StatsJson {
public:
	// One object per key, in the order of first appearance.
	struct Group {
		std::vector<std::pair<std::string, uint64_t>> fields;
		std::vector<std::pair<std::string, Group>> children; // per address under a source, per slice under an address
		void set(const std::string &field, uint64_t value)
		{
			for (auto &[f, v] : fields)
				if (f == field) {
					v = value;
					return;
				}
			fields.emplace_back(field, value);
		}
		Group &child(const std::string &key)
		{
			for (auto &[k, g] : children)
				if (k == key)
					return g;
			return children.emplace_back(key, Group{}).second;
		}
	};

	explicit StatsJson(const StatRows &rows)
	{
		for (const auto &[kind, name, what, value] : rows) {
			if (kind == "daemon") {
				if (what == "version")
					version_ = name;
				else
					daemon_.set(what, value);
			} else if (kind == "source") {
				group(sources_, name).set(what, value);
			} else if (kind == "guard" && name == "other") {
				guardOther_ = value;
			} else if (kind == "guard") {
				group(sources_, name).set("guard_" + what, value);
			} else if (kind == "source_address" && name.rfind(' ') != std::string::npos) {
				size_t space = name.rfind(' ');
				group(sources_, name.substr(0, space)).child(name.substr(space + 1)).set(what, value);
			} else if (kind == "address") {
				group(addresses_, name).set(what, value);
			} else if (kind == "slice" && name.rfind('/') != std::string::npos) {
				size_t slash = name.rfind('/');
				group(addresses_, name.substr(0, slash)).child(name.substr(slash + 1)).set(what, value);
			} else if (kind == "xdp") {
				group(xdp_, name).set(what, value);
			} else if (kind == "zone") {
				group(zones_, name).set(what, value);
			} else {
				other_.push_back({kind, name, what, value});
			}
		}
	}

	std::string text() const
	{
		JsonWriter w;
		w.beginObject().key("daemon").beginObject();
		if (!version_.empty())
			w.key("version").value(version_);
		fields(w, daemon_);
		w.endObject();
		w.key("sources").beginArray();
		for (const auto &[name, g] : sources_) {
			w.beginObject().key("source").value(name);
			fields(w, g);
			w.key("addresses").beginArray();
			for (const auto &[address, a] : g.children) {
				w.beginObject().key("address").value(address);
				fields(w, a);
				w.endObject();
			}
			w.endArray().endObject();
		}
		w.endArray().key("addresses").beginArray();
		for (const auto &[address, g] : addresses_) {
			w.beginObject().key("address").value(address);
			fields(w, g);
			w.key("slices").beginArray();
			for (const auto &[slice, sl] : g.children) {
				w.beginObject().key("slice");
				number(w, slice);
				fields(w, sl);
				w.endObject();
			}
			w.endArray().endObject();
		}
		w.endArray().key("guard_other_drops").value(guardOther_).key("xdp").beginArray();
		for (const auto &[verdict, g] : xdp_) {
			w.beginObject().key("verdict").value(verdict);
			fields(w, g);
			w.endObject();
		}
		w.endArray().key("zones").beginArray();
		for (const auto &[zone, g] : zones_) {
			w.beginObject().key("zone");
			number(w, zone);
			fields(w, g);
			w.endObject();
		}
		w.endArray().key("other").beginArray();
		for (const auto &[kind, name, what, value] : other_)
			w.beginObject().key("kind").value(kind).key("name").value(name).key("counter").value(what)
				.key("value").value(value).endObject();
		w.endArray().endObject();
		return w.str();
	}

private:
	using Groups = std::vector<std::pair<std::string, Group>>;
	static Group &group(Groups &groups, const std::string &key)
	{
		for (auto &[k, g] : groups)
			if (k == key)
				return g;
		return groups.emplace_back(key, Group{}).second;
	}
	static void fields(JsonWriter &w, const Group &g)
	{
		for (const auto &[field, value] : g.fields)
			w.key(field).value(value);
	}
	// A slice or zone number as a number (as text if it is none).
	static void number(JsonWriter &w, const std::string &text)
	{
		uint64_t n = 0;
		auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
		if (ec == std::errc() && end == text.data() + text.size())
			w.value(n);
		else
			w.value(text);
	}

	std::string version_;
	Group daemon_;
	Groups sources_, addresses_, xdp_, zones_;
	uint64_t guardOther_ = 0;
	StatRows other_;
};

void printJson(const StatRows &rows)
{
	std::cout << StatsJson(rows).text(); // it ends its line
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

// "198.51.100.1:7200" -> address and port.
bool splitAddressPort(const std::string &text, std::string &address, uint16_t &port)
{
	size_t colon = text.rfind(':');
	if (colon == std::string::npos || !Ipv4::parse(std::string_view(text).substr(0, colon)))
		return false;
	uint32_t value = 0;
	const char *begin = text.data() + colon + 1, *end = text.data() + text.size();
	auto [p, ec] = std::from_chars(begin, end, value);
	if (ec != std::errc() || p != end || value == 0 || value > 65535)
		return false;
	address = text.substr(0, colon);
	port = static_cast<uint16_t>(value);
	return true;
}

std::string field(const std::map<std::string, std::string> &f, const std::string &key)
{
	auto it = f.find(key);
	return it == f.end() ? std::string() : it->second;
}

// "server s2, source warp-gb (conntrack: inside ...)", as the offline command says it.
std::string describe(const std::map<std::string, std::string> &f, const std::string &prefix)
{
	std::string server = field(f, prefix + "server");
	if (server.empty())
		return "owned by no server";
	std::string text = "server " + server;
	std::string source = field(f, prefix + "source");
	if (source.empty())
		return text + ", not assigned to any source";
	if (field(f, prefix + "mode") == "stateless")
		return text + ", source " + source + ", inside " + field(f, prefix + "inside") + " (stateless)";
	std::string prefixText = field(f, prefix + "inside_prefix");
	if (field(f, prefix + "inside").empty())
		return text + ", source " + source + " (conntrack" +
		       (prefixText.empty() ? "" : ": inside prefix " + prefixText) + "; the connection table of " +
		       server + " knows which host)";
	return text + ", source " + source + " (conntrack: inside " + field(f, prefix + "inside") +
	       (prefixText.empty() ? "" : " of " + prefixText) + "; the connection table of " + server +
	       " knows which host)";
}

int owner(Egress1 &proxy, const OnlineOptions &options)
{
	const std::string &target = options.argument;
	const std::string &at = options.at;
	bool json = options.json;
	std::string address;
	uint16_t port = 0;
	if (!splitAddressPort(target, address, port)) {
		std::cerr << "portslicectl owner: expected ADDRESS:PORT, e.g. 198.51.100.1:40000, not '" << target << "'\n";
		return kExitUsage;
	}
	uint64_t when = 0;
	int64_t askedUs = 0;
	bool exact = false; // a fraction of a second given: that moment, to the microsecond
	if (!at.empty()) {
		std::optional<int64_t> us = journal::parseTime(at);
		if (!us || *us < 1000000) {
			std::cerr << "portslicectl owner: --at wants RFC 3339 (2026-11-29T09:40:00Z) or Unix seconds, not '"
				  << at << "'\n";
			return kExitUsage;
		}
		askedUs = *us;
		when = static_cast<uint64_t>(*us / 1000000);
		exact = at.find('.') != std::string::npos;
	}
	std::map<std::string, std::string> f = proxy.OwnerDetails(address, port, when);
	// The daemon answers for the end of the second; when the answer changed
	// within it, it lists each answer of that second to the microsecond, and
	// a moment given to a fraction of a second picks its own.
	size_t within = f.count("within_second") ? std::stoul(field(f, "within_second")) : 0;
	auto withinPrefix = [](size_t k) { return "within" + std::to_string(k) + "_"; };
	std::string chosen; // the prefix of the answer told: "" the end of the second
	if (exact) {
		for (size_t k = 0; k < within; k++) {
			int64_t from = std::stoll(field(f, withinPrefix(k) + "from_us"));
			int64_t until = std::stoll(field(f, withinPrefix(k) + "until_us"));
			if (from <= askedUs && (until == 0 || askedUs < until))
				chosen = withinPrefix(k);
		}
		if (!field(f, chosen + "unknown").empty()) {
			std::cerr << "portslicectl owner: reading the ownership journal: " << field(f, chosen + "unknown")
				  << ": who held the port at " << journal::formatTime(askedUs) << " is not known\n";
			return kExitFailed;
		}
	}
	std::string moment = exact ? journal::formatTime(askedUs) : journal::formatSeconds(static_cast<int64_t>(when));
	auto usTime = [&](const std::string &key) {
		std::string value = field(f, key);
		return value.empty() || value == "0" ? std::string() : journal::formatTime(std::stoll(value));
	};
	if (json) {
		// The shape of the offline `owner --json`, with the daemon's fields after it.
		auto answer = [&](JsonWriter &w, const std::string &prefix) {
			std::string server = field(f, prefix + "server"), source = field(f, prefix + "source");
			std::string inside = field(f, prefix + "inside"), mode = field(f, prefix + "mode");
			w.key("server");
			server.empty() ? (void)w.null() : (void)w.value(server);
			w.key("source");
			source.empty() ? (void)w.null() : (void)w.value(source);
			w.key("inside");
			if (inside.empty()) {
				w.null();
			} else {
				size_t dash = inside.find('-');
				w.beginObject().key("first").value(inside.substr(0, dash)).key("last")
					.value(dash == std::string::npos ? inside : inside.substr(dash + 1)).endObject();
			}
			w.key("nat");
			mode.empty() ? (void)w.null() : (void)w.value(mode);
		};
		auto number = [&](const std::string &key) { return static_cast<uint64_t>(std::stoull(field(f, key))); };
		auto seconds = [&](const std::string &key) { // Unix seconds of a *_us field
			return static_cast<uint64_t>(std::stoll(field(f, key)) / 1000000);
		};
		JsonWriter w;
		w.beginObject().key("address").value(address).key("port").value(port);
		w.key("slice").value(number(chosen + "slice"));
		answer(w, chosen);
		w.key("inside_prefix");
		field(f, chosen + "inside_prefix").empty() ? (void)w.null() : (void)w.value(field(f, chosen + "inside_prefix"));
		w.key("generation").value(number(chosen + "generation"));
		w.key("at");
		when ? (void)w.value(moment) : (void)w.null();
		w.key("from");
		when ? (void)w.value(chosen.empty() ? number("from") : seconds(chosen + "from_us")) : (void)w.null();
		w.key("until");
		when ? (void)w.value(chosen.empty() ? number("until") : seconds(chosen + "until_us")) : (void)w.null();
		// The previous owner still draining: what it keeps, its deadline
		// and, from the journal, when the drain began and ended (null: it holds).
		auto draining = [&](const std::string &prefix) {
			std::string d = prefix + "draining_";
			w.key("draining");
			if (field(f, d + "server").empty()) {
				w.null();
				return;
			}
			w.beginObject();
			answer(w, d);
			w.key("until").value(number(d + "until"));
			if (f.count(d + "from")) {
				w.key("from").value(number(d + "from"));
				w.key("ended");
				number(d + "ended") ? (void)w.value(number(d + "ended")) : (void)w.null();
			}
			w.endObject();
		};
		draining(chosen);
		if (within) {
			// Every answer of that second, to the microsecond (RFC 3339; until null: still holds).
			w.key("within_second").beginArray();
			for (size_t k = 0; k < within; k++) {
				std::string p = withinPrefix(k);
				w.beginObject().key("from").value(usTime(p + "from_us")).key("until");
				usTime(p + "until_us").empty() ? (void)w.null() : (void)w.value(usTime(p + "until_us"));
				if (!field(f, p + "unknown").empty()) {
					w.key("unknown").value(field(f, p + "unknown"));
				} else {
					answer(w, p);
					w.key("generation").value(number(p + "generation"));
					draining(p);
				}
				w.endObject();
			}
			w.endArray();
		}
		w.endObject();
		std::cout << w.str(); // it ends its line
		return 0;
	}
	std::cout << target;
	if (when)
		std::cout << " at " << moment;
	std::cout << ": slice " << field(f, chosen + "slice") << ", " << describe(f, chosen) << "\n";
	if (std::string d = chosen + "draining_"; !field(f, d + "server").empty()) {
		// Both servers could have sent from the port: each with its source and inside address.
		std::string until = field(f, d + "until");
		std::cout << "  draining: " << field(f, d + "server") << " keeps the flows it opened before the move"
			  << (until.empty() || until == "0" ? "" : " until " + journal::formatSeconds(std::stoll(until)));
		if (f.count(d + "source"))
			std::cout << ": " << describe(f, d);
		std::cout << "\n";
		if (f.count(d + "from")) {
			std::string ended = field(f, d + "ended");
			std::cout << "  the drain held from " << journal::formatSeconds(std::stoll(field(f, d + "from")))
				  << (ended == "0" ? " until now" : " until " + journal::formatSeconds(std::stoll(ended)))
				  << "\n";
		}
	}
	if (when && !chosen.empty()) {
		std::string until = usTime(chosen + "until_us");
		std::cout << "  held from " << usTime(chosen + "from_us") << (until.empty() ? " until now" : " until " + until)
			  << " (generation " << field(f, chosen + "generation") << ")\n";
	} else if (when) {
		std::string until = field(f, "until");
		std::cout << "  held from " << journal::formatSeconds(std::stoll(field(f, "from")))
			  << (until == "0" ? " until now" : " until " + journal::formatSeconds(std::stoll(until)))
			  << " (generation " << field(f, "generation") << ")\n";
	}
	if (within && !exact) {
		std::cout << "  the owner changed within that second (the answer above is the one at its end; "
			     "--at with a fraction of a second picks one):\n";
		for (size_t k = 0; k < within; k++) {
			std::string p = withinPrefix(k), until = usTime(p + "until_us");
			std::cout << "    from " << usTime(p + "from_us") << (until.empty() ? " until now" : " until " + until)
				  << ": "
				  << (field(f, p + "unknown").empty() ? describe(f, p) + " (generation " + field(f, p + "generation") + ")"
								   : "not known: " + field(f, p + "unknown"))
				  << (field(f, p + "draining_server").empty() ? "" : "; draining: " + describe(f, p + "draining_"))
				  << "\n";
		}
	}
	return 0;
}

int history(Egress1 &proxy, const OnlineOptions &options)
{
	const std::string &since = options.since;
	bool json = options.json;
	uint64_t from = 0;
	int64_t fromUs = 0;
	if (!since.empty()) {
		std::optional<int64_t> us = journal::parseTime(since);
		if (!us || *us < 0) {
			std::cerr << "portslicectl history: --since wants RFC 3339 (2026-11-29T09:40:00Z) or Unix seconds, not '"
				  << since << "'\n";
			return kExitUsage;
		}
		fromUs = *us;
		from = static_cast<uint64_t>(*us / 1000000);
	}
	// History takes whole seconds (the D-Bus contract): a --since with a
	// fraction of a second also cuts the records earlier in that second.
	auto rows = proxy.History(from);
	std::erase_if(rows, [&](const decltype(rows)::value_type &row) {
		return static_cast<int64_t>(row.get<0>()) < fromUs;
	});
	// A damaged record: reported on standard error (file and offset) and in
	// the exit status; the lines the journal can still tell are printed.
	std::vector<std::string> damaged;
	std::erase_if(rows, [&](const decltype(rows)::value_type &row) {
		if (row.get<6>() != "damaged" || !row.get<2>().empty())
			return false;
		damaged.push_back(row.get<8>());
		return true;
	});
	auto reportDamage = [&] {
		for (const std::string &d : damaged)
			std::cerr << "portslicectl history: " << d << "\n";
		if (!damaged.empty())
			std::cerr << "portslicectl history: the journal cannot tell the changes within "
				  << (damaged.size() > 1 ? "these records" : "that record")
				  << "; who owned what is unknown from the record before it until the next file line\n";
		return damaged.empty() ? 0 : kExitFailed;
	};
	if (json) {
		JsonWriter w;
		w.beginArray();
		for (const auto &row : rows) {
			w.beginObject();
			w.key("time").value(journal::formatTime(static_cast<int64_t>(row.get<0>())));
			w.key("generation").value(row.get<1>());
			bool file = row.get<2>().empty();
			w.key("address");
			file ? (void)w.null() : (void)w.value(row.get<2>());
			w.key("slice");
			file ? (void)w.null() : (void)w.value(row.get<3>());
			w.key("old").value(row.get<4>()).key("new").value(row.get<5>()).key("why").value(row.get<6>());
			w.key("uid");
			row.get<7>().empty() ? (void)w.null() : (void)w.value(static_cast<uint64_t>(std::stoull(row.get<7>())));
			w.key("file").value(row.get<8>());
			w.endObject();
		}
		w.endArray();
		std::cout << w.str(); // it ends its line
		return reportDamage();
	}
	// Whitespace-separated columns, WHY last and nothing after it (it may be
	// two words: "drain end"). A file's line names the file applied in NEW.
	std::cout << "TIME                        GENERATION  ADDRESS          SLICE  OLD        NEW        UID    WHY\n";
	for (const auto &row : rows) {
		std::string time = journal::formatTime(static_cast<int64_t>(row.get<0>()));
		auto pad = [](std::string text, size_t width) {
			return text.size() >= width ? text + " " : text + std::string(width - text.size(), ' ');
		};
		std::cout << pad(time, 28) << pad(std::to_string(row.get<1>()), 12);
		if (row.get<2>().empty()) {
			std::cout << pad("-", 17) << pad("-", 7) << pad("-", 11) << pad("sha256:" + row.get<8>(), 11);
		} else {
			auto name = [](const std::string &n) { return n.empty() ? std::string("(none)") : n; };
			std::cout << pad(row.get<2>(), 17) << pad(std::to_string(row.get<3>()), 7) << pad(name(row.get<4>()), 11)
				  << pad(name(row.get<5>()), 11);
		}
		std::cout << pad(row.get<7>().empty() ? "-" : row.get<7>(), 7) << row.get<6>() << "\n";
	}
	std::cout.flush();
	return reportDamage();
}

int audit(Egress1 &proxy)
{
	std::vector<std::string> differences = proxy.Audit();
	if (differences.empty()) {
		std::cout << "table inet portslice is what the plan says (generation " << proxy.Generation() << ")\n";
		return 0;
	}
	for (const std::string &d : differences)
		std::cout << d << "\n";
	std::cerr << "portslicectl audit: " << differences.size() << " difference" << (differences.size() > 1 ? "s" : "")
		  << " between the kernel and the plan of generation " << proxy.Generation() << "\n";
	return kExitFailed;
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
		if (command == "owner")
			return owner(proxy, options);
		if (command == "history")
			return history(proxy, options);
		if (command == "audit")
			return audit(proxy);
		std::cerr << "portslicectl: unknown online command " << command << "\n";
		return kExitUsage;
	} catch (const sdbus::Error &e) {
		return explain(e, command);
	}
}

} // namespace portslice::ctl
