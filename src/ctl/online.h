// SPDX-License-Identifier: MIT
// The online commands of portslicectl (status, reload, set-owner, stats, owner, history, audit), spoken over D-Bus.
#pragma once

#include <cstdint>
#include <string>

namespace portslice::ctl {

// What main() parsed for an online command; each command reads the fields it has.
struct OnlineOptions {
	std::string command; // status, reload, set-owner, stats, owner, history, audit
	bool json = false;
	bool prometheus = false;
	std::string address; // set-owner
	uint32_t slice = 0;  // set-owner
	std::string server;  // set-owner
	// set-owner --fleet: the move goes to etcd (the file's [fleet]), not to the local daemon.
	bool fleet = false;
	std::string config = "/etc/portslice/portslice.toml";
	uint32_t drainSeconds = 60;
	// status: where portslice-fleetd keeps the fleet link.
	std::string fleetStatus = "/run/portslice/fleetd.json";
	std::string argument; // owner: ADDRESS:PORT
	std::string at;       // owner --at TIME
	std::string since;    // history --since TIME
};

// Returns the process exit code.
int runOnline(const OnlineOptions &options);

} // namespace portslice::ctl
