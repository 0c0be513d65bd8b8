// SPDX-License-Identifier: MIT
// The offline commands of portslicectl, callable from tests: each writes to the given streams and returns the exit code.
#pragma once

#include <optional>
#include <ostream>
#include <string>

namespace portslice::ctl {

struct OfflineOptions {
	std::string config = "/etc/portslice/portslice.toml";
	std::string server; // --server: plan as another server of the fleet
	bool json = false;
	std::string argument; // owner: ADDRESS:PORT
};

int runCheck(const OfflineOptions &options, std::ostream &out, std::ostream &err);
int runPlan(const OfflineOptions &options, std::ostream &out, std::ostream &err);
int runDump(const OfflineOptions &options, std::ostream &out, std::ostream &err);
int runOwner(const OfflineOptions &options, std::ostream &out, std::ostream &err);
// The arguments every owner and history command checks before it reads a file
// or asks the daemon; false after saying why on `err` (the input quoted, cut
// at 200 characters: common/quote.h): exit 2.
bool checkAddressPort(const std::string &command, const std::string &text, std::ostream &err);
bool checkTime(const std::string &command, const std::string &option, const std::string &text, std::ostream &err);

int runGeofeed(const OfflineOptions &options, std::ostream &out, std::ostream &err);

} // namespace portslice::ctl
