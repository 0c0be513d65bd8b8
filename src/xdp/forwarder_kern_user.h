// SPDX-License-Identifier: MIT
// The XDP forwarder's maps and values: one definition, included word for word by forwarder.bpf.c and the C++ loader.
#pragma once

#include <linux/types.h>

// Pinned under this directory in bpffs, one file per map plus "link" (the
// bpf_link that keeps the program attached after the loader exits).
#define FWD_PIN_DIR_DEFAULT "/sys/fs/bpf/portslice"
#define FWD_PIN_LINK "link"

// Map names: the identifiers of the maps in forwarder.bpf.c, hence also the
// member names in the generated skeleton and the file names of the pins.
// Kernel map names are at most 15 characters.
#define FWD_MAP_CONFIG fwd_config
#define FWD_MAP_ADDR_INDEX fwd_addr_index
#define FWD_MAP_ADDRS fwd_addrs
#define FWD_MAP_SLICES fwd_slices
#define FWD_MAP_TARGETS fwd_targets
#define FWD_MAP_ZONES fwd_zones
#define FWD_MAP_PEERS fwd_peers
#define FWD_MAP_FLOWS fwd_flows
#define FWD_MAP_COUNTERS fwd_counters
// FWD_NAME(FWD_MAP_SLICES) is "fwd_slices": the name as a string, for pins.
#define FWD_NAME_(x) #x
#define FWD_NAME(x) FWD_NAME_(x)

// Why arrays: on the fast path (pass and forward) every lookup is an array
// lookup, which the verifier inlines. A hash lookup is a chain of kernel
// calls, and with return-thunk mitigations each costs about a whole trivial
// XDP program (docs/performance.md).

// Sizes (entries).
#define FWD_ADDR_INDEX_BITS 18
#define FWD_ADDR_INDEX_SIZE (1 << FWD_ADDR_INDEX_BITS)
#define FWD_ADDRS_MAX 262144       // addresses whose index bucket is shared (hash)
// The index bucket of a host-order address: multiplicative (Fibonacci)
// hashing, so a contiguous range of addresses spreads over all buckets.
#define FWD_ADDR_BUCKET(host_addr) ((__u32)((__u32)(host_addr) * 0x9E3779B1u) >> (32 - FWD_ADDR_INDEX_BITS))
#define FWD_SLICES_DEFAULT 65536   // the loader sizes fwd_slices to the plan, at least this
#define FWD_TARGETS_MAX 4096       // slot 0 means "none"
#define FWD_ZONES_MAX 65536        // slot 0 means "no zone runs"
#define FWD_PEERS_MAX 4096
#define FWD_FLOWS_MAX 65536        // flows the new owner opened in slices it takes over (LRU)

// The one entry of FWD_MAP_CONFIG (array, key __u32 0): who this server is.
struct fwd_config {
	__be32 self_addr;      // network order: outer source of what we encapsulate, outer destination of what we decapsulate
	__u32 uplink_ifindex;  // host order: the interface the program is attached to
	__u8 self_mac[6];      // Ethernet source of what we transmit (the uplink's address)
	__u16 flags;           // host order, reserved (0)
	__u64 object_hash;     // host order: FNV-1a of the loaded BPF object, so a loader can tell whether the pinned program is its own
};

// A shared address. FWD_MAP_ADDR_INDEX (array, BPF_F_MMAPABLE) holds one at
// FWD_ADDR_BUCKET(address); when several shared addresses fall in the same
// bucket, the entry has FWD_ADDR_COLLISION and all of them are in
// FWD_MAP_ADDRS (hash, key __be32 address).
#define FWD_ADDR_LOCAL 0x1     // lives in this data centre: route by slice
#define FWD_ADDR_GATEWAY 0x2   // another data centre with a gateway: encapsulate to target `gateway`
#define FWD_ADDR_COLLISION 0x4 // index entry only: look other addresses of this bucket up in FWD_MAP_ADDRS

struct fwd_address {
	__be32 addr;        // network order; 0: empty entry
	__u32 slice_base;   // host order: index in FWD_MAP_SLICES of slice 0
	__u16 port_lo;      // host order: first port of slice 0
	__u16 slice_size;   // host order: ports per slice, > 0
	__u16 slice_count;  // host order: usable slices; ports beyond are unowned
	__u16 flags;        // host order, FWD_ADDR_*
	__u16 gateway;      // host order: FWD_MAP_TARGETS slot of the gateway when FWD_ADDR_GATEWAY
	__u16 slice_shift;  // host order: log2(slice_size) if a power of two (a shift is cheaper than a divide), else 0xffff
	__u32 reserved;     // array elements are 8-byte multiples: the mmap stride is the size
};

// FWD_MAP_SLICES (array, BPF_F_MMAPABLE): one 8-byte word per slice of a local
// shared address, at slice_base + slice. The loader writes a word with one
// aligned 8-byte store through the mmap, and the program reads it with one
// 8-byte load, so a packet sees a slice's old or new owners, never a mix.
// Slots it names are never rewritten while a slice refers to them.
#define FWD_SLICE_OWNER_SELF 0x1      // this server owns the slice: pass
#define FWD_SLICE_PREVIOUS 0x4        // a previous owner is still draining
#define FWD_SLICE_PREVIOUS_SELF 0x8   // ... and it is this server
#define FWD_SLICE_OWNED 0x20          // someone owns the slice (0 word: nobody)

struct fwd_slice {
	__u16 owner;     // host order: FWD_MAP_TARGETS slot of the owner
	__u16 previous;  // host order: FWD_MAP_TARGETS slot of the draining previous owner, or 0
	__u16 flags;     // host order, FWD_SLICE_*
	__u16 zones;     // host order: FWD_MAP_ZONES slot for the handover check, or 0
};

// FWD_MAP_TARGETS (array): where encapsulated packets go. Slot 0 is unused.
#define FWD_TARGET_MAC 0x1  // mac is known (else the kernel FIB is asked per packet)

struct fwd_target {
	__be32 addr;   // network order: outer destination
	__u8 mac[6];   // Ethernet destination when FWD_TARGET_MAC
	__u16 flags;   // host order, FWD_TARGET_*
	__u32 reserved;
};

// FWD_MAP_ZONES (array): conntrack zones of this server's shares of a slice,
// for the handover check (bpf_xdp_ct_lookup needs the zone the flow lives in).
// Run i covers ports (zone_end[i-1], zone_end[i]]; ports past the last used
// run use zone 0.
#define FWD_ZONE_RUNS 8
#define FWD_ZONE_STATELESS 0xffff     // stateless NAT: no conntrack state exists, the packet stays here

struct fwd_zones {
	__u16 zone_end[FWD_ZONE_RUNS];  // host order: last port of run i; 0 ends the list
	__u16 zone_id[FWD_ZONE_RUNS];   // host order: conntrack zone of run i
};

// FWD_MAP_PEERS: key __be32 (network order) unicast address of a fleet server.
// IPIP from these to this server is decapsulated.
struct fwd_peer {
	__u32 server;  // host order: index in the plan's server list (informational)
};

// FWD_MAP_FLOWS (LRU hash): flows this server opened in a slice it took over
// while the previous owner still drains it, as the program attached to the
// uplink's egress (tc) saw their packets leave, after NAT. The handover check
// keeps an answer whose flow is here. It is the check where the kernel's
// bpf_xdp_ct_lookup takes no conntrack zone (struct bpf_ct_opts of 12 bytes,
// as in Linux 6.1): there a lookup finds no flow of a zoned source.
struct fwd_flow {
	__be32 peer_addr;  // network order: the far end (the answer's source)
	__be32 addr;       // network order: the shared address (the answer's destination)
	__be16 peer_port;  // network order
	__be16 port;       // network order: the shared port
	__u8 protocol;     // IPPROTO_TCP or IPPROTO_UDP
	__u8 reserved[3];
};

// The name of the pinned egress program (next to the maps and the link): the
// uplink's tc egress filter runs it.
#define FWD_PIN_RECORD "record"

// Outer TTL of the IPIP header a forwarder adds. A packet sent on a second
// time (the handover's second hop, or on from a server whose view of the
// owner is newer or older than the sender's) carries FWD_OUTER_TTL_LAST:
// its receiver passes it, never sends it on again, so views that disagree
// for a moment cannot make a loop.
#define FWD_OUTER_TTL 64
#define FWD_OUTER_TTL_LAST 63

// FWD_MAP_COUNTERS: per-CPU array indexed by verdict. Every packet the
// program sees increments exactly one verdict.
enum fwd_verdict {
	FWD_V_PASS_OTHER = 0,   // not for a shared address: passed untouched
	FWD_V_PASS_OWN,         // for this server's slice: passed
	FWD_V_FORWARD,          // encapsulated to the slice owner, XDP_TX
	FWD_V_SECOND_HOP,       // sent on a second time (outer TTL FWD_OUTER_TTL_LAST): handover, new owner without
	                        // state, to the previous owner; or tunnelled here but owned elsewhere, to that owner
	FWD_V_REMOTE_DC,        // address of another data centre: encapsulated to its gateway
	FWD_V_DECAP,            // IPIP from a peer: outer header stripped, passed
	FWD_V_ICMP_PASS,        // ICMP error about this server's slice: passed
	FWD_V_ICMP_FORWARD,     // ICMP error about another server's slice: encapsulated to it
	FWD_V_FRAGMENT,         // IPv4 fragment to a local shared address: no port to route by, passed
	FWD_V_MALFORMED,        // truncated or invalid IPv4/IPIP/ICMP: passed for the kernel to judge
	FWD_V_UNOWNED,          // shared address, but no port, port outside the slices, or slice without owner: passed
	FWD_V_NO_NEIGH,         // target MAC unknown and the FIB has no neighbour either: passed
	FWD_V_ERROR,            // bpf_xdp_adjust_head failed: passed unchanged
	FWD_V_COUNT
};

struct fwd_counter {
	__u64 packets;
	__u64 bytes;  // frame bytes as received
};
