// SPDX-License-Identifier: MIT
// The fleet link as portslice-fleetd sees it, kept in a status file (replaced atomically) that portslicectl status reads.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"

namespace portslice::fleet {

inline constexpr const char *kDefaultStatusFile = "/run/portslice/fleetd.json";

struct LinkStatus {
	std::string server;
	int64_t pid = 0;
	int64_t updated = 0;          // Unix seconds of this write
	int64_t leaseSeconds = 0;     // as configured
	bool etcdReachable = false;
	std::string endpoint;         // the endpoint that answered last
	std::string error;            // why etcd is not reachable, or why the last apply failed
	int64_t lastContact = 0;      // Unix seconds of the last answer from etcd
	int64_t lease = 0;            // this server's lease ID, 0 when it has none
	std::string leader;           // the leader's name, "" when none
	bool live = false;            // this server is in PREFIX/live
	std::vector<std::string> liveServers;
	std::vector<std::string> members;
	int64_t revision = 0;         // the etcd revision the view is at
	int64_t appliedRevision = 0;  // the revision whose ownership the daemon has applied
	uint64_t appliedGeneration = 0;
	std::string applyError;       // why the daemon did not take the last change ("" when it did)
};

std::string encodeStatus(const LinkStatus &status);
std::optional<LinkStatus> decodeStatus(const std::string &text);

// Write to a temporary file of its own (PATH.tmp.XXXXXX, mode 0644) and
// rename it over PATH: a reader sees the old file or the new one, also with
// several writers at once.
Status writeStatusFile(const std::string &path, const LinkStatus &status);
Result<LinkStatus> readStatusFile(const std::string &path);

// The lines portslicectl status prints, "fleet: ..." first. A file older
// than 3 leases + 5 s means fleetd is not running (it writes at least every
// lease/3).
std::string describeStatus(const LinkStatus &status, int64_t now);

} // namespace portslice::fleet
