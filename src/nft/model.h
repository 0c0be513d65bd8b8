// SPDX-License-Identifier: MIT
// The table of a Plan as data: sets, maps and their typed elements, shared by the text renderer and the netlink applier.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <optional>
#include <variant>
#include <vector>

#include "plan/plan.h"

namespace portslice::nft {

inline constexpr const char *kTableName = "portslice";
// The companion table of netdev family on the uplink's egress hook: it counts
// per conntrack source the new flows that left, after conntrack confirmed them
// (see egressModel).
inline constexpr const char *kEgressTableName = "portslice_egress";

// The leak guard's fast path: `my_blocks` holds the aligned blocks of this
// many ports that lie wholly inside this server's slices, so that a packet in
// one costs a hash lookup (`th sport & kPortBlockMask`), whatever the number
// of addresses; only the other ports pay the concatenated interval lookup in
// `my_ports` (pipapo, linear in its size; in shards in a large fleet, see
// portForm). 1024 divides the default slices
// (1024-65535, 2048 ports), so there every port of a slice is in a block.
inline constexpr uint32_t kPortBlock = 1024;
inline constexpr uint32_t kPortBlockMask = 0x10000 - kPortBlock; // 64512, as nft prints it

// What a key component, map data or a set target reads from a packet: the
// typed form of the nft expressions the table uses ("ip saddr", "ct zone").
enum class Selector : uint8_t {
	Iifname,
	IpSaddr,
	IpDaddr,
	ThSport,
	ThDport,
	MetaMark,
	MetaCgroup,
	MetaSkuid,
	CtZone,
	CtMark,
	// @th,224,16 of an ICMP error: the source port of the quoted IPv4
	// packet, a raw 16-bit payload.
	QuotedSport,
};

// One field of a key or of map data. Ranges (lo < hi) only in interval sets.
enum class FieldType : uint8_t {
	IfName, // iifname: string, NUL padded to 16 bytes
	Ipv4,   // ip saddr / ip daddr: network byte order
	Port,   // th sport / th dport: network byte order
	Mark,   // meta mark / ct mark: host byte order, 32 bits
	Cgroup, // meta cgroup: host byte order, 32 bits
	Uid,    // meta skuid: host byte order, 32 bits
	Zone,   // ct zone: host byte order, 16 bits
	// The quoted source port: network byte order in the kernel; nft prints
	// it as a hex integer ("0x400").
	QuotedPort,
};

FieldType fieldType(Selector s);

struct Field {
	FieldType type;
	uint32_t lo = 0; // host byte order for every type
	uint32_t hi = 0;
	std::string name; // IfName only
};

struct Element {
	std::vector<Field> key;
	std::vector<Field> data; // map data (empty for sets and objref maps)
	std::string counter;     // objref maps: the counter's name
	std::string chain;       // verdict maps: the chain it jumps to
	bool gotoChain = false;  // ... or goes to (`goto`: a return there returns from the caller)
};

// VerdictMap: `type KEY : verdict`, every element `jump CHAIN` or `goto CHAIN`.
enum class SetKind : uint8_t { Set, Map, CounterMap, VerdictMap };

// A named set or map. `key` and `data` are the typed components it carries;
// `typeofDecl` says whether nft declares it by expressions ("typeof ip saddr
// . th sport") or by datatypes ("type ipv4_addr"), which changes the user
// data the kernel keeps for it.
struct Set {
	std::string name;
	SetKind kind = SetKind::Set;
	std::vector<Selector> key;
	std::vector<Selector> data; // Map only
	bool typeofDecl = true;
	bool interval = false;     // flags interval
	bool dataInterval = false; // map data holds a range (nat port ranges)
	// New flows take their source ports from this map (nat_port, nat_addr,
	// sl_egress): a server that starts draining a slice empties these first.
	bool egress = false;
	std::vector<Element> elements; // sorted by key

	std::vector<FieldType> keyTypes() const;
	bool sameDeclaration(const Set &o) const
	{
		return name == o.name && kind == o.kind && key == o.key && data == o.data && typeofDecl == o.typeofDecl &&
		       interval == o.interval && dataInterval == o.dataInterval;
	}
};

// ---- rules: typed statement lists ----

// A key loaded into the registers: one or more selectors, concatenated;
// `mask` (host order) is ANDed into the last component ("ip saddr &
// 255.255.255.0", "ip saddr . th sport & 64512"), or with `maskFirst` into
// the first ("th sport & 65408 . ip saddr": nft 1.0.6 parses a masked
// concatenation before `map` only in this order).
struct Key {
	std::vector<Selector> parts;
	std::optional<uint32_t> mask;
	bool maskFirst = false;
	bool operator==(const Key &) const = default;
};

// A fixed match on packet or connection state.
struct Match {
	enum class What : uint8_t {
		Iifname,          // iifname "NAME" (or != with negate)
		Oifname,          // oifname "NAME"
		L4ProtoTcpUdp,    // meta l4proto { tcp, udp }
		IcmpErrorTypes,   // icmp type { destination-unreachable, time-exceeded }
		CtStateNew,       // ct state new
		CtDirectionReply, // ct direction reply
	};
	What what;
	bool negate = false;
	std::string ifname; // Iifname, Oifname
	bool operator==(const Match &) const = default;
};

// KEY @set, or KEY != @set.
struct Lookup {
	Key key;
	std::string set;
	bool negate = false;
	bool operator==(const Lookup &) const = default;
};

// KEY vmap @map: jump to the chain the map names for the key (nothing
// when the key is not in it).
struct Dispatch {
	Key key;
	std::string map;
	bool operator==(const Dispatch &) const = default;
};

// What a statement can write.
enum class Target : uint8_t { CtZone, CtMark, MetaMark, IpSaddr, IpDaddr };

// TARGET set KEY map @map.
struct MapAssign {
	Target target;
	Key key;
	std::string map;
	bool operator==(const MapAssign &) const = default;
};

// TARGET set SOURCE ("meta mark set ct mark").
struct Assign {
	Target target;
	Selector source;
	bool operator==(const Assign &) const = default;
};

// counter name KEY map @map (with key), or counter name "NAME".
struct CounterRef {
	std::optional<Key> key;
	std::string name; // the map, or the counter
	bool operator==(const CounterRef &) const = default;
};

// snat ip to KEY map @map; `ports`: the data is address . port range.
struct Snat {
	Key key;
	std::string map;
	bool ports = false;
	bool operator==(const Snat &) const = default;
};

struct Notrack {
	bool operator==(const Notrack &) const = default;
};

struct Verdict {
	enum class Kind : uint8_t { Accept, Drop, Return, Jump };
	Kind kind;
	std::string chain; // Jump
	bool operator==(const Verdict &) const = default;
};

// Every statement has a text form (render.cpp) and a netlink form
// (writer.cpp); both visit all alternatives, so a statement without either
// does not compile.
using Statement = std::variant<Match, Lookup, MapAssign, Assign, CounterRef, Snat, Notrack, Verdict, Dispatch>;

struct Rule {
	std::vector<Statement> statements;
	bool operator==(const Rule &) const = default;
};

struct Chain {
	std::string name;
	std::string hook;     // "" for a regular chain; "egress" only in the netdev table
	std::string type;     // "filter" or "nat"
	std::string priority; // as nft prints it: "raw", "srcnat + 10"
	int priorityValue = 0;
	std::vector<Rule> rules;
	std::string device; // netdev hooks: the interface
	bool operator==(const Chain &) const = default;
};

// Which classification keys a source uses, in the fixed order of FieldType.
struct Shape {
	bool iifname = false, saddr = false, mark = false, cgroup = false, uid = false;

	static Shape of(const config::Match &match);
	std::string name() const;    // "iif_saddr"
	std::vector<Selector> selectors() const; // iifname . ip saddr
	std::vector<FieldType> types() const;
	bool inPrerouting() const { return !cgroup && !uid; } // no socket on forwarded packets
	bool inOutput() const { return !iifname; }            // no input interface on local packets
	auto operator<=>(const Shape &) const = default;
};

// The mark of a conntrack source: ct mark of its connections and fwmark of
// its answers. Equal to plan::kRouteMarkBase + zone.
uint32_t sourceMark(const plan::PlannedSource &source);

enum class Family : uint8_t { Inet, Netdev };

struct TableModel {
	Family family = Family::Inet;
	std::string tableName = kTableName;
	std::string comment; // "portslice generation G plan HASH server NAME"; as of the last full replace
	uint64_t generation = 0; // also the one element of the first set, `generation` (generationSet)
	std::string uplink;
	std::vector<Shape> shapes; // in use, ordered
	// Prefix lengths of the conntrack sources matched by saddr alone,
	// ascending: one exact-match map zone_saddr_<length> each, keyed on the
	// masked address (a hash lookup, where an interval map of all prefixes
	// costs a search that grows with their number).
	std::vector<uint8_t> zoneSaddrLengths;
	// Shards of the stateless maps (portForm): 1 is the plain form.
	uint32_t shards = 1;
	// The unit form's unit (portForm), or 0.
	uint32_t statelessUnit = 0;
	std::vector<std::string> counters; // named counters, creation order
	std::vector<Set> sets;             // creation order
	std::vector<Chain> chains;         // creation order; rules in order

	const Set *find(const std::string &name) const;
};

// Plan -> table. The structure (sets, chains, rules) depends only on the
// uplink and the shapes in use; everything else is elements. Without
// `portElements` the sets that follow from slices and ports (my_ports, the
// NAT maps: most of a large table), and those of one element per shared
// address or stateless source (shared, count_addr, stateless_saddr,
// count_sl, guard_sl: most of the rest) are left empty, to be filled one at
// a time with PortSetSource.
TableModel buildModel(const plan::Plan &plan, uint64_t generation, bool portElements = true);
// Whether buildModel(…, false) leaves set `name` empty for PortSetSource.
bool isPortSet(std::string_view name);

// The stateless maps hold one element per inside address: 160,000 for
// 10,000 sources of a /28. They are concatenated interval maps, whose
// kernel backend (pipapo) deletes an element, and looks one up, at a cost
// that grows with the whole map. So a large fleet splits them in shards of
// about kShardElements: sl_egress_K and sl_return_K, each a map with a chain
// of one rule that rewrites through it, reached through a verdict map by the
// inside prefix (sl_egress_shard, one element per stateless source) or by
// the shared address (sl_return_shard, one per address). A source's blocks
// are in shard (its index mod shards), an address's answers in shard (its
// index mod shards). The count is a power of two that depends only on the
// sources' prefixes, so every plan of one config has the same table shape;
// 1 (up to kShardElements inside addresses) keeps the plain maps sl_egress
// and sl_return.
// The leak guard's my_ports (one element per slice of this server) comes in
// as many shards, my_ports_K, by the address's index mod shards: the guard
// goes to the address's chain my_ports_K through the verdict map
// my_ports_shard (every shared address, `goto`), which returns from the
// guard when the port is in my_ports_K and drops the packet otherwise. A
// slice that comes or goes is then an element of a set of a few elements,
// not of one that holds a slice of every address.
// The unit form: where every stateless block and every slice is made of
// aligned units of one power of two (`unit`: the largest dividing every
// stateless block, at most kPortBlock, a block at most kMaxUnitsPerBlock of
// them, every shared address's first port and slice size multiples of
// kPortBlock), a large fleet needs no interval map. sl_egress_K and
// sl_return_K are hash maps keyed on the first port of a unit and the inside
// (or shared) address, `th sport & MASK . ip saddr` (a hash lookup, and a
// deletion that costs the same whatever the map's size: 16 deletions from a
// 156-element interval shard cost the kernel about 3 ms at N = 10,000). They
// come in kUnitParts parts, which the verdict maps sl_egress_shard and
// sl_return_shard pick by address bits: an inside address's blocks by its
// bits 4-7 (`ip saddr & 0.0.0.240`: a /28 source's blocks in one part), an
// address's answers by its last four bits (`ip daddr & 0.0.0.15`). A part
// flushed by hand is then restored in a fraction of a full apply, and a
// move changes two parts, not every one.
// my_ports stays empty, since my_blocks holds every port of this server's
// slices. Small fleets (one shard) keep the plain maps.
inline constexpr uint32_t kShardElements = 256;
inline constexpr uint32_t kMaxShards = 1024;
inline constexpr uint32_t kMaxUnitsPerBlock = 16;
// The table's form of the stateless maps: shards (1: no shard; in the unit
// form, kUnitParts parts by address bits) and unit (0: interval maps).
inline constexpr uint32_t kUnitParts = 16;
inline constexpr uint32_t kEgressPartMask = 0xf0; // host order: 0.0.0.240
inline constexpr uint32_t kReturnPartMask = 0x0f; // 0.0.0.15
struct PortForm {
	uint32_t shards = 1;
	uint32_t unit = 0;
	// Shards of my_ports: none in the unit form, where it stays empty.
	uint32_t portShards() const { return unit > 0 ? 1 : shards; }
};
PortForm portForm(const plan::Plan &plan);
// "sl_egress" for one shard, "sl_egress_3" for shard 3 of more.
std::string shardName(std::string_view base, uint32_t shard, uint32_t shards);
// The sets of buildModel(plan, 0) without their elements, at the cost of a
// walk over the sources (what naming the elements of a commit needs).
TableModel declarations(const plan::Plan &plan);
// Sorted by key, or (`sorted` false) in the order a full replace adds them
// (portSetChunks: addresses, then sources, in plan order): the order nft
// lists a concatenated interval set in after a fresh apply.
std::vector<Element> portSetElements(const plan::Plan &plan, std::string_view name, bool sorted = true);
// The same elements in pieces of about `chunk`, unsorted (what a full
// replace needs), never all at once.
void portSetChunks(const plan::Plan &plan, std::string_view name, size_t chunk,
		   const std::function<void(const std::vector<Element> &)> &take);

namespace detail {
class PortSets;
}
// The same for many sets of one plan: the shard count and which sources
// have blocks in each shard of sl_return are found once, so a table of
// 2,048 shards is not 2,048 walks over every source.
class PortSetSource {
public:
	explicit PortSetSource(const plan::Plan &plan);
	void chunks(std::string_view name, size_t chunk,
		    const std::function<void(const std::vector<Element> &)> &take) const;
	std::vector<Element> elements(std::string_view name, bool sorted = true) const;

private:
	void fill(detail::PortSets &ports, uint32_t slot, const std::function<void()> &step) const;

	const plan::Plan &plan_;
	PortForm form_;
	uint32_t shards_;
	std::vector<std::vector<uint32_t>> returnUsers_; // per shard of sl_return: sources, ascending
	std::vector<std::vector<uint32_t>> egressUsers_; // the unit form: per part of sl_egress
};

// What a slice move changes in the table: my_ports and my_blocks of the moved address and
// the NAT maps' elements of its users, as they were and as they are now
// (`plan` is after the move). Same sets, same order, on both sides.
struct MoveDelta {
	std::vector<Set> before, after;
};
MoveDelta moveDelta(const plan::Plan &plan, const plan::SliceMove &move);
// The same for many moves made one after another on `plan` (SetSliceOwners):
// each address and each user as before the first move that touched it, and
// as `plan` has them now.
MoveDelta movesDelta(const plan::Plan &plan, const std::vector<plan::SliceMove> &moves);

std::string tableComment(const plan::Plan &plan, uint64_t generation);

// The first set of the table, `generation`, holds one element: the generation
// applied last. The kernel keeps a table's comment as it was created, but a
// delta can flush this set and fill it again in its own transaction, so the
// live table names its generation after slice moves too. nft has no plain
// 32-bit integer type to declare it by: `typeof meta cgroup` is one (a
// classid, printed in decimal); the rules never look it up. 32 bits: the
// generation modulo 2^32 (see readGeneration).
inline constexpr const char *kGenerationSet = "generation";
Set generationSet(uint64_t generation);

// NAT failures per source. conntrack drops a new flow whose source NAT found
// no free port when it confirms the flow (insert_failed), at the end of
// postrouting, after every chain of table inet portslice: an inet chain at
// priority INT_MAX runs before the confirmation whenever conntrack was in use
// before the chain was made (a full replace, any other conntrack user), so no
// inet chain can see which flows survived it. Instead the egress chain counts
// each new flow of a conntrack source (`new_NAME`, map new_mark, keyed on its
// ct mark and the packet mark the source's flows carry: its match's mark, or
// 0) and hands its ct mark to the netdev egress hook of the uplink in the
// packet mark; there table netdev portslice_egress counts it (`left_NAME`) and
// gives the packet its mark back (orig_mark). new_NAME - left_NAME is the
// number of the source's new flows dropped between the two: conntrack's
// refusals, and first packets that waited for the gateway's ARP answer at the
// moment of reading.
TableModel egressModel(const TableModel &model);

// drain_zone: the model never fills it; on the previous owner of a draining
// slice the daemon puts one element per live flow in it (shared address and
// port of the flow's answers, its zone).
struct DrainEntry {
	Ipv4 address;
	uint16_t port = 0;
	uint16_t zone = 0;
};
Set drainZoneSet(const std::vector<DrainEntry> &entries = {});

// "zone_saddr_24", and whether a set is one of those maps.
std::string zoneSaddrMap(uint8_t length);
bool isZoneSaddrMap(const Set &set);

// The fixed chains and rules of a model; they depend only on the uplink, the
// shapes in use and the zone maps' prefix lengths. buildModel stores them in
// TableModel::chains.
std::vector<Chain> chains(const TableModel &model);

} // namespace portslice::nft
