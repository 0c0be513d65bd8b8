// SPDX-License-Identifier: MIT
// portslicectl: offline commands on a config file, online commands over D-Bus.
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "ctl/offline.h"
#include "ctl/online.h"

namespace {

constexpr const char *kUsage =
	"usage: portslicectl COMMAND [OPTIONS]\n"
	"\n"
	"offline, on a config file (--config PATH, default /etc/portslice/portslice.toml;\n"
	"--server NAME plans as another server of the fleet):\n"
	"  check                    validate; print errors and warnings\n"
	"  plan [--json]            this server's slices, each source's address, ports, zone, mode\n"
	"  dump                     the nftables table, in nft -f syntax, as it will be applied\n"
	"  owner ADDRESS:PORT       which server owns that port (and which inside address)\n"
	"  geofeed                  RFC 8805 CSV of the shared addresses\n"
	"\n"
	"online, over D-Bus (org.portslice.Egress1 on the system bus):\n"
	"  status                   state, generation, server, last error\n"
	"  reload                   re-read the config file\n"
	"  set-owner ADDRESS SLICE SERVER   move a slice (persisted)\n"
	"  stats [--json|--prometheus]      counters per source and address, ports in use\n";

} // namespace

int main(int argc, char **argv)
{
	using namespace portslice::ctl;
	std::vector<std::string> args(argv + 1, argv + argc);
	if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
		std::fputs(kUsage, args.empty() ? stderr : stdout);
		return args.empty() ? 2 : 0;
	}
	const std::string command = args[0];
	if (command == "status" || command == "reload" || command == "set-owner" || command == "stats")
		return runOnline(args);

	OfflineOptions options;
	std::vector<std::string> positional;
	for (size_t i = 1; i < args.size(); i++) {
		const std::string &a = args[i];
		auto value = [&](const char *flag) -> const std::string * {
			if (i + 1 >= args.size()) {
				std::fprintf(stderr, "portslicectl: %s needs a value\n", flag);
				return nullptr;
			}
			return &args[++i];
		};
		if (a == "--config" || a == "--server") {
			const std::string *v = value(a.c_str());
			if (!v)
				return 2;
			(a == "--config" ? options.config : options.server) = *v;
		} else if (a.rfind("--config=", 0) == 0) {
			options.config = a.substr(9);
		} else if (a.rfind("--server=", 0) == 0) {
			options.server = a.substr(9);
		} else if (a == "--json" && command == "plan") {
			options.json = true;
		} else if (a.size() > 1 && a[0] == '-') {
			std::fprintf(stderr, "portslicectl %s: unknown option '%s'\n", command.c_str(), a.c_str());
			return 2;
		} else {
			positional.push_back(a);
		}
	}
	size_t wanted = command == "owner" ? 1 : 0;
	if (positional.size() != wanted) {
		std::fprintf(stderr, "portslicectl %s: %s\n", command.c_str(),
			     wanted ? "expected one argument ADDRESS:PORT" : "takes no arguments");
		return 2;
	}
	if (wanted)
		options.argument = positional[0];

	if (command == "check")
		return runCheck(options, std::cout, std::cerr);
	if (command == "plan")
		return runPlan(options, std::cout, std::cerr);
	if (command == "dump")
		return runDump(options, std::cout, std::cerr);
	if (command == "owner")
		return runOwner(options, std::cout, std::cerr);
	if (command == "geofeed")
		return runGeofeed(options, std::cout, std::cerr);
	std::fprintf(stderr, "portslicectl: unknown command '%s'\n\n%s", command.c_str(), kUsage);
	return 2;
}
