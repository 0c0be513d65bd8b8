// SPDX-License-Identifier: MIT
// The XDP forwarder from C++: load and attach the program, fill its maps from a Plan, read its counters.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
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
// Handle and priority of the uplink's tc egress filter that runs portslice_record.
inline constexpr uint32_t kRecordHandle = 0x5053;

static_assert(sizeof(fwd_config) == 24);
static_assert(sizeof(fwd_address) == 24);
static_assert(sizeof(fwd_slice) == 8);
static_assert(sizeof(fwd_target) == 16);
static_assert(sizeof(fwd_zones) == 32);
static_assert(sizeof(fwd_peer) == 4);
static_assert(sizeof(fwd_flow) == 16);
static_assert(sizeof(fwd_counter) == 16);
static_assert(offsetof(fwd_address, flags) == 14);
static_assert(offsetof(fwd_target, flags) == 10);
// Arrays are mmapped with a stride of the element size rounded up to 8.
static_assert(sizeof(fwd_address) % 8 == 0 && sizeof(fwd_target) % 8 == 0 && sizeof(fwd_zones) % 8 == 0);

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

// What the maps must hold for a plan, before slots and slice bases are
// allocated: pure, no kernel.
struct SliceWant {
	std::optional<fwd_target> owner;
	std::optional<fwd_target> previous;
	uint16_t flags = 0; // FWD_SLICE_* (OWNED, OWNER_SELF, PREVIOUS, PREVIOUS_SELF)
	std::optional<fwd_zones> zones;
	bool operator==(const SliceWant &o) const;
};

// A SliceWant as ForwarderTables keeps it: 12 bytes instead of 68, for a
// fleet's hundreds of thousands of slices (ForwarderTables::slice expands it).
struct SliceCell {
	uint16_t owner = 0;    // 1 + index into ForwarderTables::targets; 0: none
	uint16_t previous = 0; // the same
	uint16_t flags = 0;    // FWD_SLICE_*
	uint32_t zones = 0;    // 1 + index into ForwarderTables::zoneSets; 0: none
};

struct AddressWant {
	uint32_t addr = 0;        // network order
	fwd_address value{};      // addr, ports, flags (slice_base and gateway are filled by syncMaps)
	std::optional<fwd_target> gateway;
	std::vector<SliceCell> slices; // local addresses: one per slice
};

struct ForwarderTables {
	fwd_config config{};
	std::vector<AddressWant> addresses;
	std::vector<std::pair<uint32_t, fwd_peer>> peers; // key: network order
	std::vector<fwd_target> targets;  // one per server of the plan
	std::vector<fwd_zones> zoneSets;  // those the slices name
	// Servers and gateways whose MAC is neither in the config nor in the
	// neighbour table: the program asks the kernel FIB for them per packet.
	std::vector<std::string> unresolved;
	size_t sliceCount() const;
	// Slice i of addresses[address].
	SliceWant slice(size_t address, uint32_t i) const;
};

// The forwarding tables of `plan` for a server whose uplink has `uplinkMac`
// and `ifindex`. MACs come from the config, else from `neighbours`.
ForwarderTables buildTables(const plan::Plan &plan, const Mac &uplinkMac, uint32_t ifindex,
			    const NeighbourTable &neighbours);

// File descriptors of the maps (borrowed).
struct MapFds {
	int config = -1;
	int addrIndex = -1;
	int addrs = -1;
	int slices = -1;
	int targets = -1;
	int zones = -1;
	int peers = -1;
	int counters = -1;
	int flows = -1;
};

// Make the maps hold `tables`. A slice whose owners change gets exactly one
// aligned 8-byte store (the program reads it with one load: old or new
// owners, never a mix); target and zone slots are written before any slice
// names them and never rewritten while named; an address that needs a new
// run of slices gets it fully written before its entry points there.
// Fails with ENOSPC when fwd_slices is too small (reload with more capacity).
Status syncMaps(const MapFds &maps, const ForwarderTables &tables);

// One slice of the plan: indices into Plan::addresses and that address's slices.
struct SliceRef {
	uint32_t address = 0;
	uint32_t slice = 0;
};

struct SliceUpdate {
	uint32_t addr = 0;  // network order
	uint32_t slice = 0;
	SliceWant want;
};

// The wanted state of some slices of `plan`, as buildTables computes it.
std::vector<SliceUpdate> buildSlices(const plan::Plan &plan, const std::vector<SliceRef> &slices,
				     const NeighbourTable &neighbours);

// Rewrite just these slices' words, one aligned store each, naming target and
// zone slots that already hold the wanted content. ENOENT when an address,
// target or zone set is not in the maps yet (then a full syncMaps is needed).
// One writer at a time (the daemon).
Status syncSlices(const MapFds &maps, const std::vector<SliceUpdate> &updates);

// Whether this kernel's bpf_xdp_ct_lookup takes a conntrack zone (its
// struct bpf_ct_opts has ct_zone_id; not so in Linux 6.1). Without it the
// handover check knows only the flows the egress program noted. Reads the
// kernel's BTF (vmlinux, else module nf_conntrack, which must be loaded).
bool kernelLookupTakesZones();

Result<ForwarderCounters> readCounters(int countersFd);

// The loaded BPF object: a non-copyable owner of the skeleton. Closing it
// unloads the program unless it is attached by a pinned link, and keeps
// pinned maps.
class ForwarderObject {
public:
	// Load the program. With a pinDir, maps are pinned there, or the maps
	// already pinned there are reused. withReference also loads
	// portslice_pass, the trivial program the benchmark compares against.
	// sliceCapacity: entries of fwd_slices (0: the default).
	static Result<ForwarderObject> load(const std::string &pinDir, bool withReference = false,
					   uint32_t sliceCapacity = 0);

	ForwarderObject(ForwarderObject &&other) noexcept;
	ForwarderObject &operator=(ForwarderObject &&other) noexcept;
	ForwarderObject(const ForwarderObject &) = delete;
	ForwarderObject &operator=(const ForwarderObject &) = delete;
	~ForwarderObject();

	int programFd() const;
	int recordProgramFd() const;    // portslice_record, for the uplink's tc egress
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
// after this process exits), and sync the maps from the plan. The egress
// program (pinned at pinDir/record) is the uplink's tc egress filter (clsact,
// handle and priority kRecordHandle): it notes the flows this server opens in
// slices it takes over (docs/xdp.md, "Handover"). When the pinned program is
// this build's and attached to the same interface, only the maps are updated
// (and the egress filter put back if it is missing). Needs root (CAP_BPF +
// CAP_NET_ADMIN) and bpffs at pinDir's parent.
Status applyForwarder(const plan::Plan &plan, const std::string &pinDir = kDefaultPinDir);

// A slice move (SetSliceOwner) without a full sync: the words of `changed`
// are rewritten in the pinned maps from `plan`, one store each, at a cost that
// does not grow with the fleet. Falls back to applyForwarder when the maps
// lack something the slices need (a new server, a new zone set, no program).
Status applyForwarderSlices(const plan::Plan &plan, const std::vector<SliceRef> &changed,
			    const std::string &pinDir = kDefaultPinDir);

// Make pinDir usable for pins before anything changes: its file system must
// be bpffs. When the nearest existing directory is /sys/fs/bpf with nothing
// mounted there, bpffs is mounted on it (as bpftool does). Refused, with an
// error saying so: a pin directory on another file system; and a bpffs that
// would have to be mounted inside a private mount namespace (one that
// `ip netns exec` or `unshare -m` made), where it would die with this
// process and take the forwarder's link with it.
Status preparePinDir(const std::string &pinDir = kDefaultPinDir);

// Whether a forwarder link is pinned in pinDir.
bool forwarderPinned(const std::string &pinDir = kDefaultPinDir);

// Detach the pinned link (if any) and the egress filter, unpin the maps and
// remove pinDir. Not an error when nothing is there. `uplink`, if not empty, must be the interface
// the link is attached to.
Status removeForwarder(const std::string &uplink, const std::string &pinDir = kDefaultPinDir);

// Per-verdict counters of the pinned program, summed over CPUs.
Result<ForwarderCounters> readForwarderCounters(const std::string &pinDir = kDefaultPinDir);

} // namespace portslice::xdp
