// SPDX-License-Identifier: MIT
// portsliced's service mode: apply, serve org.portslice.Egress1, reload on SIGHUP, repair drift, leave the table on SIGTERM.
#pragma once

#include <chrono>
#include <string>

#include "service/backend.h"

namespace portslice::daemon {

struct ServeOptions {
	std::string configPath;
	std::string stateDir = "/var/lib/portslice";
	// How often the kernel state is compared with the plan even without an
	// event (XDP detach has no event; lost netlink events).
	std::chrono::milliseconds checkInterval{1000};
	// How long the old owner of a slice moved by SetSliceOwner drains (0: not at all).
	std::chrono::seconds drain{60};
	// A node_exporter textfile of the metrics (docs/operations.md, "Reading stats"), replaced
	// atomically every metricsInterval, after each apply and on a failure or
	// recovery (before the reply to its call); empty: none.
	std::string metricsFile;
	std::chrono::seconds metricsInterval{15};
	// How long the ownership journal keeps its records (--journal-days).
	int journalDays = 400;
	// Put a table changed by hand back (the default); false (--no-repair): only
	// log it and leave it for `portslicectl audit` to show.
	bool repair = true;
};

// Runs until SIGTERM or SIGINT; returns the process exit code.
int serve(const ServeOptions &options, service::Backend &backend);

} // namespace portslice::daemon
