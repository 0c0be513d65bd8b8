// SPDX-License-Identifier: MIT
// Conntrack side of the plan: sysctl tuning with restore, and deleting the entries of slices this server no longer owns.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common/result.h"
#include "config/config.h"
#include "plan/plan.h"

namespace portslice::conntrack {

struct SysctlChange {
	std::string name;     // "net.netfilter.nf_conntrack_max"
	std::string previous; // value before the first change portslice made
	std::string value;    // value now
};

struct TuneReport {
	std::vector<SysctlChange> changed;
	// Keys the kernel does not let this network namespace set (nf_conntrack_max
	// and _buckets are read-only outside the host namespace): "name: reason".
	std::vector<std::string> skipped;
};

// The sysctl each [conntrack] key sets; absent keys are left alone.
std::vector<std::pair<std::string, uint32_t>> sysctlsOf(const config::ConntrackTuning &tuning);

// Set the sysctls of `tuning`. The value found before portslice first changed
// a key is kept in stateDir/conntrack-sysctl.saved, so that restore() puts it
// back even after several applies or from another process.
Result<TuneReport> tune(const config::ConntrackTuning &tuning, const std::string &stateDir);

// Put back every value tune() changed, and forget them.
Status restore(const std::string &stateDir);

// One IPv4 conntrack entry, as much of it as portslice reads.
struct Entry {
	uint8_t l4proto = 0;  // IPPROTO_TCP, IPPROTO_UDP, ...
	uint16_t zone = 0;
	bool srcNat = false;  // IPS_SRC_NAT: its source was translated
	Ipv4 replyDst;        // where answers go: the NAT source address
	uint16_t replyDstPort = 0; // host order; 0 when the protocol has no ports
};

// The one conntrack table walk of portslice: one dump of the IPv4 entries,
// `visit` called for each; those it returns true for are deleted after the
// dump. Returns how many were deleted (entries gone meanwhile not counted).
Result<size_t> walk(const std::function<bool(const Entry &)> &visit);

// The conntrack sysctls tune() may write and its saved file, as they are:
// an apply that fails later puts them back with restoreTuning().
struct TuningSnapshot {
	std::vector<std::pair<std::string, std::string>> values; // name, value (those readable)
	std::map<std::string, std::string> saved;
};
TuningSnapshot snapshotTuning(const std::string &stateDir);
Status restoreTuning(const TuningSnapshot &snapshot, const std::string &stateDir);

// A live NAT flow on a slice this server drains as previous owner: its
// answers come to address:port (host byte order) and belong to zone.
struct DrainingFlow {
	Ipv4 address;
	uint16_t port = 0;
	uint16_t zone = 0;
	auto operator<=>(const DrainingFlow &) const = default;
};

// Delete the conntrack entries (all zones) whose NAT source is a shared
// address of the plan with a port outside this server's slices of it: a slice
// moved away, its flows now belong to another server. Returns how many.
// Entries of slices this server drains as their previous owner stay; with
// `draining`, they are listed there (sorted, unique).
Result<size_t> deleteMovedAway(const plan::Plan &plan, std::vector<DrainingFlow> *draining = nullptr);

// The live flows of the slices this server drains in `plan`, deleting nothing.
Result<std::vector<DrainingFlow>> drainingFlows(const plan::Plan &plan);

// Whether this server drains any slice as previous owner in `plan`.
bool drainsAny(const plan::Plan &plan);

} // namespace portslice::conntrack
