// SPDX-License-Identifier: MIT
// set-owner --fleet through the etcd gateway client, and the fleet link lines of status from fleetd's status file.
#include "ctl/fleet.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <thread>

#include <curl/curl.h>
#include <nlohmann/json.hpp>

#include "config/config.h"
#include "fleet/etcd.h"
#include "fleet/status.h"
#include "fleet/view.h"
#include "plan/plan.h"

namespace portslice::ctl {

namespace {

constexpr int kExitRefused = 1;
constexpr int kExitUnreachable = 3;

int64_t unixNow()
{
	return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
		.count();
}

// Whether the config file has a [fleet] table: a line that is its header.
// A scan, not a load: status must stay quick at 10,000 addresses, and a
// file the daemon cannot load is its own last error.
bool configHasFleet(const std::string &path)
{
	std::ifstream in(path);
	std::string line;
	while (std::getline(in, line)) {
		size_t at = line.find_first_not_of(" \t");
		if (at != std::string::npos && line.compare(at, 7, "[fleet]") == 0)
			return true;
	}
	return false;
}

// Why the file's own plan of `server` cannot take slice `slice` of `ip`
// moving to `to` (empty when it can): every daemon of the fleet plans the
// servers so, and SetSliceOwners is all or nothing, so a key that one
// daemon refuses would hold back every later change there.
std::string cannotTake(const config::Config &c, Ipv4 ip, uint32_t slice, const std::string &to,
		       const std::string &server)
{
	config::Config moved = c;
	moved.findAddress(ip)->owners[slice] = to;
	plan::PlanResult planned = plan::makePlan(moved, server);
	if (planned.ok())
		return {};
	for (const config::Diagnostic &d : planned.diagnostics)
		if (d.severity == config::Diagnostic::Severity::Error)
			return d.message;
	return "its plan fails";
}

constexpr const char *kNoStatus = "no status from portslice-fleetd (is it running?)";

} // namespace

int runFleetSetOwner(const OnlineOptions &options)
{
	config::LoadResult loaded = config::loadFile(options.config);
	if (!loaded.ok()) {
		for (const config::Diagnostic &d : loaded.diagnostics)
			std::cerr << d.str() << "\n";
		return kExitRefused;
	}
	const config::Config &c = *loaded.config;
	if (!c.fleet) {
		std::cerr << "portslicectl: set-owner --fleet: " << options.config
			  << " has no [fleet] section (etcd endpoints and prefix); without --fleet the move is local\n";
		return kExitRefused;
	}
	std::optional<Ipv4> ip = Ipv4::parse(options.address);
	const config::Address *address = ip ? c.findAddress(*ip) : nullptr;
	if (!address) {
		std::cerr << "portslicectl: set-owner --fleet: \"" << options.address.substr(0, 200)
			  << "\" is not a shared address of " << options.config << "\n";
		return kExitRefused;
	}
	if (options.slice >= address->sliceCount()) {
		std::cerr << "portslicectl: set-owner --fleet: slice " << options.slice << " of " << ip->str()
			  << " does not exist: it has slices 0 to " << int64_t{address->sliceCount()} - 1 << "\n";
		return kExitRefused;
	}
	if (!c.findServer(options.server)) {
		std::cerr << "portslicectl: set-owner --fleet: \"" << options.server.substr(0, 200)
			  << "\" is not a server of " << options.config << "\n";
		return kExitRefused;
	}

	curl_global_init(CURL_GLOBAL_DEFAULT);
	fleet::EtcdOptions eo;
	eo.endpoints = c.fleet->etcd;
	eo.caFile = c.fleet->caFile;
	eo.certFile = c.fleet->certFile;
	eo.keyFile = c.fleet->keyFile;
	fleet::Etcd etcd(eo);
	std::string key = fleet::ownerKey(c.fleet->prefix, *ip, options.slice);
	auto inFile = address->owners.find(options.slice);
	std::string fileOwner = inFile == address->owners.end() ? std::string() : std::string(inFile->second);
	// Read, decide, write if the key is still as read; again if another writer came in between.
	// No member answering may be an election (the leader died): it takes
	// about a second, so unreachable etcd is tried again for a few.
	using Clock = std::chrono::steady_clock;
	const Clock::time_point giveUp = Clock::now() + std::chrono::seconds(6);
	auto again = [&] {
		if (Clock::now() >= giveUp)
			return false;
		std::this_thread::sleep_for(std::chrono::milliseconds(250));
		return true;
	};
	// A write whose answer was lost may have been applied: a later read
	// that finds this owner already does not write again.
	bool uncertain = false;
	std::set<std::string> planned; // the servers whose plan took the move
	for (int attempt = 0; attempt < 5;) {
		Result<fleet::RangeAnswer> read = etcd.range(key);
		if (!read) {
			if (again())
				continue;
			std::cerr << "portslicectl: set-owner --fleet: " << read.error().message()
				  << (uncertain ? "; the write may or may not have been applied\n" : "; nothing was written\n");
			return kExitUnreachable;
		}
		int64_t modRevision = 0;
		std::string current = fileOwner;
		if (!read->kvs.empty()) {
			modRevision = read->kvs[0].modRevision;
			if (std::optional<fleet::OwnerKey> k = fleet::decodeOwner(read->kvs[0].value))
				current = k->owner;
		}
		if (uncertain && current == options.server && !read->kvs.empty()) {
			std::cout << "slice " << options.slice << " of " << ip->str() << " -> " << options.server
				  << " for the fleet (" << key << " at etcd revision " << modRevision << ")\n";
			return 0;
		}
		// The old and the new owner must both be able to plan the move, or
		// their daemons refuse it: refuse it here, before anything is written.
		for (const std::string &server : {current, options.server}) {
			if (server.empty() || !c.findServer(server) || !planned.insert(server).second)
				continue;
			if (std::string why = cannotTake(c, *ip, options.slice, options.server, server); !why.empty()) {
				std::cerr << "portslicectl: set-owner --fleet: server '" << server
					  << "' cannot take the move of slice " << options.slice << " of " << ip->str() << " to "
					  << options.server << ": " << why << "; nothing was written\n";
				return kExitRefused;
			}
		}
		fleet::OwnerKey value{options.server, current != options.server ? current : "", 0};
		if (!value.previous.empty())
			value.until = unixNow() + int64_t{options.drainSeconds};
		nlohmann::json compare = nlohmann::json::array({{{"target", "MOD"},
								 {"key", fleet::base64Encode(key)},
								 {"mod_revision", std::to_string(modRevision)}}});
		nlohmann::json success = nlohmann::json::array(
			{{{"request_put",
			   {{"key", fleet::base64Encode(key)}, {"value", fleet::base64Encode(fleet::encodeOwner(value))}}}}});
		Result<fleet::TxnAnswer> wrote = etcd.txn(compare, success);
		if (!wrote) {
			uncertain = true;
			if (again())
				continue;
			std::cerr << "portslicectl: set-owner --fleet: " << wrote.error().message()
				  << "; the write may or may not have been applied\n";
			return kExitUnreachable;
		}
		if (!wrote->succeeded) {
			attempt++;
			continue;
		}
		std::cout << "slice " << options.slice << " of " << ip->str() << " -> " << options.server
			  << " for the fleet (" << key << " at etcd revision " << wrote->revision << ")";
		if (!value.previous.empty())
			std::cout << "; " << value.previous << " drains it for " << options.drainSeconds << " s";
		std::cout << "\n";
		return 0;
	}
	std::cerr << "portslicectl: set-owner --fleet: " << key
		  << " kept changing under this write (5 tries); nothing was written, try again\n";
	return kExitRefused;
}

void printFleetLink(const OnlineOptions &options, JsonWriter *json)
{
	std::error_code ec;
	if (!std::filesystem::exists(options.fleetStatus, ec)) {
		// Fleet mode without its fleetd: the link is down, and says so.
		if (!configHasFleet(options.config))
			return;
		if (json)
			json->key("fleet")
				.beginObject()
				.key("fleetd_running").value(false)
				.key("etcd_reachable").value(false)
				.key("error").value(kNoStatus)
				.endObject();
		else
			std::cout << "fleet: " << kNoStatus << "\n";
		return;
	}
	Result<fleet::LinkStatus> s = fleet::readStatusFile(options.fleetStatus);
	if (json) {
		json->key("fleet");
		if (!s) {
			json->beginObject().key("error").value(s.error().message()).endObject();
			return;
		}
		int64_t now = unixNow();
		bool running = now - s->updated <= 3 * std::max<int64_t>(s->leaseSeconds, 1) + 5;
		json->beginObject()
			.key("fleetd_running").value(running)
			.key("etcd_reachable").value(running && s->etcdReachable)
			.key("endpoint").value(s->endpoint)
			.key("error").value(s->error)
			.key("leader").value(s->leader)
			.key("live").beginArray();
		for (const std::string &l : s->liveServers)
			json->value(l);
		json->endArray()
			.key("this_server_live").value(s->live)
			.key("revision").value(s->revision)
			.key("applied_revision").value(s->appliedRevision)
			.key("applied_generation").value(s->appliedGeneration)
			.key("apply_error").value(s->applyError)
			.key("updated").value(s->updated)
			.endObject();
		return;
	}
	if (!s) {
		std::cout << "fleet: unknown: " << s.error().message() << "\n";
		return;
	}
	std::cout << fleet::describeStatus(*s, unixNow());
}

} // namespace portslice::ctl
