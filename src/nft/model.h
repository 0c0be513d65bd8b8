// SPDX-License-Identifier: MIT
// The table of a Plan as data: sets, maps and their typed elements, shared by the text renderer and the netlink applier.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "plan/plan.h"

namespace portslice::nft {

inline constexpr const char *kTableName = "portslice";

// The leak guard's fast path: `my_blocks` holds the aligned blocks of this
// many ports that lie wholly inside this server's slices, so that a packet in
// one costs a hash lookup (`th sport & kPortBlockMask`), whatever the number
// of addresses; only the other ports pay the concatenated interval lookup in
// `my_ports` (pipapo, linear in its size). 1024 divides the default slices
// (1024-65535, 2048 ports), so there every port of a slice is in a block.
inline constexpr uint32_t kPortBlock = 1024;
inline constexpr uint32_t kPortBlockMask = 0x10000 - kPortBlock; // 64512, as nft prints it

// One field of a key or of map data. Ranges (lo < hi) only in interval sets.
enum class FieldType : uint8_t {
	IfName, // iifname: string, NUL padded to 16 bytes
	Ipv4,   // ip saddr / ip daddr: network byte order
	Port,   // th sport / th dport: network byte order
	Mark,   // meta mark / ct mark: host byte order, 32 bits
	Cgroup, // meta cgroup: host byte order, 32 bits
	Uid,    // meta skuid: host byte order, 32 bits
	Zone,   // ct zone: host byte order, 16 bits
	// @th,224,16 of an ICMP error: the source port of the quoted IPv4
	// packet, a raw 16-bit payload. Network byte order in the kernel;
	// nft prints it as a hex integer ("0x400").
	QuotedPort,
};

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
};

enum class SetKind : uint8_t { Set, Map, CounterMap };

// A named set or map. `keyExpr`/`dataExpr` are the nft expressions whose
// types the set carries ("iifname . ip saddr"); `declaration` is the
// type/typeof line exactly as `nft list` prints it.
struct Set {
	std::string name;
	SetKind kind = SetKind::Set;
	std::vector<FieldType> keyTypes;
	std::vector<FieldType> dataTypes;
	bool interval = false;     // flags interval
	bool dataInterval = false; // map data holds a range (nat port ranges)
	std::string declaration;
	std::vector<Element> elements; // sorted by key
};

// Which classification keys a source uses, in the fixed order of FieldType.
struct Shape {
	bool iifname = false, saddr = false, mark = false, cgroup = false, uid = false;

	static Shape of(const config::Match &match);
	std::string name() const;    // "iif_saddr"
	std::string keyExpr() const; // "iifname . ip saddr"
	std::vector<FieldType> types() const;
	bool inPrerouting() const { return !cgroup && !uid; } // no socket on forwarded packets
	bool inOutput() const { return !iifname; }            // no input interface on local packets
	auto operator<=>(const Shape &) const = default;
};

// The mark of a conntrack source: ct mark of its connections and fwmark of
// its answers. Equal to plan::kRouteMarkBase + zone.
uint32_t sourceMark(const plan::PlannedSource &source);

struct TableModel {
	std::string comment; // "portslice generation G plan HASH server NAME"
	std::string uplink;
	std::vector<Shape> shapes; // in use, ordered
	// Prefix lengths of the conntrack sources matched by saddr alone,
	// ascending: one exact-match map zone_saddr_<length> each, keyed on the
	// masked address (a hash lookup, where an interval map of all prefixes
	// costs a search that grows with their number).
	std::vector<uint8_t> zoneSaddrLengths;
	std::vector<std::string> counters; // named counters, creation order
	std::vector<Set> sets;             // creation order

	const Set *find(const std::string &name) const;
};

// Plan -> table. The structure (sets, chains, rules) depends only on the
// uplink and the shapes in use; everything else is elements. Without
// `portElements` the sets that follow from slices and ports (my_ports, the
// NAT maps: most of a large table) are left empty, to be filled one at a time
// with portSetElements.
TableModel buildModel(const plan::Plan &plan, uint64_t generation, bool portElements = true);
bool isPortSet(std::string_view name);
std::vector<Element> portSetElements(const plan::Plan &plan, std::string_view name);
// The same elements in pieces of about `chunk`, in no particular order (what
// a full replace needs: the kernel does not care), never all at once.
void portSetChunks(const plan::Plan &plan, std::string_view name, size_t chunk,
		   const std::function<void(const std::vector<Element> &)> &take);

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

// drain_zone, empty: the model never fills it; on the previous owner of a
// draining slice the daemon puts one element per live flow in it.
Set drainZoneSet();

// "zone_saddr_24"; the rule "ct zone set ip saddr & 255.255.255.0 map @zone_saddr_24".
std::string zoneSaddrMap(uint8_t length);
std::string zoneSaddrRule(uint8_t length);

} // namespace portslice::nft
