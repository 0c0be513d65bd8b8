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
#define FWD_MAP_ADDRS fwd_addrs
#define FWD_MAP_SLICES fwd_slices
#define FWD_MAP_PEERS fwd_peers
#define FWD_MAP_COUNTERS fwd_counters
// FWD_NAME(FWD_MAP_SLICES) is "fwd_slices": the name as a string, for pins.
#define FWD_NAME_(x) #x
#define FWD_NAME(x) FWD_NAME_(x)

// Sizes (entries). Hash maps are BPF_F_NO_PREALLOC: memory follows the fleet.
#define FWD_ADDRS_MAX 131072
#define FWD_SLICES_MAX 1048576
#define FWD_PEERS_MAX 4096

// The one entry of FWD_MAP_CONFIG (array, key __u32 0): who this server is.
struct fwd_config {
	__be32 self_addr;      // network order: outer source of what we encapsulate, outer destination of what we decapsulate
	__u32 uplink_ifindex;  // host order: the interface the program is attached to
	__u8 self_mac[6];      // Ethernet source of what we transmit (the uplink's address)
	__u16 flags;           // host order, reserved (0)
	__u64 object_hash;     // host order: FNV-1a of the loaded BPF object, so a loader can tell whether the pinned program is its own
};

// FWD_MAP_ADDRS: key __be32 (network order) shared address.
#define FWD_ADDR_LOCAL 0x1   // lives in this data centre: route by slice
#define FWD_ADDR_GATEWAY 0x2 // another data centre with a gateway: encapsulate to gateway
#define FWD_ADDR_GATEWAY_MAC 0x4 // gateway_mac is known (else the kernel FIB picks the next hop)

struct fwd_address {
	__u16 port_lo;      // host order: first port of slice 0
	__u16 slice_size;   // host order: ports per slice, > 0
	__u16 slice_count;  // host order: usable slices; ports beyond are unowned
	__u16 flags;        // host order, FWD_ADDR_*
	__be32 gateway;     // network order: the data centre's gateway when FWD_ADDR_GATEWAY
	__u8 gateway_mac[6];
	__u8 pad[2];
};

// FWD_MAP_SLICES: one entry per slice of a local shared address. The whole
// forwarding decision for a slice is in one value, so moving a slice is one
// map update, which the kernel applies atomically (hash map element swap).
struct fwd_slice_key {
	__be32 addr;   // network order: shared address
	__u32 slice;   // host order: slice index
};

#define FWD_SLICE_OWNER_SELF 0x1      // this server owns the slice: pass
#define FWD_SLICE_OWNER_MAC 0x2       // owner_mac is known
#define FWD_SLICE_PREVIOUS 0x4        // a previous owner is still draining
#define FWD_SLICE_PREVIOUS_SELF 0x8   // ... and it is this server
#define FWD_SLICE_PREVIOUS_MAC 0x10   // previous_mac is known
#define FWD_SLICE_UNOWNED 0x20        // nobody owns the slice: pass

// Conntrack zones of this server's share of a slice, for the handover check
// (bpf_xdp_ct_lookup needs the zone the flow lives in). Run i covers ports
// (zone_end[i-1], zone_end[i]]; ports past the last used run use zone 0.
#define FWD_ZONE_RUNS 8
#define FWD_ZONE_STATELESS 0xffff     // stateless NAT: no conntrack state exists, the packet stays here

struct fwd_slice {
	__be32 owner_addr;      // network order
	__be32 previous_addr;   // network order, 0 when no handover
	__u8 owner_mac[6];
	__u8 previous_mac[6];
	__u16 flags;            // host order, FWD_SLICE_*
	__u16 pad;
	__u16 zone_end[FWD_ZONE_RUNS];  // host order: last port of run i; 0 ends the list
	__u16 zone_id[FWD_ZONE_RUNS];   // host order: conntrack zone of run i
};

// FWD_MAP_PEERS: key __be32 (network order) unicast address of a fleet server.
// IPIP from these to this server is decapsulated.
struct fwd_peer {
	__u32 server;  // host order: index in the plan's server list (informational)
};

// FWD_MAP_COUNTERS: per-CPU array indexed by verdict. Every packet the
// program sees increments exactly one verdict.
enum fwd_verdict {
	FWD_V_PASS_OTHER = 0,   // not for a shared address: passed untouched
	FWD_V_PASS_OWN,         // for this server's slice: passed
	FWD_V_FORWARD,          // encapsulated to the slice owner, XDP_TX
	FWD_V_SECOND_HOP,       // handover: new owner without state, encapsulated to the previous owner
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
