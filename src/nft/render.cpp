// SPDX-License-Identifier: MIT
// Text rendering of the table, byte for byte in the layout `nft -s list table` prints.
#include "nft/render.h"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <string_view>
#include <utility>

namespace portslice::nft {

namespace {

std::string ipv4Field(const Field &f)
{
	Ipv4 lo{ f.lo }, hi{ f.hi };
	if (f.lo == f.hi)
		return lo.str();
	uint32_t span = f.hi - f.lo + 1;
	// An aligned power-of-two run prints as a prefix, as nft does.
	if (f.hi - f.lo == 0xffffffffu)
		return lo.str() + "/0";
	if (std::has_single_bit(span) && (f.lo & (span - 1)) == 0)
		return lo.str() + "/" + std::to_string(32 - std::countr_zero(span));
	return lo.str() + "-" + hi.str();
}

std::string fieldText(const Field &f)
{
	char buf[16];
	switch (f.type) {
	case FieldType::IfName:
		return "\"" + f.name + "\"";
	case FieldType::Ipv4:
		return ipv4Field(f);
	case FieldType::Port:
		return f.lo == f.hi ? std::to_string(f.lo) : std::to_string(f.lo) + "-" + std::to_string(f.hi);
	case FieldType::Mark:
		std::snprintf(buf, sizeof(buf), "0x%08x", f.lo);
		return buf;
	case FieldType::QuotedPort:
		// A raw payload has no type to print by: nft shows the integer in hex.
		if (f.lo == f.hi)
			std::snprintf(buf, sizeof(buf), "0x%x", f.lo);
		else
			std::snprintf(buf, sizeof(buf), "0x%x-0x%x", f.lo, f.hi);
		return buf;
	case FieldType::Cgroup:
	case FieldType::Uid:
	case FieldType::Zone:
		return std::to_string(f.lo);
	}
	return {};
}

std::string fieldsText(const std::vector<Field> &fields)
{
	std::string out;
	for (const Field &f : fields)
		out += (out.empty() ? "" : " . ") + fieldText(f);
	return out;
}

// nft breaks element lists by the key's type: two addresses, five integers,
// or one concatenation or string per line.
int elementsPerLine(const Set &set)
{
	if (set.keyTypes.size() != 1)
		return 1;
	switch (set.keyTypes[0]) {
	case FieldType::Ipv4:
		return 2;
	case FieldType::IfName:
		return 1;
	default:
		return 5;
	}
}

// nft lists the elements of a concatenated hash set (my_blocks, drain_zone)
// in its mergesort order: the key's bytes as on the wire, read as one
// little-endian number, so the last byte weighs most. Only keys of addresses
// and ports (the table's only such sets), whose bytes are all big-endian.
bool listedByWireBytes(const Set &set)
{
	if (set.interval || set.keyTypes.size() < 2)
		return false;
	for (FieldType t : set.keyTypes)
		if (t != FieldType::Ipv4 && t != FieldType::Port)
			return false;
	return true;
}

std::string reversedWireBytes(const Element &e)
{
	std::string bytes;
	for (const Field &f : e.key) {
		int n = f.type == FieldType::Ipv4 ? 4 : 2;
		for (int i = 0; i < n; i++) // big-endian
			bytes += static_cast<char>((f.lo >> (8 * (n - 1 - i))) & 0xff);
	}
	return { bytes.rbegin(), bytes.rend() };
}

std::vector<const Element *> listingOrder(const Set &set, const std::vector<Element> &elements)
{
	std::vector<const Element *> out;
	out.reserve(elements.size());
	for (const Element &e : elements)
		out.push_back(&e);
	if (listedByWireBytes(set)) {
		std::vector<std::pair<std::string, const Element *>> keyed;
		keyed.reserve(out.size());
		for (const Element *e : out)
			keyed.emplace_back(reversedWireBytes(*e), e);
		std::sort(keyed.begin(), keyed.end(), [](const auto &a, const auto &b) {
			return static_cast<std::string_view>(a.first).compare(b.first) < 0;
		});
		for (size_t i = 0; i < keyed.size(); i++)
			out[i] = keyed[i].second;
	}
	return out;
}

} // namespace

std::string formatElement(const Set &set, const Element &e)
{
	std::string out = fieldsText(e.key);
	if (set.kind == SetKind::Map)
		out += " : " + fieldsText(e.data);
	else if (set.kind == SetKind::CounterMap)
		out += " : \"" + e.counter + "\"";
	return out;
}

std::vector<Chain> chains(const TableModel &m)
{
	const std::string up = "\"" + m.uplink + "\"";
	std::vector<Chain> out;

	Chain pre{ "prerouting", "prerouting", "filter", "raw", -300, {} };
	pre.rules.push_back("iifname " + up + " jump from_uplink");
	Chain output{ "output", "output", "filter", "raw", -300, {} };
	for (const Shape &s : m.shapes) {
		std::vector<std::string> rules = { s.keyExpr() + " @stateless_" + s.name() + " notrack" };
		if (s.name() == "saddr") {
			// Longest prefix last: its `ct zone set` wins.
			for (uint8_t length : m.zoneSaddrLengths)
				rules.push_back(zoneSaddrRule(length));
		} else {
			rules.push_back("ct zone set " + s.keyExpr() + " map @zone_" + s.name());
		}
		if (s.inPrerouting())
			pre.rules.insert(pre.rules.end(), rules.begin(), rules.end());
		if (s.inOutput())
			output.rules.insert(output.rules.end(), rules.begin(), rules.end());
	}
	out.push_back(std::move(pre));
	out.push_back(std::move(output));

	out.push_back({ "from_uplink", "", "", "", 0,
			{ "meta l4proto { tcp, udp } ip daddr set ip daddr . th dport map @sl_return notrack",
			  "meta l4proto { tcp, udp } ct zone set ip daddr . th dport map @ret_zone",
			  "meta l4proto { tcp, udp } ct zone set ip daddr . th dport map @drain_zone",
			  "icmp type { destination-unreachable, time-exceeded } ct zone set ip daddr . @th,224,16 map @icmp_zone" } });
	out.push_back({ "mark_prerouting", "prerouting", "filter", "mangle", -150,
			{ "ct state new ct mark set ct zone map @ct_marks",
			  "ct direction reply ct mark @route_marks meta mark set ct mark" } });
	out.push_back({ "mark_output", "output", "filter", "mangle", -150,
			{ "ct state new ct mark set ct zone map @ct_marks" } });
	out.push_back({ "postrouting", "postrouting", "nat", "srcnat", 100,
			{ "oifname " + up + " meta l4proto { tcp, udp } snat ip to ct mark . ip saddr map @nat_port",
			  "oifname " + up + " snat ip to ct mark . ip saddr map @nat_addr" } });
	// The leak guard: a port in one of this server's whole blocks passes with
	// one hash lookup; any other goes through port_guard, which drops it when
	// its address is shared and the port is outside this server's slices.
	out.push_back({ "egress", "postrouting", "filter", "srcnat + 10", 110,
			{ "oifname != " + up + " accept",
			  "counter name ct mark map @count_mark",
			  "counter name ip saddr map @count_sl",
			  "meta l4proto { tcp, udp } ip saddr set ip saddr . th sport map @sl_egress",
			  "meta l4proto { tcp, udp } ip saddr . th sport & " + std::to_string(kPortBlockMask) +
				  " != @my_blocks jump port_guard",
			  "ip saddr != @shared counter name ct mark map @guard_mark drop",
			  "counter name ip saddr map @guard_sl drop",
			  "counter name ip saddr map @count_addr" } });
	out.push_back({ "port_guard", "", "", "", 0,
			{ "ip saddr != @shared return",
			  "ip saddr . th sport @my_ports return",
			  "counter name ct mark map @guard_mark drop",
			  "counter name \"guard_other\" drop" } });
	return out;
}

std::string render(const TableModel &m, const plan::Plan *plan)
{
	std::string out;
	out.reserve(4096);
	out += "table inet " + std::string(kTableName) + " {\n";
	out += "\tcomment \"" + m.comment + "\"\n";
	bool first = true;
	auto separate = [&] {
		if (!first)
			out += "\n";
		first = false;
	};
	for (const std::string &c : m.counters) {
		separate();
		out += "\tcounter " + c + " {\n\t}\n";
	}
	for (const Set &s : m.sets) {
		separate();
		std::vector<Element> built; // a port set left empty: built now, freed after
		if (plan && s.elements.empty() && isPortSet(s.name))
			built = portSetElements(*plan, s.name);
		const std::vector<Element> &elements = built.empty() ? s.elements : built;
		out += s.kind == SetKind::Set ? "\tset " : "\tmap ";
		out += s.name + " {\n\t\t" + s.declaration + "\n";
		if (s.interval)
			out += "\t\tflags interval\n";
		if (!elements.empty()) {
			out += "\t\telements = { ";
			int perLine = elementsPerLine(s), onLine = 0;
			std::vector<const Element *> listed = listingOrder(s, elements);
			for (size_t i = 0; i < listed.size(); i++) {
				if (i > 0) {
					if (onLine >= perLine) {
						out += ",\n\t\t\t     ";
						onLine = 0;
					} else {
						out += ", ";
					}
				}
				out += formatElement(s, *listed[i]);
				onLine++;
			}
			out += " }\n";
		}
		out += "\t}\n";
	}
	for (const Chain &c : chains(m)) {
		separate();
		out += "\tchain " + c.name + " {\n";
		if (!c.hook.empty())
			out += "\t\ttype " + c.type + " hook " + c.hook + " priority " + c.priority + "; policy accept;\n";
		for (const std::string &r : c.rules)
			out += "\t\t" + r + "\n";
		out += "\t}\n";
	}
	out += "}\n";
	return out;
}

} // namespace portslice::nft
