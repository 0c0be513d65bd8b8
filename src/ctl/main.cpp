// SPDX-License-Identifier: MIT
// portslicectl: offline commands on a config file, online commands over D-Bus; one CLI11 subcommand each.
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "common/cli.h"
#include "ctl/fleet.h"
#include "ctl/offline.h"
#include "ctl/online.h"

using namespace portslice;
using namespace portslice::ctl;

namespace {

// Every command: its CLI11 subcommand and what runs when it was given.
// To add one: addCommand() it in main(), give it its options, and a run
// function returning the exit code; --help works without a daemon for free.
struct Command {
	CLI::App *app;
	std::function<int()> run;
};

// --config and --server, shared by the offline commands.
void addFileOptions(CLI::App &command, OfflineOptions &offline)
{
	command.add_option("--config", offline.config, "the config file (default: " + offline.config + ")")
		->type_name("FILE");
	command.add_option("--server", offline.server, "plan as server NAME of the fleet, not the file's [server].name")
		->type_name("NAME");
}

} // namespace

int main(int argc, char **argv)
{
	CLI::App app{"Check and explain a portslice config (offline, on a file); control portsliced (online, over "
		     "D-Bus: org.portslice.Egress1 on the system bus).",
		     "portslicectl"};
	cli::setUp(app);
	app.require_subcommand(1);

	OfflineOptions offline;
	OnlineOptions online;
	// --config before the command means what it means after it, for the
	// commands that read a file (every program takes --config PATH).
	std::string config;
	CLI::Option *configOption =
		app.add_option("--config", config,
			       "the config file of a command that reads one, as --config after it (default: " + offline.config + ")")
			->type_name("FILE");
	bool configGiven = false;
	std::vector<Command> commands;
	auto add = [&](const std::string &name, const std::string &description, std::function<int()> run) {
		CLI::App *command = cli::addCommand(app, name, description);
		commands.push_back({command, std::move(run)});
		return command;
	};
	auto runOnlineCommand = [&](const std::string &name) {
		return [&online, name] {
			online.command = name;
			return runOnline(online);
		};
	};

	// Offline: on a config file, never touching the kernel or the daemon.
	CLI::App *check = add("check", "validate the file; print errors and warnings; exit 0 valid, 1 invalid",
			      [&] { return runCheck(offline, std::cout, std::cerr); });
	addFileOptions(*check, offline);
	check->add_flag("--json", offline.json, "print the verdict, counts, errors and warnings as JSON");

	CLI::App *plan = add("plan", "this server's slices, each source's address, ports, zone and mode",
			     [&] { return runPlan(offline, std::cout, std::cerr); });
	addFileOptions(*plan, offline);
	plan->add_flag("--json", offline.json, "print the plan as stable, sorted JSON");

	CLI::App *dump = add("dump", "the nftables table, in nft -f syntax, as it will be applied",
			     [&] { return runDump(offline, std::cout, std::cerr); });
	addFileOptions(*dump, offline);
	dump->add_flag("--json", offline.json, "print what the table holds (generation, plan hash, sets and their "
					       "element counts) as JSON, not the table");

	// owner: the running daemon's view (moves and drains included), from the
	// journal with --at; from the file alone when --config or --server is given.
	CLI::App *owner = nullptr;
	owner = add("owner", "which server owns ADDRESS:PORT, which source, and for a stateless source which inside "
			     "address: the daemon's view, at TIME from the ownership journal, or the file's with --config",
		    [&]() -> int {
			    bool fromFile = configGiven || owner->get_option("--server")->count() > 0;
			    if (fromFile) {
				    if (!online.at.empty()) {
					    std::cerr << "portslicectl: owner: --at answers from the daemon's journal, not "
							 "with --config or --server\n";
					    return cli::kExitUsage;
				    }
				    return runOwner(offline, std::cout, std::cerr);
			    }
			    // Checked here, the input quoted cut, before the daemon is asked.
			    if (!checkAddressPort("owner", offline.argument, std::cerr) ||
				(!online.at.empty() && !checkTime("owner", "--at", online.at, std::cerr)))
				    return cli::kExitUsage;
			    online.command = "owner";
			    online.argument = offline.argument;
			    online.json = offline.json;
			    return runOnline(online);
		    });
	owner->add_option("ADDRESS_PORT", offline.argument, "a shared address and one of its ports")
		->required()
		->type_name("ADDRESS:PORT");
	addFileOptions(*owner, offline);
	owner->add_option("--at", online.at, "the moment to answer for, RFC 3339 or Unix seconds (from the journal)")
		->type_name("TIME");
	owner->add_flag("--json", offline.json, "print the answer as JSON");

	CLI::App *geofeed = add("geofeed", "RFC 8805 CSV of the shared addresses from their country tags",
				[&] { return runGeofeed(offline, std::cout, std::cerr); });
	addFileOptions(*geofeed, offline);

	// Online: over D-Bus to the running portsliced.
	CLI::App *status = add("status", "the daemon's state, generation, server and last error; exit 1 unless applied",
			       runOnlineCommand("status"));
	status->add_flag("--json", online.json, "print JSON");
	status->add_option("--fleet-status", online.fleetStatus,
			   "portslice-fleetd's status file, for the fleet link (default: " + online.fleetStatus + ")")
		->type_name("FILE");
	status->add_option("--config", online.config,
			   "the config file: with a [fleet] section and no fleetd status file, the fleet link is down "
			   "(default: " + online.config + ")")
		->type_name("FILE");

	add("reload", "make the daemon re-read its config file; on error the applied state stays",
	    runOnlineCommand("reload"));

	CLI::App *setOwner = add("set-owner", "move slice SLICE of ADDRESS to SERVER (persisted across restarts); "
					      "with --fleet for the whole fleet, through etcd",
				 [&] {
					 online.command = "set-owner";
					 return online.fleet ? runFleetSetOwner(online) : runOnline(online);
				 });
	setOwner->add_option("ADDRESS", online.address, "the shared address")->required()->type_name("ADDRESS");
	setOwner->add_option("SLICE", online.slice, "the slice index (0, 1, ...)")->required()->type_name("SLICE");
	setOwner->add_option("SERVER", online.server, "the server that owns it from now on")
		->required()
		->type_name("SERVER");
	CLI::Option *fleetFlag = setOwner->add_flag(
		"--fleet", online.fleet, "write the owner key in etcd (compare-and-swap) so that every server moves the slice");
	setOwner->add_option("--config", online.config,
			     "with --fleet: the file whose [fleet] names etcd (default: " + online.config + ")")
		->type_name("FILE");
	setOwner->add_option("--drain-seconds", online.drainSeconds,
			     "with --fleet: how long the old owner drains, in the key's `until`, 0 to 86400 (default: 60)")
		->type_name("N")
		->needs(fleetFlag)
		->check(CLI::Range(0u, 86400u).description(""));

	CLI::App *stats = add("stats", "counters per source and address, ports in use, NAT failures",
			      runOnlineCommand("stats"));
	CLI::Option *statsJson = stats->add_flag("--json", online.json, "print JSON");
	stats->add_flag("--prometheus", online.prometheus, "print the Prometheus text format (not with --json)")->excludes(statsJson);

	CLI::App *history = add("history", "the ownership journal, one line per change (time, generation, address, "
					   "slice, old owner, new owner, why)",
				[&] {
					if (!online.since.empty() && !checkTime("history", "--since", online.since, std::cerr))
						return cli::kExitUsage;
					return runOnlineCommand("history")();
				});
	history->add_option("--since", online.since, "only changes from TIME on, RFC 3339 or Unix seconds")
		->type_name("TIME");
	history->add_flag("--json", online.json, "print JSON");

	add("audit", "compare the live kernel table with the daemon's plan; exit 1 listing each difference",
	    runOnlineCommand("audit"));

	if (std::optional<int> code = cli::parse(app, argc, argv))
		return *code;
	for (const Command &command : commands) {
		if (!command.app->parsed())
			continue;
		const CLI::Option *own = command.app->get_option_no_throw("--config");
		configGiven = own && own->count() > 0;
		if (configOption->count() > 0) {
			const std::string &name = command.app->get_name();
			if (!own) {
				std::cerr << "portslicectl: " << name << " reads no config file: --config is not one of its "
					     "options\ntry 'portslicectl " << name << " --help'\n";
				return cli::kExitUsage;
			}
			if (configGiven) {
				std::cerr << "portslicectl: --config given both before and after " << name
					  << ": give it once\n";
				return cli::kExitUsage;
			}
			offline.config = online.config = config;
			configGiven = true;
		}
		return command.run();
	}
	return cli::kExitUsage; // unreachable: require_subcommand(1)
}
