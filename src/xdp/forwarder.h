// SPDX-License-Identifier: MIT
// The XDP forwarder from C++: load and attach the program, fill its maps from a Plan, read its counters.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/handle.h"
#include "common/net.h"
#include "common/result.h"
#include "plan/plan.h"
#include "xdp/forwarder_kern_user.h"

struct forwarder_bpf; // the generated skeleton (forwarder.skel.h), private to forwarder.cpp

namespace portslice::xdp {

inline constexpr const char *kDefaultPinDir = FWD_PIN_DIR_DEFAULT;
inline constexpr uint32_t kVerdictCount = FWD_V_COUNT;

static_assert(sizeof(fwd_config) == 24);
static_assert(sizeof(fwd_address) == 20);
static_assert(sizeof(fwd_slice_key) == 8);
static_assert(sizeof(fwd_slice) == 56);
static_assert(sizeof(fwd_peer) == 4);
static_assert(sizeof(fwd_counter) == 16);
static_assert(offsetof(fwd_slice, zone_end) == 24);
static_assert(offsetof(fwd_address, gateway_mac) == 12);

// "pass_own", "forward", ...: the names `portslicectl stats` prints.
std::string_view verdictName(uint32_t verdict);

// Sums over all CPUs, indexed by enum fwd_verdict.
struct ForwarderCounters {
	std::array<uint64_t, kVerdictCount> packets{};
	std::array<uint64_t, kVerdictCount> bytes{};
};

// IPv4 (host order) -> MAC, from the kernel's neighbour table or given by a test.
using NeighbourTable = std::map<uint32_t, Mac>;

// Reachable (or permanent, stale, delayed) IPv4 neighbours of one interface,
// read with rtnetlink RTM_GETNEIGH in the caller's network namespace.
Result<NeighbourTable> readNeighbours(uint32_t ifindex);

// What the maps must hold for a plan: pure, no kernel.
struct ForwarderTables {
	fwd_config config{};
	std::vector<std::pair<uint32_t, fwd_address>> addresses; // key: network order
	std::vector<std::pair<fwd_slice_key, fwd_slice>> slices;
	std::vector<std::pair<uint32_t, fwd_peer>> peers;        // key: network order
	// Servers and gateways whose MAC is neither in the config nor in the
	// neighbour table: the program asks the kernel FIB for them per packet.
	std::vector<std::string> unresolved;
};

// The forwarding tables of `plan` for a server whose uplink has `uplinkMac`
// and `ifindex`. MACs come from the config, else from `neighbours`.
ForwarderTables buildTables(const plan::Plan &plan, const Mac &uplinkMac, uint32_t ifindex,
			    const NeighbourTable &neighbours);

// File descriptors of the five maps (borrowed or owned by the caller).
struct MapFds {
	int config = -1;
	int addrs = -1;
	int slices = -1;
	int peers = -1;
	int counters = -1;
};

// Make the maps hold exactly `tables`: changed entries are updated one map
// update each (the kernel swaps a hash element atomically, so a packet sees a
// slice's old or new owner, never a mix), then stale entries are deleted.
Status syncMaps(const MapFds &maps, const ForwarderTables &tables);

Result<ForwarderCounters> readCounters(int countersFd);

// The loaded BPF object: a non-copyable owner of the skeleton. Closing it
// unloads the program unless it is attached by a pinned link, and keeps
// pinned maps.
class ForwarderObject {
public:
	// Load the program. With a pinDir, maps are pinned there, or the maps
	// already pinned there are reused. withReference also loads
	// portslice_pass, the trivial program the benchmark compares against.
	static Result<ForwarderObject> load(const std::string &pinDir, bool withReference = false);

	ForwarderObject(ForwarderObject &&other) noexcept;
	ForwarderObject &operator=(ForwarderObject &&other) noexcept;
	ForwarderObject(const ForwarderObject &) = delete;
	ForwarderObject &operator=(const ForwarderObject &) = delete;
	~ForwarderObject();

	int programFd() const;
	int referenceProgramFd() const; // -1 unless loaded withReference
	MapFds maps() const;
	// FNV-1a of the embedded ELF object: tells whether a pinned program is this build's.
	static uint64_t objectHash();

private:
	explicit ForwarderObject(forwarder_bpf *skel) : skel_(skel) {}
	forwarder_bpf *skel_ = nullptr;
};

// Load (or reuse the pinned) program and maps in pinDir, attach to
// plan.uplink through a bpf_link pinned at pinDir/link (so it stays attached
// after this process exits), and sync the maps from the plan. When the pinned
// program is this build's and attached to the same interface, only the maps
// are updated. Needs root (CAP_BPF + CAP_NET_ADMIN) and bpffs at pinDir's parent.
Status applyForwarder(const plan::Plan &plan, const std::string &pinDir = kDefaultPinDir);

// Detach the pinned link (if any), unpin the maps and remove pinDir. Not an
// error when nothing is there. `uplink`, if not empty, must be the interface
// the link is attached to.
Status removeForwarder(const std::string &uplink, const std::string &pinDir = kDefaultPinDir);

// Per-verdict counters of the pinned program, summed over CPUs.
Result<ForwarderCounters> readForwarderCounters(const std::string &pinDir = kDefaultPinDir);

} // namespace portslice::xdp
