// SPDX-License-Identifier: MIT
// check, plan, dump, owner and geofeed: pure functions of the config file.
#include "ctl/offline.h"

#include <algorithm>
#include <charconv>
#include <cstdio>

#include "common/json.h"
#include "common/quote.h"
#include "config/config.h"
#include "nft/model.h"
#include "nft/render.h"
#include "journal/journal.h"
#include "plan/plan.h"

namespace portslice::ctl {

namespace {

void printDiagnostics(const std::vector<config::Diagnostic> &diagnostics, std::ostream &err)
{
	for (const config::Diagnostic &d : diagnostics)
		err << d.str() << "\n";
}

// Load and plan; prints every diagnostic. nullopt: errors (exit 1).
std::optional<plan::Plan> loadPlan(const OfflineOptions &o, std::ostream &err, bool printWarnings)
{
	config::LoadResult loaded = config::loadFile(o.config);
	if (!loaded.ok()) {
		printDiagnostics(loaded.diagnostics, err);
		return std::nullopt;
	}
	plan::PlanResult planned = plan::makePlan(*loaded.config, o.server);
	for (const config::Diagnostic &d : planned.diagnostics)
		if (printWarnings || d.severity == config::Diagnostic::Severity::Error)
			err << d.str() << "\n";
	return std::move(planned.plan);
}

// --server names one of [[servers]]: for the commands that do not plan,
// the error a plan gives (false, printed) for a name that is not there.
bool knownServer(const config::Config &config, const OfflineOptions &o, std::ostream &err)
{
	if (o.server.empty() || std::any_of(config.servers.begin(), config.servers.end(),
					    [&](const config::Server &s) { return s.name == o.server; }))
		return true;
	printDiagnostics(plan::makePlan(config, o.server).diagnostics, err);
	return false;
}

void writeDiagnostics(JsonWriter &w, const std::vector<config::Diagnostic> &diagnostics,
		      config::Diagnostic::Severity severity)
{
	w.beginArray();
	for (const config::Diagnostic &d : diagnostics) {
		if (d.severity != severity)
			continue;
		w.beginObject().key("file").value(d.where.file.str());
		if (d.where.line > 0)
			w.key("line").value(d.where.line).key("column").value(d.where.column);
		w.key("message").value(d.message).endObject();
	}
	w.endArray();
}

// check --json: the verdict, the counts and every diagnostic as data.
int runCheckJson(const OfflineOptions &o, std::ostream &out)
{
	std::vector<config::Diagnostic> diagnostics;
	std::optional<plan::Plan> plan;
	config::LoadResult loaded = config::loadFile(o.config);
	diagnostics = loaded.diagnostics;
	if (loaded.ok()) {
		plan::PlanResult planned = plan::makePlan(*loaded.config, o.server);
		diagnostics.insert(diagnostics.end(), planned.diagnostics.begin(), planned.diagnostics.end());
		plan = std::move(planned.plan);
	}
	JsonWriter w;
	w.beginObject().key("config").value(o.config).key("valid").value(plan.has_value());
	if (plan) {
		size_t mine = 0;
		for (const plan::PlannedAddress &a : plan->addresses)
			mine += a.mySlices.size();
		w.key("server").value(plan->server);
		w.key("servers").value(uint64_t{plan->servers.size()});
		w.key("addresses").value(uint64_t{plan->addresses.size()});
		w.key("sources").value(uint64_t{plan->sources.size()});
		w.key("my_slices").value(uint64_t{mine});
	}
	w.key("errors");
	writeDiagnostics(w, diagnostics, config::Diagnostic::Severity::Error);
	w.key("warnings");
	writeDiagnostics(w, diagnostics, config::Diagnostic::Severity::Warning);
	w.endObject();
	out << w.str(); // it ends its line
	return plan ? 0 : 1;
}

const char *setKindName(nft::SetKind kind)
{
	switch (kind) {
	case nft::SetKind::Set:
		return "set";
	case nft::SetKind::Map:
		return "map";
	case nft::SetKind::CounterMap:
		return "counter map";
	case nft::SetKind::VerdictMap:
		return "verdict map";
	}
	return "set";
}

// RFC 4180: a field with a comma, a double quote or a line break is quoted,
// its double quotes doubled; others go as they are.
std::string csvField(const std::string &text)
{
	if (text.find_first_of(",\"\r\n") == std::string::npos)
		return text;
	std::string out = "\"";
	for (char c : text)
		out += c == '"' ? std::string("\"\"") : std::string(1, c);
	return out + "\"";
}

} // namespace

int runCheck(const OfflineOptions &o, std::ostream &out, std::ostream &err)
{
	if (o.json)
		return runCheckJson(o, out);
	auto plan = loadPlan(o, err, true);
	if (!plan)
		return 1;
	size_t mine = 0;
	for (const plan::PlannedAddress &a : plan->addresses)
		mine += a.mySlices.size();
	out << o.config << ": valid: " << plan->servers.size() << " servers, " << plan->addresses.size()
	    << " addresses, " << plan->sources.size() << " sources; server " << plan->server << " owns " << mine
	    << " slices";
	if (!plan->warnings.empty())
		out << ", " << plan->warnings.size() << " warning" << (plan->warnings.size() > 1 ? "s" : "");
	out << "\n";
	return 0;
}

int runPlan(const OfflineOptions &o, std::ostream &out, std::ostream &err)
{
	auto plan = loadPlan(o, err, !o.json);
	if (!plan)
		return 1;
	out << (o.json ? plan::toJson(*plan) : plan::toText(*plan));
	return 0;
}

int runDump(const OfflineOptions &o, std::ostream &out, std::ostream &err)
{
	auto plan = loadPlan(o, err, false);
	if (!plan)
		return 1;
	// Offline there is no daemon generation: a dump shows generation 1,
	// which is what `portsliced --apply-once` writes on a fresh machine.
	if (!o.json) {
		out << nft::render(nft::buildModel(*plan, 1, false), &*plan);
		return 0;
	}
	// --json: what the table holds, not its text.
	nft::TableModel model = nft::buildModel(*plan, 1, true);
	char hash[17];
	std::snprintf(hash, sizeof(hash), "%016llx", static_cast<unsigned long long>(plan->hash()));
	JsonWriter w;
	w.beginObject().key("family").value("inet").key("table").value("portslice");
	w.key("generation").value(uint64_t{1}).key("plan_hash").value(hash).key("server").value(plan->server);
	w.key("comment").value(model.comment);
	w.key("counters").beginArray();
	for (const std::string &counter : model.counters)
		w.value(counter);
	w.endArray();
	w.key("sets").beginArray();
	for (const nft::Set &set : model.sets)
		w.beginObject().key("name").value(set.name).key("kind").value(setKindName(set.kind))
			.key("elements").value(uint64_t{set.elements.size()}).endObject();
	w.endArray().endObject();
	out << w.str(); // it ends its line
	return 0;
}

int runOwner(const OfflineOptions &o, std::ostream &out, std::ostream &err)
{
	size_t colon = o.argument.rfind(':');
	std::optional<Ipv4> address;
	uint32_t port = 0;
	if (colon != std::string::npos) {
		address = Ipv4::parse(std::string_view(o.argument).substr(0, colon));
		const char *begin = o.argument.data() + colon + 1, *end = o.argument.data() + o.argument.size();
		auto [p, ec] = std::from_chars(begin, end, port);
		if (ec != std::errc() || p != end || port == 0 || port > 65535)
			address.reset();
	}
	if (!address) {
		err << "portslicectl: owner: expected ADDRESS:PORT, e.g. 198.51.100.1:40000, not " << quoteInput(o.argument, '\'')
		    << "\n";
		return 2;
	}
	config::LoadResult loaded = config::loadFile(o.config);
	if (!loaded.ok()) {
		printDiagnostics(loaded.diagnostics, err);
		return 1;
	}
	// The file's owner is the fleet's, whichever server asks.
	if (!knownServer(*loaded.config, o, err))
		return 1;
	std::vector<config::Diagnostic> diagnostics;
	auto answer = plan::findOwner(*loaded.config, *address, static_cast<uint16_t>(port), &diagnostics);
	if (!answer) {
		err << address->str() << " is not a shared address of " << quoteInput(o.config, '\'') << "\n";
		return 1;
	}
	// No server uses the port: no answer, exit 1 as online (the text says why).
	bool answered = answer->slice && !answer->server.empty();
	if (o.json) {
		JsonWriter w;
		w.beginObject().key("address").value(address->str()).key("port").value(port);
		w.key("slice");
		answer->slice ? w.value(*answer->slice) : w.null();
		w.key("server");
		answer->server.empty() ? w.null() : w.value(answer->server);
		w.key("source");
		answer->source.empty() ? w.null() : w.value(answer->source);
		// Stateless: the one inside host; conntrack: the range whose
		// host only that server's connection table knows.
		w.key("inside");
		if (answer->inside)
			w.beginObject().key("first").value(answer->inside->str()).key("last")
				.value((answer->insideLast ? *answer->insideLast : *answer->inside).str()).endObject();
		else
			w.null();
		w.key("nat");
		if (answer->source.empty())
			w.null();
		else
			w.value(answer->insideLast ? "conntrack" : "stateless");
		w.endObject();
		out << w.str(); // it ends its line
		return answered ? 0 : 1;
	}
	out << o.argument << ": ";
	if (!answer->slice) {
		out << "port outside the usable slices of " << address->str() << "; no server uses it\n";
		return 1;
	}
	out << "slice " << *answer->slice;
	if (answer->server.empty()) {
		out << ", owned by no server\n";
		return 1;
	}
	out << ", server " << answer->server;
	if (answer->source.empty()) {
		out << ", not assigned to any source\n";
	} else if (answer->insideLast) {
		out << ", source " << answer->source << " (conntrack: inside " << answer->inside->str() << "-"
		    << answer->insideLast->str() << "; the connection table of " << answer->server
		    << " knows which host)\n";
	} else {
		out << ", source " << answer->source << ", inside " << answer->inside->str() << " (stateless)\n";
	}
	return 0;
}

bool checkAddressPort(const std::string &command, const std::string &text, std::ostream &err)
{
	size_t colon = text.rfind(':');
	uint32_t port = 0;
	if (colon != std::string::npos && Ipv4::parse(std::string_view(text).substr(0, colon))) {
		const char *begin = text.data() + colon + 1, *end = text.data() + text.size();
		auto [p, ec] = std::from_chars(begin, end, port);
		if (ec == std::errc() && p == end && port > 0 && port <= 65535)
			return true;
	}
	err << "portslicectl " << command << ": expected ADDRESS:PORT, e.g. 198.51.100.1:40000, not "
	    << quoteInput(text, '\'') << "\n";
	return false;
}

bool checkTime(const std::string &command, const std::string &option, const std::string &text, std::ostream &err)
{
	std::optional<int64_t> us = journal::parseTime(text);
	// owner --at: a moment after 1970-01-01T00:00:01Z; history --since: any.
	if (us && *us >= (option == "--at" ? 1000000 : 0))
		return true;
	err << "portslicectl " << command << ": " << option
	    << " wants RFC 3339 (2026-11-29T09:40:00Z) or Unix seconds, not " << quoteInput(text, '\'') << "\n";
	return false;
}

int runGeofeed(const OfflineOptions &o, std::ostream &out, std::ostream &err)
{
	config::LoadResult loaded = config::loadFile(o.config);
	if (!loaded.ok()) {
		printDiagnostics(loaded.diagnostics, err);
		return 1;
	}
	// The feed is the fleet's, the same from every server.
	if (!knownServer(*loaded.config, o, err))
		return 1;
	// RFC 8805: prefix,country,region,city,postal code; '#' starts a comment.
	out << "# RFC 8805 geofeed of the shared addresses of " << o.config << "\n";
	for (const config::Address &a : loaded.config->addresses) {
		auto tag = [&](const char *k) {
			auto it = a.tags.find(k);
			return it == a.tags.end() ? std::string() : it->second;
		};
		std::string country = tag("country");
		if (country.empty()) {
			err << "portslicectl geofeed: " << a.address.str() << " has no 'country' tag; left out\n";
			continue;
		}
		out << a.address.str() << "/32," << csvField(country) << "," << csvField(tag("region")) << ","
		    << csvField(tag("city")) << ",\n";
	}
	return 0;
}

} // namespace portslice::ctl
