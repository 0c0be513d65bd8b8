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
	out.push_back({ "from_uplink", "", "", "", 0,
			{ { { l4, MapAssign{ Target::IpDaddr, answer, "sl_return" }, Notrack{} } },
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
			  { { l4, MapAssign{ Target::IpSaddr, Key{ { S::IpSaddr, S::ThSport }, {} }, "sl_egress" } } },
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
	out.push_back({ "port_guard", "", "", "", 0,
			{ { { notShared, Verdict{ V::Return, {} } } },
			  { { Lookup{ Key{ { S::IpSaddr, S::ThSport }, {} }, "my_ports", false }, Verdict{ V::Return, {} } } },
			  { { CounterRef{ byMark, "guard_mark" }, Verdict{ V::Drop, {} } } },
			  { { CounterRef{ std::nullopt, "guard_other" }, Verdict{ V::Drop, {} } } } } });
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

// The sets whose elements follow from the addresses' slices and the
// sources' ports: everything a slice move can change.
struct PortSets {
	Set myPorts = makeSet("my_ports", SetKind::Set, { { S::IpSaddr, S::ThSport } }, true);
	Set myBlocks = makeSet("my_blocks", SetKind::Set, { { S::IpSaddr, S::ThSport } }, false);
	Set natPort = makeSet("nat_port", SetKind::Map, { { S::MetaMark, S::IpSaddr }, { S::IpSaddr, S::ThSport }, false },
			      true);
	Set natAddr = makeSet("nat_addr", SetKind::Map, { { S::CtMark, S::IpSaddr }, { S::IpSaddr } }, true);
	Set retZone = makeSet("ret_zone", SetKind::Map, { { S::IpDaddr, S::ThDport }, { S::CtZone } }, true);
	// ICMP errors carry no port of their own: they find the zone of the flow
	// they quote by its source port (the shared port after SNAT).
	Set icmpZone = makeSet("icmp_zone", SetKind::Map, { { S::IpDaddr, S::QuotedSport }, { S::CtZone } }, true);
	Set slEgress = makeSet("sl_egress", SetKind::Map, { { S::IpSaddr, S::ThSport }, { S::IpSaddr } }, true);
	Set slReturn = makeSet("sl_return", SetKind::Map, { { S::IpDaddr, S::ThDport }, { S::IpDaddr } }, true);

	// `only`: fill just the set of that name ("" all, "-" none), so that a
	// large table can be built and sent one set at a time.
	explicit PortSets(std::string_view only = {})
	{
		natPort.dataInterval = true;
		natPort.egress = natAddr.egress = slEgress.egress = true;
		for (Set *s : all())
			filled_.push_back(only.empty() || s->name == only);
	}

	// One element per slice, not per run of adjacent slices: gaining a slice
	// is then a pure add, and the kernel's pipapo sets pay a deletion with
	// a walk over the whole set.
	// The previous owner (`self`) of a draining slice keeps its ports here:
	// its flows' packets still leave.
	void address(const plan::PlannedAddress &a, uint32_t self)
	{
		auto add = [&](uint32_t slice) {
			config::PortRange ports = a.slice(slice);
			if (filled_[0])
				myPorts.elements.push_back({ { ip(a.address), port(ports) }, {}, {} });
			if (!filled_[7])
				return;
			// The guard's fast path: blocks wholly inside the slice, by their first port.
			uint32_t first = (uint32_t{ ports.lo } + kPortBlock - 1) / kPortBlock * kPortBlock;
			for (uint32_t b = first; b + kPortBlock - 1 <= ports.hi; b += kPortBlock) {
				auto p = static_cast<uint16_t>(b);
				myBlocks.elements.push_back({ { ip(a.address), port({ p, p }) }, {}, {} });
			}
		};
		for (uint32_t slice : a.mySlices)
			add(slice);
		for (uint32_t slice = 0; slice < a.previous.size(); slice++)
			if (a.drainedBy(slice, self))
				add(slice);
	}

	// `assignments`: the source's, now or before a move.
	void source(const Plan &plan, const PlannedSource &s, const std::vector<plan::Assignment> &assignments)
	{
		for (const plan::Assignment &as : assignments) {
			Ipv4 sharedAddr = plan.addresses[as.address].address;
			if (s.mode == NatMode::Conntrack) {
				uint32_t mk = sourceMark(s);
				if (filled_[1])
					natPort.elements.push_back({ { mark(mk), ipRange(as.first, as.last) }, { ip(sharedAddr), port(as.ports) }, {} });
				if (filled_[2])
					natAddr.elements.push_back({ { mark(mk), ipRange(as.first, as.last) }, { ip(sharedAddr) }, {} });
				if (filled_[3])
					retZone.elements.push_back({ { ip(sharedAddr), port(as.ports) }, { zone(s.zone) }, {} });
				if (filled_[4])
					icmpZone.elements.push_back({ { ip(sharedAddr), quotedPort(as.ports) }, { zone(s.zone) }, {} });
			} else {
				if (filled_[5])
					slEgress.elements.push_back({ { ip(as.first), port(as.ports) }, { ip(sharedAddr) }, {} });
				if (filled_[6])
					slReturn.elements.push_back({ { ip(sharedAddr), port(as.ports) }, { ip(as.first) }, {} });
			}
		}
	}

	void take(std::vector<Set> &out);

	// In the order of filled_.
	std::vector<Set *> all()
	{
		return { &myPorts, &natPort, &natAddr, &retZone, &icmpZone, &slEgress, &slReturn, &myBlocks };
	}

private:
	std::vector<bool> filled_;
};

void sortElements(Set &s)
{
	// Most sets are built in key order already (sources and addresses in
	// file order); checking first saves the sort's cost at 100k sources.
	if (!std::is_sorted(s.elements.begin(), s.elements.end(), keyLess))
		std::sort(s.elements.begin(), s.elements.end(), keyLess);
}

void PortSets::take(std::vector<Set> &out)
{
	for (Set *s : all()) {
		sortElements(*s);
		out.push_back(std::move(*s));
	}
}

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

bool isPortSet(std::string_view name)
{
	// Named: a temporary in the range-init would die before the loop body
	// reads the names through the pointers all() returns.
	PortSets sets("-");
	for (const Set *s : sets.all())
		if (s->name == name)
			return true;
	return false;
}

void portSetChunks(const Plan &plan, std::string_view name, size_t chunk,
		   const std::function<void(const std::vector<Element> &)> &take)
{
	PortSets ports(name);
	Set *target = nullptr;
	for (Set *s : ports.all())
		if (s->name == name)
			target = s;
	if (!target)
		return;
	auto flush = [&](size_t atLeast) {
		if (!target->elements.empty() && target->elements.size() >= atLeast) {
			take(target->elements);
			target->elements.clear();
		}
	};
	for (const plan::PlannedAddress &a : plan.addresses) {
		ports.address(a, plan.serverIndex);
		flush(chunk);
	}
	for (const PlannedSource &s : plan.sources) {
		ports.source(plan, s, s.assignments);
		flush(chunk);
	}
	flush(1);
}

std::vector<Element> portSetElements(const Plan &plan, std::string_view name, bool sorted)
{
	PortSets ports(name);
	for (const plan::PlannedAddress &a : plan.addresses)
		ports.address(a, plan.serverIndex);
	for (const PlannedSource &s : plan.sources)
		ports.source(plan, s, s.assignments);
	for (Set *s : ports.all())
		if (s->name == name) {
			if (sorted)
				sortElements(*s);
			return std::move(s->elements);
		}
	return {};
}

TableModel buildModel(const Plan &plan, uint64_t generation, bool portElements)
{
	TableModel m;
	m.comment = tableComment(plan, generation);
	m.generation = generation;
	m.uplink = plan.uplink;

	std::set<Shape> shapes;
	for (const PlannedSource &s : plan.sources)
		shapes.insert(Shape::of(s.match));
	m.shapes.assign(shapes.begin(), shapes.end());
	// More keys last: when two sources match a packet, the later `ct zone
	// set` wins, so the more specific source decides.
	std::stable_sort(m.shapes.begin(), m.shapes.end(), [](const Shape &a, const Shape &b) {
		return a.types().size() < b.types().size();
	});

	for (const PlannedSource &s : plan.sources) {
		m.counters.push_back("src_" + s.name);
		m.counters.push_back("guard_" + s.name);
		if (s.mode == NatMode::Conntrack)
			m.counters.push_back("new_" + s.name);
	}
	for (const plan::PlannedAddress &a : plan.addresses)
		m.counters.push_back("addr_" + a.address.str());
	m.counters.push_back("guard_other");

	PortSets ports(portElements ? "" : "-");
	Set shared = makeSet("shared", SetKind::Set, { { S::IpSaddr }, {}, false }, false);
	Set countAddr = makeSet("count_addr", SetKind::CounterMap, { { S::IpSaddr }, {}, false }, false);
	for (const plan::PlannedAddress &a : plan.addresses) {
		shared.elements.push_back({ { ip(a.address) }, {}, {} });
		countAddr.elements.push_back({ { ip(a.address) }, {}, "addr_" + a.address.str() });
		ports.address(a, plan.serverIndex);
	}
	m.sets.push_back(generationSet(generation));
	m.sets.push_back(std::move(shared));
	m.sets.push_back(std::move(ports.myPorts));
	m.sets.push_back(std::move(ports.myBlocks));

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
			for (const PlannedSource &s : plan.sources)
				if (s.mode == NatMode::Stateless && Shape::of(s.match) == shape)
					stateless.elements.push_back({ matchKey(s.match), {}, {} });
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

	for (const PlannedSource &s : plan.sources) {
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
			countSl.elements.push_back({ { prefix }, {}, "src_" + s.name });
			guardSl.elements.push_back({ { prefix }, {}, "guard_" + s.name });
		}
		ports.source(plan, s, s.assignments);
	}
	for (Set *s : { &ctMarks, &routeMarks, &ports.natPort, &ports.natAddr, &ports.retZone, &drainZone,
			&ports.icmpZone, &ports.slEgress, &ports.slReturn, &countMark, &countSl, &guardMark, &guardSl, &newMark })
		m.sets.push_back(std::move(*s));
	m.sets.push_back(std::move(countAddr));
	for (Set &s : zoneMaps)
		m.sets.push_back(std::move(s));

	for (Set &s : m.sets)
		sortElements(s);
	m.chains = chains(m);
	return m;
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
	TableModel m = buildModel(small, 0, false);
	for (Set &s : m.sets)
		s.elements.clear();
	return m;
}

MoveDelta moveDelta(const Plan &plan, const plan::SliceMove &move)
{
	PortSets before, after;
	before.address(move.before, plan.serverIndex);
	after.address(plan.addresses[move.address], plan.serverIndex);
	for (const plan::SliceMove::Source &s : move.sources) {
		before.source(plan, plan.sources[s.index], s.assignments);
		after.source(plan, plan.sources[s.index], plan.sources[s.index].assignments);
	}
	MoveDelta delta;
	before.take(delta.before);
	after.take(delta.after);
	return delta;
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
	PortSets before, after;
	for (const auto &[index, was] : addresses) {
		before.address(*was, plan.serverIndex);
		after.address(plan.addresses[index], plan.serverIndex);
	}
	for (const auto &[index, was] : users) {
		before.source(plan, plan.sources[index], *was);
		after.source(plan, plan.sources[index], plan.sources[index].assignments);
	}
	MoveDelta delta;
	before.take(delta.before);
	after.take(delta.after);
	return delta;
}

} // namespace portslice::nft
