// SPDX-License-Identifier: MIT
// Managed neighbour entries (NTF_EXT_MANAGED) for the XDP forwarder's targets without a configured MAC, so the kernel keeps them resolved and the first packet is forwarded.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/net.h"
#include "common/result.h"
#include "plan/plan.h"

namespace portslice::daemon {

// NDA_PROTOCOL of portslice's neighbour entries ('P'; no name in
// /etc/iproute2/rt_protos): with NTF_EXT_MANAGED it tells them from the
// entries of the kernel and of other software, on any interface.
inline constexpr uint8_t kNeighbourProtocol = 0x50;

// A target of the forwarder that has no `mac` in the config.
struct NeighbourTarget {
	std::string what; // "server s2 (192.0.2.12)", for messages
	Ipv4 address;
	auto operator<=>(const NeighbourTarget &) const = default;
};

// Pure: the servers other than this one without `mac` that are in this
// server's data centre or own or drain a slice of one of its addresses,
// and the gateways of the other data centres whose addresses the plan has.
std::vector<NeighbourTarget> neighbourTargets(const plan::Plan &plan);

struct NeighboursReport {
	size_t managed = 0;               // next hops with a managed entry of portslice
	std::vector<std::string> skipped; // "server s4 (...): routed out of eth1, not the uplink eth0"
};

// Make portslice's managed entries exactly those the targets need: for each
// target, the next hop the kernel routes it by (the target itself on the
// uplink's link, else the router) when that leaves by `uplink`. An entry
// of the next hop that is permanent or noarp and not portslice's is left
// as it is (its MAC is known); a dynamic one becomes portslice's managed
// entry. Entries of portslice no target needs any more are deleted.
// `targets` empty: all of portslice's entries go (uplink may be missing).
Result<NeighboursReport> applyNeighbours(const std::string &uplink, const std::vector<NeighbourTarget> &targets);

// Delete every neighbour entry of portslice (kNeighbourProtocol, managed).
Status removeNeighbours();

// portslice's entries as they are, so that an apply that fails later puts them back.
struct NeighbourEntry {
	uint32_t ifindex = 0;
	Ipv4 address;
	auto operator<=>(const NeighbourEntry &) const = default;
};
struct NeighboursSnapshot {
	std::vector<NeighbourEntry> entries;
};
Result<NeighboursSnapshot> snapshotNeighbours();
// Make portslice's entries those of the snapshot again.
Status restoreNeighbours(const NeighboursSnapshot &snapshot);

} // namespace portslice::daemon
