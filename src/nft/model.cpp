// SPDX-License-Identifier: MIT
// Plan -> TableModel: every element of the table is decided here, once, for both the text and the netlink paths.
#include "nft/model.h"

#include <map>

#include <algorithm>
#include <functional>
#include <cstdio>
#include <set>
#include <tuple>

namespace portslice::nft {

using plan::NatMode;
using plan::Plan;
using plan::PlannedSource;

Shape Shape::of(const config::Match &match)
{
	Shape s;
	s.iifname = match.iifname.has_value();
	s.saddr = match.saddr.has_value();
	s.mark = match.mark.has_value();
	s.cgroup = match.cgroup.has_value();
	s.uid = match.uid.has_value();
	return s;
}

std::string Shape::name() const
{
	std::string out;
	auto add = [&](bool on, const char *n) {
		if (on)
			out += (out.empty() ? "" : "_") + std::string(n);
	};
	add(iifname, "iif");
	add(saddr, "saddr");
	add(mark, "mark");
	add(cgroup, "cgroup");
	add(uid, "uid");
	return out;
}

std::vector<Selector> Shape::selectors() const
{
	std::vector<Selector> out;
	if (iifname)
		out.push_back(Selector::Iifname);
	if (saddr)
		out.push_back(Selector::IpSaddr);
	if (mark)
		out.push_back(Selector::MetaMark);
	if (cgroup)
		out.push_back(Selector::MetaCgroup);
	if (uid)
		out.push_back(Selector::MetaSkuid);
	return out;
}

std::vector<FieldType> Shape::types() const
{
	std::vector<FieldType> out;
	for (Selector sel : selectors())
		out.push_back(fieldType(sel));
	return out;
}

FieldType fieldType(Selector s)
{
	switch (s) {
	case Selector::Iifname: return FieldType::IfName;
	case Selector::IpSaddr:
	case Selector::IpDaddr: return FieldType::Ipv4;
	case Selector::ThSport:
	case Selector::ThDport: return FieldType::Port;
	case Selector::MetaMark:
	case Selector::CtMark: return FieldType::Mark;
	case Selector::MetaCgroup: return FieldType::Cgroup;
	case Selector::MetaSkuid: return FieldType::Uid;
	case Selector::CtZone: return FieldType::Zone;
	case Selector::QuotedSport: return FieldType::QuotedPort;
	}
	return FieldType::Zone;
}

std::vector<FieldType> Set::keyTypes() const
{
	std::vector<FieldType> out;
	for (Selector sel : key)
		out.push_back(fieldType(sel));
	return out;
}

uint32_t sourceMark(const PlannedSource &source)
{
	return plan::kRouteMarkBase + source.zone;
}

const Set *TableModel::find(const std::string &name) const
{
	for (const Set &s : sets)
		if (s.name == name)
			return &s;
	return nullptr;
}

std::string tableComment(const Plan &plan, uint64_t generation)
{
	char hash[17];
	std::snprintf(hash, sizeof(hash), "%016llx", static_cast<unsigned long long>(plan.hash()));
	return "portslice generation " + std::to_string(generation) + " plan " + hash + " server " + plan.server;
}

std::string zoneSaddrMap(uint8_t length)
{
	return "zone_saddr_" + std::to_string(length);
}

bool isZoneSaddrMap(const Set &set)
{
	return set.name.rfind("zone_saddr_", 0) == 0;
}

std::vector<Chain> chains(const TableModel &m)
{
	using W = Match::What;
	using S = Selector;
	using V = Verdict::Kind;
	const Match l4{ W::L4ProtoTcpUdp, false, {} };
	const Match toUplink{ W::Oifname, false, m.uplink };
	std::vector<Chain> out;

	Chain pre{ "prerouting", "prerouting", "filter", "raw", -300, {} };
	pre.rules.push_back({ { Match{ W::Iifname, false, m.uplink }, Verdict{ V::Jump, "from_uplink" } } });
	Chain output{ "output", "output", "filter", "raw", -300, {} };
	for (const Shape &s : m.shapes) {
		Key key{ s.selectors(), {} };
		std::vector<Rule> rules = { { { Lookup{ key, "stateless_" + s.name(), false }, Notrack{} } } };
		if (s.name() == "saddr") {
			// Longest prefix last: its `ct zone set` wins. nft prints a /32
			// mask as the bare address, and keeps it: leave it out.
			for (uint8_t length : m.zoneSaddrLengths) {
				Key masked{ { S::IpSaddr }, {} };
				if (length < 32)
					masked.mask = prefixMask(length);
				rules.push_back({ { MapAssign{ Target::CtZone, masked, zoneSaddrMap(length) } } });
			}
		} else {
			rules.push_back({ { MapAssign{ Target::CtZone, key, "zone_" + s.name() } } });
		}
		if (s.inPrerouting())
			pre.rules.insert(pre.rules.end(), rules.begin(), rules.end());
		if (s.inOutput())
			output.rules.insert(output.rules.end(), rules.begin(), rules.end());
	}
	out.push_back(std::move(pre));
	out.push_back(std::move(output));

	const Key answer{ { S::IpDaddr, S::ThDport }, {} };
	// The stateless rewrites: through the one map (keyed on the unit of the
	// port in the unit form), or through the shard's chain that a verdict
	// map picks (portForm).
	const bool sharded = m.shards > 1;
	const bool unitForm = m.statelessUnit > 0;
	// The unit form's keys, and the address bits that pick its parts
	// (egressPart, returnPart).
	const std::optional<uint32_t> unitMask = unitForm ? std::optional<uint32_t>(0x10000 - m.statelessUnit) : std::nullopt;
	const Key slAnswer = unitForm ? Key{ { S::ThDport, S::IpDaddr }, unitMask, true } : answer;
	const Key slBlock = unitForm ? Key{ { S::ThSport, S::IpSaddr }, unitMask, true }
				     : Key{ { S::IpSaddr, S::ThSport }, {} };
	const Key returnPick = unitForm ? Key{ { S::IpDaddr }, kReturnPartMask } : Key{ { S::IpDaddr }, {} };
	const Key egressPick = unitForm ? Key{ { S::IpSaddr }, kEgressPartMask } : Key{ { S::IpSaddr }, {} };
	const Rule statelessReturn =
		sharded ? Rule{ { l4, Dispatch{ returnPick, "sl_return_shard" } } }
			: Rule{ { l4, MapAssign{ Target::IpDaddr, slAnswer, "sl_return" }, Notrack{} } };
	const Rule statelessEgress = sharded ? Rule{ { l4, Dispatch{ egressPick, "sl_egress_shard" } } }
					     : Rule{ { l4, MapAssign{ Target::IpSaddr, slBlock, "sl_egress" } } };
	const bool portsSharded = sharded && !unitForm;
	out.push_back({ "from_uplink", "", "", "", 0,
			{ statelessReturn,
			  { { l4, MapAssign{ Target::CtZone, answer, "ret_zone" } } },
			  { { l4, MapAssign{ Target::CtZone, answer, "drain_zone" } } },
			  { { Match{ W::IcmpErrorTypes, false, {} },
			      MapAssign{ Target::CtZone, Key{ { S::IpDaddr, S::QuotedSport }, {} }, "icmp_zone" } } } } });
	const Rule markNew{ { Match{ W::CtStateNew, false, {} }, MapAssign{ Target::CtMark, Key{ { S::CtZone }, {} }, "ct_marks" } } };
	out.push_back({ "mark_prerouting", "prerouting", "filter", "mangle", -150,
			{ markNew,
			  { { Match{ W::CtDirectionReply, false, {} }, Lookup{ Key{ { S::CtMark }, {} }, "route_marks", false },
			      Assign{ Target::MetaMark, S::CtMark } } } } });
	out.push_back({ "mark_output", "output", "filter", "mangle", -150, { markNew } });
	const Key natKey{ { S::CtMark, S::IpSaddr }, {} };
	out.push_back({ "postrouting", "postrouting", "nat", "srcnat", 100,
			{ { { toUplink, l4, Snat{ natKey, "nat_port", true } } },
			  { { toUplink, Snat{ natKey, "nat_addr", false } } } } });
	// The leak guard: a port in one of this server's whole blocks passes with
	// one hash lookup; any other goes through port_guard, which drops it when
	// its address is shared and the port is outside this server's slices.
	const Key byMark{ { S::CtMark }, {} }, bySaddr{ { S::IpSaddr }, {} };
	const Lookup notShared{ bySaddr, "shared", true };
	out.push_back({ "egress", "postrouting", "filter", "srcnat + 10", 110,
			{ { { Match{ W::Oifname, true, m.uplink }, Verdict{ V::Accept, {} } } },
			  { { CounterRef{ byMark, "count_mark" } } },
			  { { CounterRef{ bySaddr, "count_sl" } } },
			  statelessEgress,
			  { { l4, Lookup{ Key{ { S::IpSaddr, S::ThSport }, kPortBlockMask }, "my_blocks", true },
			      Verdict{ V::Jump, "port_guard" } } },
			  { { notShared, CounterRef{ byMark, "guard_mark" }, Verdict{ V::Drop, {} } } },
			  { { CounterRef{ bySaddr, "guard_sl" }, Verdict{ V::Drop, {} } } },
			  { { CounterRef{ bySaddr, "count_addr" } } },
			  // A new flow of a conntrack source, counted before conntrack
			  // confirms it; its ct mark goes on in the packet mark to
			  // table netdev portslice_egress (egressModel).
			  { { Match{ W::CtStateNew, false, {} }, CounterRef{ Key{ { S::CtMark, S::MetaMark }, {} }, "new_mark" },
			      Assign{ Target::MetaMark, S::CtMark } } } } });
	// Return when the port is this server's, else count and drop: in
	// port_guard, or in the address's shard of my_ports, which port_guard
	// goes to (a return there returns from port_guard), with the drop in
	// guard_drop.
	auto mineIn = [&](std::string set) {
		return Rule{ { Lookup{ Key{ { S::IpSaddr, S::ThSport }, {} }, std::move(set), false }, Verdict{ V::Return, {} } } };
	};
	const std::vector<Rule> drop = { { { CounterRef{ byMark, "guard_mark" }, Verdict{ V::Drop, {} } } },
					 { { CounterRef{ std::nullopt, "guard_other" }, Verdict{ V::Drop, {} } } } };
	if (portsSharded) {
		out.push_back({ "port_guard", "", "", "", 0,
				{ { { notShared, Verdict{ V::Return, {} } } },
				  { { Dispatch{ Key{ { S::IpSaddr }, {} }, "my_ports_shard" } } } } });
		out.push_back({ "guard_drop", "", "", "", 0, drop });
	} else {
		Chain c{ "port_guard", "", "", "", 0, { { { notShared, Verdict{ V::Return, {} } } }, mineIn("my_ports") } };
		c.rules.insert(c.rules.end(), drop.begin(), drop.end());
		out.push_back(std::move(c));
	}
	if (sharded) {
		for (uint32_t k = 0; portsSharded && k < m.shards; k++) {
			std::string name = shardName("my_ports", k, m.shards);
			out.push_back({ name, "", "", "", 0, { mineIn(name), { { Verdict{ V::Jump, "guard_drop" } } } } });
		}
		// The shards' keys put the port first (declarePortSet).
		const Key portBlock = unitForm ? slBlock : Key{ { S::ThSport, S::IpSaddr }, {} };
		const Key portAnswer = unitForm ? slAnswer : Key{ { S::ThDport, S::IpDaddr }, {} };
		for (uint32_t k = 0; k < m.shards; k++) {
			std::string name = shardName("sl_egress", k, m.shards);
			out.push_back({ name, "", "", "", 0, { { { MapAssign{ Target::IpSaddr, portBlock, name } } } } });
		}
		for (uint32_t k = 0; k < m.shards; k++) {
			std::string name = shardName("sl_return", k, m.shards);
			out.push_back(
				{ name, "", "", "", 0, { { { MapAssign{ Target::IpDaddr, portAnswer, name }, Notrack{} } } } });
		}
	}
	return out;
}

namespace {

Field ip(Ipv4 a) { return { FieldType::Ipv4, a.value, a.value, {} }; }
Field ipRange(Ipv4 lo, Ipv4 hi) { return { FieldType::Ipv4, lo.value, hi.value, {} }; }
Field port(config::PortRange r) { return { FieldType::Port, r.lo, r.hi, {} }; }
Field mark(uint32_t m) { return { FieldType::Mark, m, m, {} }; }
Field quotedPort(config::PortRange r) { return { FieldType::QuotedPort, r.lo, r.hi, {} }; }
Field zone(uint16_t z) { return { FieldType::Zone, z, z, {} }; }

std::vector<Field> matchKey(const config::Match &m)
{
	std::vector<Field> key;
	if (m.iifname)
		key.push_back({ FieldType::IfName, 0, 0, *m.iifname });
	if (m.saddr)
		key.push_back(ipRange(m.saddr->first(), m.saddr->last()));
	if (m.mark)
		key.push_back({ FieldType::Mark, *m.mark, *m.mark, {} });
	if (m.cgroup)
		key.push_back({ FieldType::Cgroup, *m.cgroup, *m.cgroup, {} });
	if (m.uid)
		key.push_back({ FieldType::Uid, *m.uid, *m.uid, {} });
	return key;
}

bool keyLess(const Element &a, const Element &b)
{
	for (size_t i = 0; i < a.key.size() && i < b.key.size(); i++) {
		const Field &x = a.key[i], &y = b.key[i];
		if (x.name != y.name)
			return x.name < y.name;
		if (x.lo != y.lo)
			return x.lo < y.lo;
		if (x.hi != y.hi)
			return x.hi < y.hi;
	}
	return a.key.size() < b.key.size();
}

struct Decl {
	std::vector<Selector> key;
	std::vector<Selector> data = {};
	bool typeofDecl = true;
};

Set makeSet(std::string name, SetKind kind, Decl decl, bool interval)
{
	Set s;
	s.name = std::move(name);
	s.kind = kind;
	s.key = std::move(decl.key);
	s.data = std::move(decl.data);
	s.typeofDecl = decl.typeofDecl;
	s.interval = interval;
	return s;
}

using S = Selector;

void sortElements(Set &s)
{
	// Most sets are built in key order already (sources and addresses in
	// file order); checking first saves the sort's cost at 100k sources.
	if (!std::is_sorted(s.elements.begin(), s.elements.end(), keyLess))
		std::sort(s.elements.begin(), s.elements.end(), keyLess);
}

// The sets whose elements follow from the addresses' slices and the
// sources' ports: everything a slice move can change. Each has a slot:
// the six fixed sets, then the shards of sl_egress, those of sl_return and
// those of my_ports (when there are shards, my_ports itself stays empty).
enum Slot : uint32_t { kMyPorts, kMyBlocks, kNatPort, kNatAddr, kRetZone, kIcmpZone, kShardSlots };

constexpr std::string_view kFixedNames[kShardSlots] = { "my_ports", "my_blocks", "nat_port",
							"nat_addr", "ret_zone", "icmp_zone" };

Set declarePortSet(uint32_t slot, PortForm form)
{
	const uint32_t shards = form.shards;
	switch (slot) {
	case kMyPorts: return makeSet("my_ports", SetKind::Set, { { S::IpSaddr, S::ThSport } }, true);
	case kMyBlocks: return makeSet("my_blocks", SetKind::Set, { { S::IpSaddr, S::ThSport } }, false);
	case kNatPort: {
		Set s = makeSet("nat_port", SetKind::Map, { { S::MetaMark, S::IpSaddr }, { S::IpSaddr, S::ThSport }, false },
				true);
		s.dataInterval = true;
		s.egress = true;
		return s;
	}
	case kNatAddr: {
		Set s = makeSet("nat_addr", SetKind::Map, { { S::CtMark, S::IpSaddr }, { S::IpSaddr } }, true);
		s.egress = true;
		return s;
	}
	case kRetZone: return makeSet("ret_zone", SetKind::Map, { { S::IpDaddr, S::ThDport }, { S::CtZone } }, true);
	// ICMP errors carry no port of their own: they find the zone of the flow
	// they quote by its source port (the shared port after SNAT).
	case kIcmpZone:
		return makeSet("icmp_zone", SetKind::Map, { { S::IpDaddr, S::QuotedSport }, { S::CtZone } }, true);
	default: break;
	}
	uint32_t shard = slot - kShardSlots;
	if (shard >= 2 * shards && form.portShards() > 1)
		return makeSet(shardName("my_ports", shard - 2 * shards, shards), SetKind::Set, { { S::IpSaddr, S::ThSport } },
			       true);
	// The plain maps key on the address first; their shards on the port
	// first: the kernel deletes from a pipapo map by walking its rules from
	// the first, and with the 16-bit port first a rule costs it about 40 %
	// less (docs/performance.md, "my_ports in shards").
	// In the unit form a key's port is the first of its unit: exact keys,
	// a hash map, port first too (Key::maskFirst).
	const bool interval = form.unit == 0;
	const bool portFirst = shards > 1 || !interval;
	auto key = [&](Selector address, Selector port) {
		return portFirst ? std::vector<Selector>{ port, address } : std::vector<Selector>{ address, port };
	};
	if (shard < shards) {
		Set s = makeSet(shardName("sl_egress", shard, shards), SetKind::Map,
				{ key(S::IpSaddr, S::ThSport), { S::IpSaddr } }, interval);
		s.egress = true;
		return s;
	}
	return makeSet(shardName("sl_return", shard - shards, shards), SetKind::Map,
		       { key(S::IpDaddr, S::ThDport), { S::IpDaddr } }, interval);
}

// The slot of a port set's name, or nullopt.
std::optional<uint32_t> portSlot(std::string_view name, PortForm form)
{
	for (uint32_t i = 0; i < kShardSlots; i++)
		if (name == kFixedNames[i])
			return i;
	constexpr std::string_view kFamilies[] = { "sl_egress", "sl_return", "my_ports" };
	for (uint32_t family = 0; family < 3; family++) {
		std::string_view base = kFamilies[family];
		const uint32_t shards = family == 2 ? form.portShards() : form.shards;
		if (family == 2 && shards == 1)
			break; // my_ports: a fixed name
		if (name.substr(0, base.size()) != base)
			continue;
		std::string_view rest = name.substr(base.size());
		uint32_t shard = 0;
		if (shards > 1) {
			if (rest.size() < 2 || rest[0] != '_' || rest.size() > 5)
				return std::nullopt;
			for (char c : rest.substr(1)) {
				if (c < '0' || c > '9')
					return std::nullopt;
				shard = shard * 10 + static_cast<uint32_t>(c - '0');
			}
			if (shard >= shards || (rest.size() > 2 && rest[1] == '0'))
				return std::nullopt;
		} else if (!rest.empty()) {
			return std::nullopt;
		}
		return kShardSlots + family * form.shards + shard;
	}
	return std::nullopt;
}

// The parts of the unit form: an inside address's blocks are in the part
// of its bits 4-7 (a /28 source's all in one), an address's answers in the
// part of its last four bits. kUnitParts is 16.
uint32_t egressPart(Ipv4 inside) { return (inside.value & kEgressPartMask) >> 4; }
uint32_t returnPart(Ipv4 shared) { return shared.value & kReturnPartMask; }

} // namespace

namespace detail {

class PortSets {
public:
	// `only`: fill just that slot; `none`: fill nothing (declarations).
	explicit PortSets(PortForm form, std::optional<uint32_t> only = std::nullopt, bool none = false)
		: shards_(form.shards), unit_(form.unit), only_(only), none_(none)
	{
	}

	// One element per slice, not per run of adjacent slices: gaining a slice
	// is then a pure add, and the kernel's pipapo sets pay a deletion with
	// a walk over the whole set.
	// The previous owner (`self`) of a draining slice keeps its ports here:
	// its flows' packets still leave. `index`: the address's in the plan.
	void address(const plan::PlannedAddress &a, size_t index, uint32_t self)
	{
		uint32_t portsSlot = shards_ > 1 && unit_ == 0
					     ? kShardSlots + 2 * shards_ + static_cast<uint32_t>(index % shards_)
					     : kMyPorts;
		// In the unit form every slice is whole blocks (portForm): the
		// guard finds each of its ports in my_blocks, and my_ports stays empty.
		const bool wholeSlices = wants(portsSlot) && unit_ == 0;
		if (!wholeSlices && !wants(kMyBlocks))
			return;
		auto add = [&](uint32_t slice) {
			config::PortRange ports = a.slice(slice);
			if (wholeSlices)
				at(portsSlot).elements.push_back({ { ip(a.address), port(ports) }, {}, {}, {} });
			if (!wants(kMyBlocks))
				return;
			// The guard's fast path: blocks wholly inside the slice, by their first port.
			uint32_t first = (uint32_t{ ports.lo } + kPortBlock - 1) / kPortBlock * kPortBlock;
			for (uint32_t b = first; b + kPortBlock - 1 <= ports.hi; b += kPortBlock) {
				auto p = static_cast<uint16_t>(b);
				at(kMyBlocks).elements.push_back({ { ip(a.address), port({ p, p }) }, {}, {}, {} });
			}
		};
		for (uint32_t slice : a.mySlices)
			add(slice);
		for (uint32_t slice = 0; slice < a.previous.size(); slice++)
			if (a.drainedBy(slice, self))
				add(slice);
	}

	// Source number `index` of the plan with `assignments`: its own, now or
	// before a move.
	void source(const Plan &plan, size_t index, const std::vector<plan::Assignment> &assignments)
	{
		const PlannedSource &s = plan.sources[index];
		uint32_t egressSlot = kShardSlots + static_cast<uint32_t>(index % shards_);
		for (const plan::Assignment &as : assignments) {
			Ipv4 sharedAddr = plan.addresses[as.address].address;
			if (s.mode == NatMode::Conntrack) {
				uint32_t mk = sourceMark(s);
				if (wants(kNatPort))
					at(kNatPort).elements.push_back(
						{ { mark(mk), ipRange(as.first, as.last) }, { ip(sharedAddr), port(as.ports) }, {}, {} });
				if (wants(kNatAddr))
					at(kNatAddr).elements.push_back(
						{ { mark(mk), ipRange(as.first, as.last) }, { ip(sharedAddr) }, {}, {} });
				if (wants(kRetZone))
					at(kRetZone).elements.push_back({ { ip(sharedAddr), port(as.ports) }, { zone(s.zone) }, {}, {} });
				if (wants(kIcmpZone))
					at(kIcmpZone).elements.push_back(
						{ { ip(sharedAddr), quotedPort(as.ports) }, { zone(s.zone) }, {}, {} });
			} else {
				uint32_t returnSlot = kShardSlots + shards_ + as.address % shards_;
				if (unit_ > 0) {
					// One element per unit of the block, keyed on its first port.
					uint32_t egress = kShardSlots + (shards_ > 1 ? egressPart(as.first) : 0);
					uint32_t answers = kShardSlots + shards_ + (shards_ > 1 ? returnPart(sharedAddr) : 0);
					for (uint32_t p = as.ports.lo; p + unit_ - 1 <= as.ports.hi; p += unit_) {
						config::PortRange u{ static_cast<uint16_t>(p), static_cast<uint16_t>(p) };
						if (wants(egress))
							at(egress).elements.push_back({ { port(u), ip(as.first) }, { ip(sharedAddr) }, {}, {} });
						if (wants(answers))
							at(answers).elements.push_back({ { port(u), ip(sharedAddr) }, { ip(as.first) }, {}, {} });
					}
					continue;
				}
				// In shards the port comes first (declarePortSet).
				auto key = [&](Ipv4 a) {
					return shards_ > 1 ? std::vector<Field>{ port(as.ports), ip(a) }
							   : std::vector<Field>{ ip(a), port(as.ports) };
				};
				if (wants(egressSlot))
					at(egressSlot).elements.push_back({ key(as.first), { ip(sharedAddr) }, {}, {} });
				if (wants(returnSlot))
					at(returnSlot).elements.push_back({ key(sharedAddr), { ip(as.first) }, {}, {} });
			}
		}
	}

	uint32_t slots() const
	{
		return kShardSlots + (shards_ == 1 ? 2 : unit_ > 0 ? 2 * shards_ : 3 * shards_);
	}
	size_t count(uint32_t slot) const
	{
		auto it = sets_.find(slot);
		return it == sets_.end() ? 0 : it->second.elements.size();
	}
	// The slots that hold a set now (an element came, or `at` made it).
	std::vector<uint32_t> used() const
	{
		std::vector<uint32_t> out;
		for (const auto &[slot, set] : sets_)
			out.push_back(slot);
		return out;
	}
	// The set of `slot`, declared, with the elements it got (sorted), and
	// gone from here.
	Set take(uint32_t slot)
	{
		Set s = std::move(at(slot));
		sets_.erase(slot);
		sortElements(s);
		return s;
	}
	std::vector<Element> takeElements(uint32_t slot, bool sorted)
	{
		auto it = sets_.find(slot);
		if (it == sets_.end())
			return {};
		if (sorted)
			sortElements(it->second);
		std::vector<Element> out = std::move(it->second.elements);
		it->second.elements.clear();
		return out;
	}

private:
	bool wants(uint32_t slot) const { return !none_ && (!only_ || *only_ == slot); }
	Set &at(uint32_t slot)
	{
		auto it = sets_.find(slot);
		if (it == sets_.end())
			it = sets_.emplace(slot, declarePortSet(slot, { shards_, unit_ })).first;
		return it->second;
	}

	uint32_t shards_;
	uint32_t unit_;
	std::optional<uint32_t> only_;
	bool none_;
	std::map<uint32_t, Set> sets_;
};

} // namespace detail

using detail::PortSets;

namespace {

} // namespace

Set drainZoneSet(const std::vector<DrainEntry> &entries)
{
	Set set = makeSet("drain_zone", SetKind::Map, { { S::IpDaddr, S::ThDport }, { S::CtZone } }, false);
	for (const DrainEntry &e : entries)
		set.elements.push_back({ { ip(e.address), port({ e.port, e.port }) }, { zone(e.zone) }, {} });
	return set;
}

Set generationSet(uint64_t generation)
{
	Set set = makeSet(kGenerationSet, SetKind::Set, { { S::MetaCgroup } }, false);
	auto g = static_cast<uint32_t>(generation);
	set.elements.push_back({ { Field{ FieldType::Cgroup, g, g, {} } }, {}, {} });
	return set;
}

namespace {

uint32_t shardsFor(uint64_t inside)
{
	uint32_t shards = 1;
	while (shards < kMaxShards && uint64_t{ shards } * kShardElements < inside)
		shards *= 2;
	return shards;
}

uint32_t unitOf(const plan::PortShape &shape)
{
	if (shardsFor(shape.statelessInside) == 1 || shape.blockGrain == 0 || shape.sliceGrain == 0 ||
	    shape.sliceGrain % kPortBlock != 0)
		return 0;
	uint32_t unit = std::min(shape.blockGrain, kPortBlock);
	return shape.largestBlock / unit <= kMaxUnitsPerBlock ? unit : 0;
}

} // namespace

PortForm portForm(const Plan &plan)
{
	plan::PortShape shape = plan::portShape(plan);
	uint32_t unit = unitOf(shape);
	return { unit > 0 ? kUnitParts : shardsFor(shape.statelessInside), unit };
}

std::string shardName(std::string_view base, uint32_t shard, uint32_t shards)
{
	std::string name(base);
	if (shards > 1)
		name += "_" + std::to_string(shard);
	return name;
}

namespace {

// The sets of one element per shared address or per stateless source: with
// the counters, 50,000 elements of the model at 10,000 sources, more memory
// than the plan. Left empty like the port sets, they are built from the plan
// a piece at a time, in key order (the first piece of an interval set holds
// its lowest range, as wireElements wants).
constexpr std::string_view kPerAddressSets[] = { "shared", "count_addr" };
constexpr std::string_view kPerSourceSets[] = { "stateless_saddr", "count_sl", "guard_sl" };

bool isPerItemSet(std::string_view name)
{
	for (std::string_view n : kPerAddressSets)
		if (name == n)
			return true;
	for (std::string_view n : kPerSourceSets)
		if (name == n)
			return true;
	return false;
}

bool perAddress(std::string_view name) { return name == kPerAddressSets[0] || name == kPerAddressSets[1]; }

// The key of item i (an address's index, or a source's) in set `name`.
Field itemKey(const Plan &plan, std::string_view name, uint32_t i)
{
	if (perAddress(name))
		return ip(plan.addresses[i].address);
	const Prefix &p = *plan.sources[i].match.saddr;
	return ipRange(p.first(), p.last());
}

// The items with an element in `name`, in key order.
std::vector<uint32_t> perItemOrder(const Plan &plan, std::string_view name)
{
	std::vector<uint32_t> items;
	if (perAddress(name)) {
		items.resize(plan.addresses.size());
		for (uint32_t i = 0; i < items.size(); i++)
			items[i] = i;
	} else {
		Shape saddrOnly;
		saddrOnly.saddr = true;
		for (uint32_t i = 0; i < plan.sources.size(); i++) {
			const PlannedSource &s = plan.sources[i];
			if (s.mode == NatMode::Stateless && (name != "stateless_saddr" || Shape::of(s.match) == saddrOnly))
				items.push_back(i);
		}
	}
	auto less = [&](uint32_t a, uint32_t b) {
		Field x = itemKey(plan, name, a), y = itemKey(plan, name, b);
		return x.lo != y.lo ? x.lo < y.lo : x.hi < y.hi;
	};
	if (!std::is_sorted(items.begin(), items.end(), less))
		std::stable_sort(items.begin(), items.end(), less);
	return items;
}

Element itemElement(const Plan &plan, std::string_view name, uint32_t i)
{
	Element e{ { itemKey(plan, name, i) }, {}, {} };
	if (name == "count_addr")
		e.counter = "addr_" + plan.addresses[i].address.str();
	else if (name == "count_sl")
		e.counter = "src_" + plan.sources[i].name;
	else if (name == "guard_sl")
		e.counter = "guard_" + plan.sources[i].name;
	return e;
}

void perItemChunks(const Plan &plan, std::string_view name, size_t chunk,
		   const std::function<void(const std::vector<Element> &)> &take)
{
	std::vector<uint32_t> order = perItemOrder(plan, name);
	std::vector<Element> some;
	some.reserve(std::min(chunk, order.size()));
	for (uint32_t i : order) {
		some.push_back(itemElement(plan, name, i));
		if (some.size() >= chunk) {
			take(some);
			some.clear();
		}
	}
	if (!some.empty())
		take(some);
}

} // namespace

bool isPortSet(std::string_view name)
{
	return portSlot(name, { 1, 0 }).has_value() || portSlot(name, { kMaxShards, 0 }).has_value() ||
	       isPerItemSet(name);
}

PortSetSource::PortSetSource(const Plan &plan) : plan_(plan), form_(portForm(plan)), shards_(form_.shards)
{
	if (shards_ == 1)
		return;
	returnUsers_.resize(shards_);
	if (form_.unit > 0)
		egressUsers_.resize(shards_);
	auto use = [](std::vector<uint32_t> &users, uint32_t i) {
		if (users.empty() || users.back() != i)
			users.push_back(i);
	};
	for (uint32_t i = 0; i < plan.sources.size(); i++) {
		if (plan.sources[i].mode != NatMode::Stateless)
			continue;
		for (const plan::Assignment &as : plan.sources[i].assignments) {
			const Ipv4 shared = plan.addresses[as.address].address;
			use(returnUsers_[form_.unit > 0 ? returnPart(shared) : as.address % shards_], i);
			if (form_.unit > 0)
				use(egressUsers_[egressPart(as.first)], i);
		}
	}
}

// Walk what fills `slot`: the addresses for my_ports and my_blocks, the
// sources for the others; for a shard only the sources with elements in it.
void PortSetSource::fill(PortSets &ports, uint32_t slot, const std::function<void()> &step) const
{
	const uint32_t portShards = form_.portShards();
	if (slot == kMyPorts || slot == kMyBlocks || (portShards > 1 && slot >= kShardSlots + 2 * shards_)) {
		bool shard = slot >= kShardSlots;
		size_t first = shard ? slot - kShardSlots - 2 * shards_ : 0, stride = shard ? shards_ : 1;
		for (size_t i = first; i < plan_.addresses.size(); i += stride) {
			ports.address(plan_.addresses[i], i, plan_.serverIndex);
			step();
		}
		return;
	}
	// A shard of sl_return, or a part of the unit form: the sources found
	// in the constructor.
	bool returnShard = slot >= kShardSlots + shards_;
	if (shards_ > 1 && slot >= kShardSlots && (returnShard || form_.unit > 0)) {
		const auto &users = returnShard ? returnUsers_ : egressUsers_;
		for (uint32_t i : users[(slot - kShardSlots) % shards_]) {
			ports.source(plan_, i, plan_.sources[i].assignments);
			step();
		}
		return;
	}
	bool egressShard = slot >= kShardSlots;
	size_t first = egressShard ? slot - kShardSlots : 0, stride = egressShard ? shards_ : 1;
	for (size_t i = first; i < plan_.sources.size(); i += stride) {
		ports.source(plan_, i, plan_.sources[i].assignments);
		step();
	}
}

void PortSetSource::chunks(std::string_view name, size_t chunk,
			   const std::function<void(const std::vector<Element> &)> &take) const
{
	if (isPerItemSet(name))
		return perItemChunks(plan_, name, chunk, take);
	std::optional<uint32_t> slot = portSlot(name, form_);
	if (!slot)
		return;
	PortSets ports(form_, slot);
	auto flush = [&](size_t atLeast) {
		if (ports.count(*slot) > 0 && ports.count(*slot) >= atLeast)
			take(ports.takeElements(*slot, false));
	};
	fill(ports, *slot, [&] { flush(chunk); });
	flush(1);
}

std::vector<Element> PortSetSource::elements(std::string_view name, bool sorted) const
{
	if (isPerItemSet(name)) {
		std::vector<Element> all;
		perItemChunks(plan_, name, SIZE_MAX, [&](const std::vector<Element> &some) { all = some; });
		return all;
	}
	std::optional<uint32_t> slot = portSlot(name, form_);
	if (!slot)
		return {};
	PortSets ports(form_, slot);
	fill(ports, *slot, [] {});
	return ports.takeElements(*slot, sorted);
}

void portSetChunks(const Plan &plan, std::string_view name, size_t chunk,
		   const std::function<void(const std::vector<Element> &)> &take)
{
	PortSetSource(plan).chunks(name, chunk, take);
}

std::vector<Element> portSetElements(const Plan &plan, std::string_view name, bool sorted)
{
	return PortSetSource(plan).elements(name, sorted);
}

namespace {

TableModel build(const Plan &plan, uint64_t generation, bool portElements, PortForm form)
{
	const uint32_t shards = form.shards;
	TableModel m;
	m.comment = tableComment(plan, generation);
	m.generation = generation;
	m.uplink = plan.uplink;
	m.shards = shards;
	m.statelessUnit = form.unit;

	std::set<Shape> shapes;
	for (const PlannedSource &s : plan.sources)
		shapes.insert(Shape::of(s.match));
	m.shapes.assign(shapes.begin(), shapes.end());
	// More keys last: when two sources match a packet, the later `ct zone
	// set` wins, so the more specific source decides.
	std::stable_sort(m.shapes.begin(), m.shapes.end(), [](const Shape &a, const Shape &b) {
		return a.types().size() < b.types().size();
	});

	// Exact sizes: the lists of a large fleet are the model's bulk, and
	// grown by doubling they would hold up to twice their room.
	size_t conntrackSources = 0;
	for (const PlannedSource &s : plan.sources)
		conntrackSources += s.mode == NatMode::Conntrack;
	const size_t statelessSources = plan.sources.size() - conntrackSources;
	m.counters.reserve(2 * plan.sources.size() + conntrackSources + plan.addresses.size() + 1);
	for (const PlannedSource &s : plan.sources) {
		m.counters.push_back("src_" + s.name);
		m.counters.push_back("guard_" + s.name);
		if (s.mode == NatMode::Conntrack)
			m.counters.push_back("new_" + s.name);
	}
	for (const plan::PlannedAddress &a : plan.addresses)
		m.counters.push_back("addr_" + a.address.str());
	m.counters.push_back("guard_other");

	PortSets ports(form, std::nullopt, !portElements);
	Set shared = makeSet("shared", SetKind::Set, { { S::IpSaddr }, {}, false }, false);
	Set countAddr = makeSet("count_addr", SetKind::CounterMap, { { S::IpSaddr }, {}, false }, false);
	if (portElements) {
		shared.elements.reserve(plan.addresses.size());
		countAddr.elements.reserve(plan.addresses.size());
	}
	for (size_t ai = 0; ai < plan.addresses.size(); ai++) {
		const plan::PlannedAddress &a = plan.addresses[ai];
		if (portElements) {
			shared.elements.push_back({ { ip(a.address) }, {}, {} });
			countAddr.elements.push_back({ { ip(a.address) }, {}, "addr_" + a.address.str() });
		}
		ports.address(a, ai, plan.serverIndex);
	}
	m.sets.push_back(generationSet(generation));
	m.sets.push_back(std::move(shared));
	if (form.portShards() == 1)
		m.sets.push_back(ports.take(kMyPorts));
	m.sets.push_back(ports.take(kMyBlocks));

	const Shape saddrOnly = [] {
		Shape s;
		s.saddr = true;
		return s;
	}();
	std::set<uint8_t> zoneLengths;
	for (const PlannedSource &s : plan.sources)
		if (s.mode == NatMode::Conntrack && Shape::of(s.match) == saddrOnly)
			zoneLengths.insert(s.match.saddr->length);
	m.zoneSaddrLengths.assign(zoneLengths.begin(), zoneLengths.end());
	// The last sets of the table, so that a delta can make them again and
	// the table still lists as a fresh one (nft lists sets in creation order).
	std::vector<Set> zoneMaps;
	for (uint8_t length : m.zoneSaddrLengths)
		zoneMaps.push_back(makeSet(zoneSaddrMap(length), SetKind::Map, { { S::IpSaddr }, { S::CtZone } }, false));
	for (const PlannedSource &s : plan.sources)
		if (s.mode == NatMode::Conntrack && Shape::of(s.match) == saddrOnly) {
			auto at = std::lower_bound(m.zoneSaddrLengths.begin(), m.zoneSaddrLengths.end(), s.match.saddr->length);
			zoneMaps[static_cast<size_t>(at - m.zoneSaddrLengths.begin())].elements.push_back(
				{ { ip(s.match.saddr->first()) }, { zone(s.zone) }, {} });
		}

	for (const Shape &shape : m.shapes) {
		if (shape == saddrOnly) {
			// Its zone maps go last (zoneMaps below).
			Set stateless = makeSet("stateless_saddr", SetKind::Set, { shape.selectors() }, true);
			if (portElements) {
				stateless.elements.reserve(statelessSources);
				for (const PlannedSource &s : plan.sources)
					if (s.mode == NatMode::Stateless && Shape::of(s.match) == shape)
						stateless.elements.push_back({ matchKey(s.match), {}, {} });
			}
			m.sets.push_back(std::move(stateless));
			continue;
		}
		Set zones = makeSet("zone_" + shape.name(), SetKind::Map, { shape.selectors(), { S::CtZone } }, shape.saddr);
		Set stateless = makeSet("stateless_" + shape.name(), SetKind::Set, { shape.selectors() }, shape.saddr);
		for (const PlannedSource &s : plan.sources) {
			if (!(Shape::of(s.match) == shape))
				continue;
			if (s.mode == NatMode::Conntrack)
				zones.elements.push_back({ matchKey(s.match), { zone(s.zone) }, {} });
			else
				stateless.elements.push_back({ matchKey(s.match), {}, {} });
		}
		m.sets.push_back(std::move(zones));
		m.sets.push_back(std::move(stateless));
	}

	Set ctMarks = makeSet("ct_marks", SetKind::Map, { { S::CtZone }, { S::CtMark } }, false);
	Set routeMarks = makeSet("route_marks", SetKind::Set, { { S::MetaMark }, {}, false }, false);
	// Answers of flows a previous owner still drains: their ports left
	// ret_zone with the slice; the daemon fills one element per live flow
	// from the conntrack table when it applies (src/daemon/applier.cpp).
	Set drainZone = drainZoneSet();
	Set countMark = makeSet("count_mark", SetKind::CounterMap, { { S::MetaMark }, {}, false }, false);
	Set countSl = makeSet("count_sl", SetKind::CounterMap, { { S::IpSaddr }, {}, false }, true);
	Set guardMark = makeSet("guard_mark", SetKind::CounterMap, { { S::MetaMark }, {}, false }, false);
	Set guardSl = makeSet("guard_sl", SetKind::CounterMap, { { S::IpSaddr }, {}, false }, true);
	// A conntrack source's new flows, by its ct mark and the packet mark its
	// flows carry (its match's mark, or 0: the mark the egress table gives back).
	Set newMark = makeSet("new_mark", SetKind::CounterMap, { { S::CtMark, S::MetaMark }, {}, false }, false);
	for (Set *s : { &ctMarks, &countMark, &guardMark, &newMark })
		s->elements.reserve(conntrackSources);
	if (portElements) {
		countSl.elements.reserve(statelessSources);
		guardSl.elements.reserve(statelessSources);
	}

	// Which shard's chain a stateless source's packets and an address's
	// answers jump to (portForm): by inside prefix and by shared
	// address, or in the unit form by their bits (egressPart, returnPart).
	const bool unitForm = form.unit > 0;
	Set egressShard = makeSet("sl_egress_shard", SetKind::VerdictMap, { { S::IpSaddr }, {}, false }, !unitForm);
	Set returnShard = makeSet("sl_return_shard", SetKind::VerdictMap, { { S::IpDaddr }, {}, false }, false);
	// Which shard of my_ports the guard goes to, by the packet's shared address.
	Set portsShard = makeSet("my_ports_shard", SetKind::VerdictMap, { { S::IpSaddr }, {}, false }, false);
	if (shards > 1 && unitForm)
		for (uint32_t k = 0; k < shards; k++) {
			egressShard.elements.push_back({ { ip(Ipv4{ k << 4 }) }, {}, {}, shardName("sl_egress", k, shards) });
			returnShard.elements.push_back({ { ip(Ipv4{ k }) }, {}, {}, shardName("sl_return", k, shards) });
		}
	if (shards > 1 && !unitForm)
		for (size_t ai = 0; ai < plan.addresses.size(); ai++) {
			auto k = static_cast<uint32_t>(ai % shards);
			Ipv4 a = plan.addresses[ai].address;
			returnShard.elements.push_back({ { ip(a) }, {}, {}, shardName("sl_return", k, shards) });
			portsShard.elements.push_back({ { ip(a) }, {}, {}, shardName("my_ports", k, shards), true });
		}
	for (size_t i = 0; i < plan.sources.size(); i++) {
		const PlannedSource &s = plan.sources[i];
		if (s.mode == NatMode::Conntrack) {
			uint32_t mk = sourceMark(s);
			ctMarks.elements.push_back({ { zone(s.zone) }, { mark(mk) }, {} });
			if (s.routeMark)
				routeMarks.elements.push_back({ { mark(mk) }, {}, {} });
			countMark.elements.push_back({ { mark(mk) }, {}, "src_" + s.name });
			guardMark.elements.push_back({ { mark(mk) }, {}, "guard_" + s.name });
			newMark.elements.push_back({ { mark(mk), mark(s.match.mark.value_or(0)) }, {}, "new_" + s.name });
		} else {
			Field prefix = ipRange(s.match.saddr->first(), s.match.saddr->last());
			if (portElements) {
				countSl.elements.push_back({ { prefix }, {}, "src_" + s.name });
				guardSl.elements.push_back({ { prefix }, {}, "guard_" + s.name });
			}
			if (shards > 1 && !unitForm)
				egressShard.elements.push_back(
					{ { prefix }, {}, {}, shardName("sl_egress", static_cast<uint32_t>(i % shards), shards) });
		}
		ports.source(plan, i, s.assignments);
	}
	m.sets.push_back(std::move(ctMarks));
	m.sets.push_back(std::move(routeMarks));
	m.sets.push_back(ports.take(kNatPort));
	m.sets.push_back(ports.take(kNatAddr));
	m.sets.push_back(ports.take(kRetZone));
	m.sets.push_back(std::move(drainZone));
	m.sets.push_back(ports.take(kIcmpZone));
	if (shards > 1) {
		m.sets.push_back(std::move(egressShard));
		m.sets.push_back(std::move(returnShard));
		if (!unitForm)
			m.sets.push_back(std::move(portsShard));
	}
	for (uint32_t slot = kShardSlots; slot < ports.slots(); slot++)
		m.sets.push_back(ports.take(slot));
	for (Set *s : { &countMark, &countSl, &guardMark, &guardSl, &newMark })
		m.sets.push_back(std::move(*s));
	m.sets.push_back(std::move(countAddr));
	for (Set &s : zoneMaps)
		m.sets.push_back(std::move(s));

	for (Set &s : m.sets)
		sortElements(s);
	m.chains = chains(m);
	return m;
}

} // namespace

TableModel buildModel(const Plan &plan, uint64_t generation, bool portElements)
{
	return build(plan, generation, portElements, portForm(plan));
}

TableModel egressModel(const TableModel &model)
{
	TableModel e;
	e.family = Family::Netdev;
	e.tableName = kEgressTableName;
	e.comment = "portslice: new flows of each conntrack source that left " + model.uplink +
		    " (new_NAME - left_NAME: refused by conntrack)";
	e.uplink = model.uplink;
	Set left = makeSet("left_mark", SetKind::CounterMap, { { S::MetaMark }, {}, false }, false);
	Set orig = makeSet("orig_mark", SetKind::Map, { { S::MetaMark }, { S::MetaMark }, false }, false);
	if (const Set *counted = model.find("new_mark"))
		for (const Element &el : counted->elements) {
			std::string name = "left_" + el.counter.substr(std::string_view("new_").size());
			e.counters.push_back(name);
			left.elements.push_back({ { el.key[0] }, {}, name });
			orig.elements.push_back({ { el.key[0] }, { el.key[1] }, {} });
		}
	sortElements(left);
	sortElements(orig);
	e.sets.push_back(std::move(left));
	e.sets.push_back(std::move(orig));
	// Every packet out of the uplink pays one hash lookup on its mark; only
	// the first packets of conntrack sources' flows carry a source's mark.
	Chain chain{ "egress", "egress", "filter", "filter", 0,
		     { { { CounterRef{ Key{ { S::MetaMark }, {} }, "left_mark" },
			   MapAssign{ Target::MetaMark, Key{ { S::MetaMark }, {} }, "orig_mark" } } } },
		     model.uplink };
	e.chains.push_back(std::move(chain));
	return e;
}

TableModel declarations(const Plan &plan)
{
	// One source of each kind that shapes the table (its match keys, its
	// mode, the prefix length of a conntrack source matched by saddr
	// alone), without ports, and no address: the same sets, no elements.
	Plan small;
	small.server = plan.server;
	small.serverIndex = plan.serverIndex;
	small.datacenter = plan.datacenter;
	small.uplink = plan.uplink;
	small.servers = plan.servers;
	small.datacenters = plan.datacenters;
	std::set<std::tuple<Shape, NatMode, uint8_t>> kinds;
	for (const PlannedSource &s : plan.sources) {
		uint8_t length = s.match.saddr ? s.match.saddr->length : 0;
		if (kinds.insert({ Shape::of(s.match), s.mode, length }).second) {
			PlannedSource one = s;
			one.assignments.clear();
			one.candidates.clear();
			small.sources.push_back(std::move(one));
		}
	}
	TableModel m = build(small, 0, false, portForm(plan));
	for (Set &s : m.sets)
		s.elements.clear();
	return m;
}

namespace {

// The port sets either side filled, declared on both sides, in slot order.
MoveDelta takeDelta(PortSets &before, PortSets &after)
{
	std::set<uint32_t> slots;
	for (uint32_t slot : before.used())
		slots.insert(slot);
	for (uint32_t slot : after.used())
		slots.insert(slot);
	MoveDelta delta;
	for (uint32_t slot : slots) {
		delta.before.push_back(before.take(slot));
		delta.after.push_back(after.take(slot));
	}
	return delta;
}

} // namespace

MoveDelta moveDelta(const Plan &plan, const plan::SliceMove &move)
{
	PortForm form = portForm(plan);
	PortSets before(form), after(form);
	before.address(move.before, move.address, plan.serverIndex);
	after.address(plan.addresses[move.address], move.address, plan.serverIndex);
	for (const plan::SliceMove::Source &s : move.sources) {
		before.source(plan, s.index, s.assignments);
		after.source(plan, s.index, plan.sources[s.index].assignments);
	}
	return takeDelta(before, after);
}

MoveDelta movesDelta(const Plan &plan, const std::vector<plan::SliceMove> &moves)
{
	std::map<uint32_t, const plan::PlannedAddress *> addresses; // first `before` of each
	std::map<uint32_t, const std::vector<plan::Assignment> *> users;
	for (const plan::SliceMove &m : moves) {
		addresses.emplace(m.address, &m.before);
		for (const plan::SliceMove::Source &s : m.sources)
			users.emplace(s.index, &s.assignments);
	}
	PortForm form = portForm(plan);
	PortSets before(form), after(form);
	for (const auto &[index, was] : addresses) {
		before.address(*was, index, plan.serverIndex);
		after.address(plan.addresses[index], index, plan.serverIndex);
	}
	for (const auto &[index, was] : users) {
		before.source(plan, index, *was);
		after.source(plan, index, plan.sources[index].assignments);
	}
	return takeDelta(before, after);
}

} // namespace portslice::nft
