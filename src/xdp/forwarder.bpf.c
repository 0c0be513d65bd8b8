// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
// XDP forwarder on the uplink: return traffic and ICMP errors for a shared address reach the owner of the port's slice.
//
// Order of decisions (docs/xdp.md):
//  1. IPIP from a fleet server to this server: strip the outer header, go on
//     with the inner packet (it may still need the handover second hop).
//  2. to a shared address of this data centre: slice = (dport - lo) / size;
//     ours -> pass; another server's -> IPIP to it, XDP_TX.
//  3. to a shared address of another data centre: IPIP to its gateway.
//  4. ICMP unreachable / time exceeded about a shared address: route by the
//     SOURCE port of the quoted inner packet (the packet we sent).
//  5. everything else: pass untouched.
// Policies: IPv4 fragments of a local shared address carry no port; they are
// passed (the owner reassembles them when all fragments land on it). Packets
// that cannot be parsed are passed for the kernel to judge. Both are counted.
// The program never drops.
//
// portslice_record, the uplink's tc egress filter, notes the flows this
// server opens in a slice it takes over (fwd_flows), for the handover check.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "forwarder_kern_user.h"

// Kernel types of the conntrack kfuncs. nf_conn is only ever an opaque pointer;
// it needs a body so that libbpf finds it compatible with the kernel's BTF.
struct nf_conn {
	int unused;
};

// As in kernels whose lookup takes a zone (16 bytes). Older ones (Linux 6.1)
// have 12 bytes, no ct_zone_*, refuse any other size and look up in zone 0
// only: has_state asks the kernel's BTF (CO-RE) before calling.
struct bpf_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u16 ct_zone_id;
	__u8 ct_zone_dir;
	__u8 reserved[3];
};

extern struct nf_conn *bpf_xdp_ct_lookup(struct xdp_md *ctx, struct bpf_sock_tuple *tuple, __u32 tuple_size,
					 struct bpf_ct_opts *opts, __u32 opts_size) __ksym;
extern void bpf_ct_release(struct nf_conn *ct) __ksym;

// linux/icmp.h drags in libc's socket headers, which do not build for -target bpf.
struct icmp_echo_hdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 id;       // echo: the identifier, which NAT treats as the port
	__be16 sequence;
};
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11

#define CT_CURRENT_NETNS (-1)
#define CT_ZONE_DIR_BOTH 3
#define IP_MF 0x2000
#define IP_DF 0x4000
#define IP_OFFSET 0x1fff

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fwd_config);
} FWD_MAP_CONFIG SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FWD_ADDR_INDEX_SIZE);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct fwd_address);
} FWD_MAP_ADDR_INDEX SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FWD_ADDRS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __be32);
	__type(value, struct fwd_address);
} FWD_MAP_ADDRS SEC(".maps");

// Sized by the loader (bpf_map__set_max_entries) to the plan.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FWD_SLICES_DEFAULT);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64); // struct fwd_slice, read as one word
} FWD_MAP_SLICES SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FWD_TARGETS_MAX);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct fwd_target);
} FWD_MAP_TARGETS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FWD_ZONES_MAX);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct fwd_zones);
} FWD_MAP_ZONES SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FWD_PEERS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __be32);
	__type(value, struct fwd_peer);
} FWD_MAP_PEERS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FWD_FLOWS_MAX);
	__type(key, struct fwd_flow);
	__type(value, __u64); // bpf_ktime_get_ns() when the flow was first noted
} FWD_MAP_FLOWS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FWD_V_COUNT);
	__type(key, __u32);
	__type(value, struct fwd_counter);
} FWD_MAP_COUNTERS SEC(".maps");

static __always_inline int verdict(__u32 v, __u64 len, int action)
{
	struct fwd_counter *c = bpf_map_lookup_elem(&FWD_MAP_COUNTERS, &v);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
	return action;
}

static __always_inline __u16 ip_checksum(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

// Prepend an outer IPv4 header (this server -> dst, protocol IPIP) and a new
// Ethernet header, then transmit on the interface the packet came in on.
// The destination is FWD_MAP_TARGETS slot `slot`: its MAC if known, else the
// kernel FIB's next hop.
static __always_inline int encapsulate(struct xdp_md *ctx, __u32 slot, __u32 v, __u64 len)
{
	__u32 zero = 0;
	const struct fwd_config *cfg = bpf_map_lookup_elem(&FWD_MAP_CONFIG, &zero);
	if (!cfg || cfg->self_addr == 0)
		return verdict(FWD_V_PASS_OTHER, len, XDP_PASS); // not configured yet

	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct iphdr *inner = data + sizeof(struct ethhdr);
	__u8 dmac[ETH_ALEN];

	const struct fwd_target *t = bpf_map_lookup_elem(&FWD_MAP_TARGETS, &slot);
	if (!t || t->addr == 0)
		return verdict(FWD_V_NO_NEIGH, len, XDP_PASS);
	__be32 dst = t->addr;

	if ((void *)(inner + 1) > end)
		return verdict(FWD_V_MALFORMED, len, XDP_PASS);
	__be16 inner_len = inner->tot_len;
	__be16 inner_id = inner->id;
	__be16 df = inner->frag_off & bpf_htons(IP_DF);
	__u8 tos = inner->tos;

	if (t->flags & FWD_TARGET_MAC) {
		__builtin_memcpy(dmac, t->mac, ETH_ALEN);
	} else {
		struct bpf_fib_lookup fib = {};

		fib.family = 2; // AF_INET
		fib.ipv4_src = cfg->self_addr;
		fib.ipv4_dst = dst;
		fib.tot_len = bpf_ntohs(inner_len) + sizeof(struct iphdr);
		fib.ifindex = ctx->ingress_ifindex;
		if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS ||
		    fib.ifindex != ctx->ingress_ifindex)
			return verdict(FWD_V_NO_NEIGH, len, XDP_PASS);
		__builtin_memcpy(dmac, fib.dmac, ETH_ALEN);
	}

	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr)))
		return verdict(FWD_V_ERROR, len, XDP_PASS);
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *outer = data + sizeof(struct ethhdr);
	if ((void *)(outer + 1) > end)
		return verdict(FWD_V_ERROR, len, XDP_DROP); // cannot happen: the headroom was just added

	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, cfg->self_mac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	outer->version = 4;
	outer->ihl = sizeof(struct iphdr) / 4;
	outer->tos = tos;
	outer->tot_len = bpf_htons(bpf_ntohs(inner_len) + sizeof(struct iphdr));
	outer->id = inner_id;
	outer->frag_off = df; // RFC 2003 3.1: copy DF so path MTU discovery works through the tunnel
	outer->ttl = v == FWD_V_SECOND_HOP ? FWD_OUTER_TTL_LAST : FWD_OUTER_TTL;
	outer->protocol = IPPROTO_IPIP;
	outer->check = 0;
	outer->saddr = cfg->self_addr;
	outer->daddr = dst;
	outer->check = ip_checksum(outer);
	return verdict(v, len, XDP_TX);
}

// The conntrack zone of this server's share holding port (host order).
static __always_inline __u16 zone_of(__u32 slot, __u16 port)
{
	const struct fwd_zones *s = bpf_map_lookup_elem(&FWD_MAP_ZONES, &slot);

	if (!s)
		return 0;
#pragma unroll
	for (int i = 0; i < FWD_ZONE_RUNS; i++) {
		if (s->zone_end[i] == 0)
			break;
		if (port <= s->zone_end[i])
			return s->zone_id[i];
	}
	return 0;
}

// Does this server hold the flow of this return packet? It does when its
// egress program saw the flow leave during the handover (fwd_flows), or when
// the kernel's conntrack knows the flow in the share's zone.
static __always_inline int has_state(struct xdp_md *ctx, const struct iphdr *ip, __be16 sport, __be16 dport,
				     __u16 zone)
{
	struct bpf_sock_tuple tuple = {};
	struct bpf_ct_opts opts = {};
	struct fwd_flow flow = {};
	struct nf_conn *ct;

	if (zone == FWD_ZONE_STATELESS)
		return 1;
	flow.peer_addr = ip->saddr;
	flow.addr = ip->daddr;
	flow.peer_port = sport;
	flow.port = dport;
	flow.protocol = ip->protocol;
	if (bpf_map_lookup_elem(&FWD_MAP_FLOWS, &flow))
		return 1;
	// A kernel without ct_zone_id refuses our 16-byte options, and could
	// only look in zone 0, where no flow of a conntrack source lives.
	if (!bpf_core_field_exists(struct bpf_ct_opts, ct_zone_id))
		return 0;
	tuple.ipv4.saddr = ip->saddr;
	tuple.ipv4.daddr = ip->daddr;
	tuple.ipv4.sport = sport;
	tuple.ipv4.dport = dport;
	opts.netns_id = CT_CURRENT_NETNS;
	opts.l4proto = ip->protocol;
	opts.ct_zone_id = zone;
	opts.ct_zone_dir = CT_ZONE_DIR_BOTH;
	ct = bpf_xdp_ct_lookup(ctx, &tuple, sizeof(tuple.ipv4), &opts, sizeof(opts));
	if (!ct)
		return 0;
	bpf_ct_release(ct);
	return 1;
}

#ifdef FWD_BENCH_UNDO
// Benchmark build only (tests/bench/xdp_bench.cpp, object forwarder_bench.bpf.o):
// a test run hands every round the previous round's output, so undo an
// encapsulation by this server and let each round see the original frame.
// Both programs run this check; only rounds that encapsulated pay the undo
// (one helper call), so forward figures are upper bounds.
static __always_inline void bench_undo(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	__u32 zero = 0;

	if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_IPIP)
		return;
	const struct fwd_config *cfg = bpf_map_lookup_elem(&FWD_MAP_CONFIG, &zero);
	if (!cfg || ip->saddr != cfg->self_addr || bpf_xdp_adjust_head(ctx, sizeof(struct iphdr)))
		return;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) <= end)
		eth->h_proto = bpf_htons(ETH_P_IP); // the MACs are left as they are: the program ignores them
}
#define BENCH_UNDO(ctx) bench_undo(ctx)
#else
#define BENCH_UNDO(ctx) ((void)(ctx))
#endif

// The shared address `addr` (network order), or 0. Usually one inlined array
// lookup; the hash only for addresses whose index bucket is shared.
static __always_inline const struct fwd_address *find_address(__be32 addr)
{
	__u32 bucket = FWD_ADDR_BUCKET(bpf_ntohl(addr));
	const struct fwd_address *a = bpf_map_lookup_elem(&FWD_MAP_ADDR_INDEX, &bucket);

	if (!a)
		return 0;
	if (a->addr == addr)
		return a;
	if (!(a->flags & FWD_ADDR_COLLISION))
		return 0;
	return bpf_map_lookup_elem(&FWD_MAP_ADDRS, &addr);
}

SEC("xdp")
int portslice_fwd(struct xdp_md *ctx)
{
	BENCH_UNDO(ctx);
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u64 len = end - data;
	__u32 zero = 0;
	int tunnelled = 0;
	int last_hop = 0; // tunnelled as a second hop: passed here whatever our view

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return verdict(FWD_V_MALFORMED, len, XDP_PASS);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return verdict(FWD_V_PASS_OTHER, len, XDP_PASS);
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl < 5)
		return verdict(FWD_V_MALFORMED, len, XDP_PASS);

	// 1. IPIP from a peer forwarder.
	const struct fwd_config *cfg = 0;
	if (ip->protocol == IPPROTO_IPIP)
		cfg = bpf_map_lookup_elem(&FWD_MAP_CONFIG, &zero);
	if (cfg && ip->daddr == cfg->self_addr && bpf_map_lookup_elem(&FWD_MAP_PEERS, &ip->saddr)) {
		if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
			return verdict(FWD_V_FRAGMENT, len, XDP_PASS);
		last_hop = ip->ttl == FWD_OUTER_TTL_LAST;
		__u32 outer_len = ip->ihl * 4;
		struct iphdr *in = (void *)ip + outer_len;
		if ((void *)(in + 1) > end || in->version != 4 || in->ihl < 5)
			return verdict(FWD_V_MALFORMED, len, XDP_PASS);
		struct ethhdr copy;
		__builtin_memcpy(&copy, eth, sizeof(copy));
		if (bpf_xdp_adjust_head(ctx, (int)outer_len))
			return verdict(FWD_V_ERROR, len, XDP_PASS);
		data = (void *)(long)ctx->data;
		end = (void *)(long)ctx->data_end;
		eth = data;
		if ((void *)(eth + 1) > end)
			return verdict(FWD_V_ERROR, len, XDP_DROP); // cannot happen: the inner header was checked
		__builtin_memcpy(eth, &copy, sizeof(copy));
		ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return verdict(FWD_V_ERROR, len, XDP_DROP);
		tunnelled = 1;
	}
	const __u32 pass_verdict = tunnelled ? FWD_V_DECAP : FWD_V_PASS_OTHER;

	const struct fwd_address *a = find_address(ip->daddr);
	if (!a)
		return verdict(pass_verdict, len, XDP_PASS);

	// 3. Another data centre's address: no port needed, fragments included.
	// A tunnelled packet never goes back out (a peer with a stale view must
	// not make a loop).
	if (!(a->flags & FWD_ADDR_LOCAL)) {
		if (tunnelled || !(a->flags & FWD_ADDR_GATEWAY))
			return verdict(tunnelled ? FWD_V_DECAP : FWD_V_UNOWNED, len, XDP_PASS);
		return encapsulate(ctx, a->gateway, FWD_V_REMOTE_DC, len);
	}

	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return verdict(tunnelled ? FWD_V_DECAP : FWD_V_FRAGMENT, len, XDP_PASS);

	// 2. and 4.: find the port that names the slice.
	void *l4 = (void *)ip + ip->ihl * 4;
	__be16 port;          // network order: the port the slice is chosen by
	__be16 peer_port = 0; // network order: the other end's port, for the conntrack tuple
	int icmp_error = 0;
	if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) {
		__be16 *ports = l4;
		if ((void *)(ports + 2) > end)
			return verdict(FWD_V_MALFORMED, len, XDP_PASS);
		peer_port = ports[0];
		port = ports[1];
	} else if (ip->protocol == IPPROTO_ICMP) {
		struct icmp_echo_hdr *icmp = l4;
		if ((void *)(icmp + 1) > end)
			return verdict(FWD_V_MALFORMED, len, XDP_PASS);
		if (icmp->type == ICMP_ECHOREPLY) {
			port = icmp->id; // SNAT maps the echo identifier into the slice
		} else if (icmp->type == ICMP_DEST_UNREACH || icmp->type == ICMP_TIME_EXCEEDED) {
			struct iphdr *quoted = (void *)(icmp + 1);
			if ((void *)(quoted + 1) > end || quoted->version != 4 || quoted->ihl < 5 ||
			    quoted->saddr != ip->daddr)
				return verdict(FWD_V_MALFORMED, len, XDP_PASS);
			if (quoted->frag_off & bpf_htons(IP_OFFSET))
				return verdict(tunnelled ? FWD_V_DECAP : FWD_V_UNOWNED, len, XDP_PASS);
			void *ql4 = (void *)quoted + quoted->ihl * 4;
			if (quoted->protocol == IPPROTO_TCP || quoted->protocol == IPPROTO_UDP) {
				__be16 *ports = ql4;
				if ((void *)(ports + 1) > end)
					return verdict(FWD_V_MALFORMED, len, XDP_PASS);
				port = ports[0];
			} else if (quoted->protocol == IPPROTO_ICMP) {
				struct icmp_echo_hdr *qicmp = ql4;
				if ((void *)(qicmp + 1) > end)
					return verdict(FWD_V_MALFORMED, len, XDP_PASS);
				port = qicmp->id;
			} else {
				return verdict(tunnelled ? FWD_V_DECAP : FWD_V_UNOWNED, len, XDP_PASS);
			}
			icmp_error = 1;
		} else {
			return verdict(tunnelled ? FWD_V_DECAP : FWD_V_UNOWNED, len, XDP_PASS);
		}
	} else {
		return verdict(tunnelled ? FWD_V_DECAP : FWD_V_UNOWNED, len, XDP_PASS);
	}

	__u32 p = bpf_ntohs(port);
	if (p < a->port_lo || a->slice_size == 0)
		return verdict(tunnelled ? FWD_V_DECAP : FWD_V_UNOWNED, len, XDP_PASS);
	__u32 slice = a->slice_shift < 16 ? (p - a->port_lo) >> a->slice_shift : (p - a->port_lo) / a->slice_size;
	if (slice >= a->slice_count)
		return verdict(tunnelled ? FWD_V_DECAP : FWD_V_UNOWNED, len, XDP_PASS);
	__u32 index = a->slice_base + slice;
	const __u64 *word = bpf_map_lookup_elem(&FWD_MAP_SLICES, &index);
	if (!word)
		return verdict(tunnelled ? FWD_V_DECAP : FWD_V_UNOWNED, len, XDP_PASS);
	// One 8-byte load: the loader replaces a slice's word with one store.
	union {
		__u64 word;
		struct fwd_slice s;
	} sl = { .word = *(volatile const __u64 *)word };
	if (!(sl.s.flags & FWD_SLICE_OWNED))
		return verdict(tunnelled ? FWD_V_DECAP : FWD_V_UNOWNED, len, XDP_PASS);

	if (sl.s.flags & FWD_SLICE_OWNER_SELF) {
		// Handover: flows the new owner has no state for belong to the
		// previous owner, which is still draining them. ICMP stays.
		if ((sl.s.flags & FWD_SLICE_PREVIOUS) && !(sl.s.flags & FWD_SLICE_PREVIOUS_SELF) && !last_hop &&
		    ip->protocol != IPPROTO_ICMP && !has_state(ctx, ip, peer_port, port, zone_of(sl.s.zones, p)))
			return encapsulate(ctx, sl.s.previous, FWD_V_SECOND_HOP, len);
		if (tunnelled)
			return verdict(FWD_V_DECAP, len, XDP_PASS);
		return verdict(icmp_error ? FWD_V_ICMP_PASS : FWD_V_PASS_OWN, len, XDP_PASS);
	}
	// Someone sent it to us on purpose. As the draining previous owner we
	// take it. Otherwise the sender and we disagree about the owner: one of
	// us has not applied the latest move yet (during set-owner on the fleet,
	// the old owner's answers reach the new owner before it knows). Send it
	// on once, to the owner we know, as the last hop.
	if (tunnelled) {
		if (!last_hop && !(sl.s.flags & FWD_SLICE_PREVIOUS_SELF))
			return encapsulate(ctx, sl.s.owner, FWD_V_SECOND_HOP, len);
		return verdict(FWD_V_DECAP, len, XDP_PASS);
	}
	return encapsulate(ctx, sl.s.owner, icmp_error ? FWD_V_ICMP_FORWARD : FWD_V_FORWARD, len);
}

// The uplink's egress (tc, after NAT). A flow this server opens in a slice it
// took over while the previous owner drains it is noted in fwd_flows: its
// answers are this server's even where the kernel's conntrack lookup cannot
// tell (has_state). Everything passes unchanged.
SEC("tc")
int portslice_record(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	const __u32 ip_end = sizeof(struct ethhdr) + sizeof(struct iphdr);

	// Headers outside the linear part (rare): pulled in, if the packet has them.
	if (data + ip_end > end) {
		if (skb->len < ip_end || bpf_skb_pull_data(skb, ip_end))
			return TC_ACT_OK;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
	}
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->version != 4 || ip->ihl < 5 ||
	    (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP) || (ip->frag_off & bpf_htons(IP_OFFSET)))
		return TC_ACT_OK;
	__u32 ports_end = sizeof(struct ethhdr) + ip->ihl * 4 + 2 * sizeof(__be16);
	if (data + ports_end > end) {
		if (skb->len < ports_end || bpf_skb_pull_data(skb, ports_end))
			return TC_ACT_OK;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		eth = data;
		ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return TC_ACT_OK;
	}
	__be16 *ports = (void *)ip + ip->ihl * 4; // IP options honoured, as the forwarder does
	if ((void *)(ports + 2) > end)
		return TC_ACT_OK;

	const struct fwd_address *a = find_address(ip->saddr);
	if (!a || !(a->flags & FWD_ADDR_LOCAL))
		return TC_ACT_OK;
	__u32 p = bpf_ntohs(ports[0]);
	if (p < a->port_lo || a->slice_size == 0)
		return TC_ACT_OK;
	__u32 slice = a->slice_shift < 16 ? (p - a->port_lo) >> a->slice_shift : (p - a->port_lo) / a->slice_size;
	if (slice >= a->slice_count)
		return TC_ACT_OK;
	__u32 index = a->slice_base + slice;
	const __u64 *word = bpf_map_lookup_elem(&FWD_MAP_SLICES, &index);
	if (!word)
		return TC_ACT_OK;
	union {
		__u64 word;
		struct fwd_slice s;
	} sl = { .word = *(volatile const __u64 *)word };
	const __u16 handover = FWD_SLICE_OWNED | FWD_SLICE_OWNER_SELF | FWD_SLICE_PREVIOUS;
	if ((sl.s.flags & (handover | FWD_SLICE_PREVIOUS_SELF)) != handover)
		return TC_ACT_OK;

	// Keyed as has_state builds the key from the answer.
	struct fwd_flow flow = {};
	flow.peer_addr = ip->daddr;
	flow.addr = ip->saddr;
	flow.peer_port = ports[1];
	flow.port = ports[0];
	flow.protocol = ip->protocol;
	if (bpf_map_lookup_elem(&FWD_MAP_FLOWS, &flow))
		return TC_ACT_OK; // known (the lookup also marks it recently used)
	__u64 now = bpf_ktime_get_ns();
	bpf_map_update_elem(&FWD_MAP_FLOWS, &flow, &now, BPF_ANY);
	return TC_ACT_OK;
}

// The reference for the benchmark: what any XDP program costs at least.
SEC("xdp")
int portslice_pass(struct xdp_md *ctx)
{
	BENCH_UNDO(ctx);
	return XDP_PASS;
}

#ifdef FWD_BENCH_UNDO
// Benchmark build only: what the undo costs (two head adjustments, so half of
// the difference to portslice_pass is one).
SEC("xdp")
int portslice_adjust2(struct xdp_md *ctx)
{
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr)) == 0)
		bpf_xdp_adjust_head(ctx, (int)sizeof(struct iphdr));
	return XDP_PASS;
}
#endif

char LICENSE[] SEC("license") = "Dual MIT/GPL";
