// SPDX-License-Identifier: MIT
// check, plan, dump, owner and geofeed: pure functions of the config file.
#include "ctl/offline.h"

#include <charconv>

#include "config/config.h"
#include "nft/model.h"
#include "nft/render.h"
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

} // namespace

int runCheck(const OfflineOptions &o, std::ostream &out, std::ostream &err)
{
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
	out << nft::render(nft::buildModel(*plan, 1, false), &*plan);
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
		err << "portslicectl owner: expected ADDRESS:PORT, e.g. 198.51.100.1:40000, not '" << o.argument << "'\n";
		return 2;
	}
	config::LoadResult loaded = config::loadFile(o.config);
	if (!loaded.ok()) {
		printDiagnostics(loaded.diagnostics, err);
		return 1;
	}
	std::vector<config::Diagnostic> diagnostics;
	auto answer = plan::findOwner(*loaded.config, *address, static_cast<uint16_t>(port), &diagnostics);
	if (!answer) {
		err << address->str() << " is not a shared address of " << o.config << "\n";
		return 1;
	}
	out << o.argument << ": ";
	if (!answer->slice) {
		out << "port outside the usable slices of " << address->str() << "; no server uses it\n";
		return 0;
	}
	out << "slice " << *answer->slice;
	if (answer->server.empty()) {
		out << ", owned by no server\n";
		return 0;
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

int runGeofeed(const OfflineOptions &o, std::ostream &out, std::ostream &err)
{
	config::LoadResult loaded = config::loadFile(o.config);
	if (!loaded.ok()) {
		printDiagnostics(loaded.diagnostics, err);
		return 1;
	}
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
		out << a.address.str() << "/32," << country << "," << tag("region") << "," << tag("city") << ",\n";
	}
	return 0;
}

} // namespace portslice::ctl
