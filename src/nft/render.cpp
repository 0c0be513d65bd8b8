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
	if (set.key.size() != 1)
		return 1;
	switch (fieldType(set.key[0])) {
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
// little-endian number, so the last byte weighs most. Keys of addresses and
// ports (big-endian bytes) and of marks (new_mark: host order, little-endian
// here, so `ct mark . meta mark` lists by the second mark first).
bool listedByWireBytes(const Set &set)
{
	if (set.interval || set.key.size() < 2)
		return false;
	for (FieldType t : set.keyTypes())
		if (t != FieldType::Ipv4 && t != FieldType::Port && t != FieldType::Mark)
			return false;
	return true;
}

std::string reversedWireBytes(const Element &e)
{
	std::string bytes;
	for (const Field &f : e.key) {
		int n = f.type == FieldType::Port ? 2 : 4;
		for (int i = 0; i < n; i++) // big-endian, or little-endian for a mark
			bytes += static_cast<char>((f.lo >> (8 * (f.type == FieldType::Mark ? i : n - 1 - i))) & 0xff);
	}
	return { bytes.rbegin(), bytes.rend() };
}

// nft lists a concatenated interval set (the kernel's pipapo) in the order
// its elements were added, a deleted and added one last; every other set
// sorted. The caller gives such a set's elements in that order.
bool listedAsInserted(const Set &set)
{
	return set.interval && set.key.size() > 1;
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

template<class... F>
struct Overloaded : F... {
	using F::operator()...;
};

std::string join(const std::vector<std::string> &parts, const char *sep)
{
	std::string out;
	for (const std::string &p : parts)
		out += (out.empty() ? "" : sep) + p;
	return out;
}

// The datatype nft declares a `type` set's component by.
const char *typeName(Selector s)
{
	switch (s) {
	case Selector::Iifname: return "ifname";
	case Selector::IpSaddr:
	case Selector::IpDaddr: return "ipv4_addr";
	case Selector::ThSport:
	case Selector::ThDport: return "inet_service";
	case Selector::MetaMark:
	case Selector::CtMark: return "mark";
	case Selector::MetaSkuid: return "uid";
	case Selector::MetaCgroup:
	case Selector::CtZone:
	case Selector::QuotedSport: return "integer";
	}
	return "integer";
}

std::string components(const std::vector<Selector> &parts, bool typeofDecl)
{
	std::vector<std::string> words;
	for (Selector s : parts)
		words.emplace_back(typeofDecl ? selectorText(s) : typeName(s));
	return join(words, " . ");
}

std::string keyText(const Key &key)
{
	std::vector<std::string> words;
	for (Selector s : key.parts)
		words.emplace_back(selectorText(s));
	if (key.mask) {
		// An address mask prints as an address, others as an integer.
		std::string &masked = key.maskFirst ? words.front() : words.back();
		bool address = fieldType(key.maskFirst ? key.parts.front() : key.parts.back()) == FieldType::Ipv4;
		masked += " & " + (address ? Ipv4{ *key.mask }.str() : std::to_string(*key.mask));
	}
	return join(words, " . ");
}

const char *targetText(Target t)
{
	switch (t) {
	case Target::CtZone: return "ct zone";
	case Target::CtMark: return "ct mark";
	case Target::MetaMark: return "meta mark";
	case Target::IpSaddr: return "ip saddr";
	case Target::IpDaddr: return "ip daddr";
	}
	return "";
}

std::string matchText(const Match &m)
{
	const char *neq = m.negate ? "!= " : "";
	switch (m.what) {
	case Match::What::Iifname: return std::string("iifname ") + neq + "\"" + m.ifname + "\"";
	case Match::What::Oifname: return std::string("oifname ") + neq + "\"" + m.ifname + "\"";
	case Match::What::L4ProtoTcpUdp: return "meta l4proto { tcp, udp }";
	case Match::What::IcmpErrorTypes: return "icmp type { destination-unreachable, time-exceeded }";
	case Match::What::CtStateNew: return "ct state new";
	case Match::What::CtDirectionReply: return "ct direction reply";
	}
	return "";
}

std::string statementText(const Statement &st)
{
	return std::visit(
		Overloaded{
			[](const Match &m) { return matchText(m); },
			[](const Lookup &l) { return keyText(l.key) + (l.negate ? " != @" : " @") + l.set; },
			[](const MapAssign &a) {
				return std::string(targetText(a.target)) + " set " + keyText(a.key) + " map @" + a.map;
			},
			[](const Assign &a) {
				return std::string(targetText(a.target)) + " set " + selectorText(a.source);
			},
			[](const CounterRef &c) {
				return c.key ? "counter name " + keyText(*c.key) + " map @" + c.name
					     : "counter name \"" + c.name + "\"";
			},
			[](const Snat &n) { return "snat ip to " + keyText(n.key) + " map @" + n.map; },
			[](const Notrack &) { return std::string("notrack"); },
			[](const Dispatch &d) { return keyText(d.key) + " vmap @" + d.map; },
			[](const Verdict &v) {
				switch (v.kind) {
				case Verdict::Kind::Accept: return std::string("accept");
				case Verdict::Kind::Drop: return std::string("drop");
				case Verdict::Kind::Return: return std::string("return");
				case Verdict::Kind::Jump: return "jump " + v.chain;
				}
				return std::string();
			},
		},
		st);
}

} // namespace

const char *selectorText(Selector s)
{
	switch (s) {
	case Selector::Iifname: return "iifname";
	case Selector::IpSaddr: return "ip saddr";
	case Selector::IpDaddr: return "ip daddr";
	case Selector::ThSport: return "th sport";
	case Selector::ThDport: return "th dport";
	case Selector::MetaMark: return "meta mark";
	case Selector::MetaCgroup: return "meta cgroup";
	case Selector::MetaSkuid: return "meta skuid";
	case Selector::CtZone: return "ct zone";
	case Selector::CtMark: return "ct mark";
	case Selector::QuotedSport: return "@th,224,16";
	}
	return "";
}

std::string declaration(const Set &s)
{
	std::string out = (s.typeofDecl ? "typeof " : "type ") + components(s.key, s.typeofDecl);
	if (s.kind == SetKind::Map)
		out += std::string(" : ") + (s.dataInterval ? "interval " : "") + components(s.data, s.typeofDecl);
	else if (s.kind == SetKind::CounterMap)
		out += " : counter";
	else if (s.kind == SetKind::VerdictMap)
		out += " : verdict";
	return out;
}

std::string formatRule(const Rule &rule)
{
	std::vector<std::string> words;
	for (const Statement &st : rule.statements)
		words.push_back(statementText(st));
	return join(words, " ");
}

std::string formatKey(const Element &e)
{
	return fieldsText(e.key);
}

std::string formatElement(const Set &set, const Element &e)
{
	std::string out = fieldsText(e.key);
	if (set.kind == SetKind::Map)
		out += " : " + fieldsText(e.data);
	else if (set.kind == SetKind::CounterMap)
		out += " : \"" + e.counter + "\"";
	else if (set.kind == SetKind::VerdictMap)
		out += (e.gotoChain ? " : goto " : " : jump ") + e.chain;
	return out;
}

std::string render(const TableModel &m, const plan::Plan *plan, const ElementOrder &order, size_t expectedBytes)
{
	std::string out;
	out.reserve(std::max<size_t>(expectedBytes, 4096));
	out += std::string("table ") + (m.family == Family::Netdev ? "netdev " : "inet ") + m.tableName + " {\n";
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
	std::optional<PortSetSource> source;
	if (plan)
		source.emplace(*plan);
	for (const Set &s : m.sets) {
		separate();
		std::vector<Element> built; // a port set left empty: built now, freed after
		bool fromPlan = plan && s.elements.empty() && isPortSet(s.name);
		if (fromPlan)
			built = source->elements(s.name, !listedAsInserted(s));
		if (order && listedAsInserted(s)) {
			if (!fromPlan)
				built = s.elements;
			order(s, built);
			fromPlan = true;
		}
		const std::vector<Element> &elements = fromPlan ? built : s.elements;
		out += s.kind == SetKind::Set ? "\tset " : "\tmap ";
		out += s.name + " {\n\t\t" + declaration(s) + "\n";
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
	for (const Chain &c : m.chains) {
		separate();
		out += "\tchain " + c.name + " {\n";
		if (!c.hook.empty())
			out += "\t\ttype " + c.type + " hook " + c.hook +
			       (c.device.empty() ? "" : " device \"" + c.device + "\"") + " priority " + c.priority +
			       "; policy accept;\n";
		for (const Rule &r : c.rules)
			out += "\t\t" + formatRule(r) + "\n";
		out += "\t}\n";
	}
	out += "}\n";
	return out;
}

} // namespace portslice::nft
