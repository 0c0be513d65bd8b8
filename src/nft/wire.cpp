// SPDX-License-Identifier: MIT
// Keys, elements and set user data as bytes, exactly as nft 1.0.6 encodes them (tests/unit/nft_wire_test.cpp).
#include "nft/wire.h"

#include <algorithm>
#include <cstring>
#include <arpa/inet.h>
#include <iterator>
#include <linux/netfilter/nf_tables.h>
#include <tuple>

namespace portslice::nft {

SelectorInfo selectorInfo(Selector s)
{
	switch (s) {
	case Selector::Iifname: return { 41, 16, kHostOrder, 9, NFT_META_IIFNAME, {} };
	case Selector::IpSaddr: return { 7, 4, kBigEndian, 7, 12, 11 };
	case Selector::IpDaddr: return { 7, 4, kBigEndian, 7, 12, 12 };
	case Selector::ThSport: return { 13, 2, kBigEndian, 7, 11, 1 };
	case Selector::ThDport: return { 13, 2, kBigEndian, 7, 11, 2 };
	case Selector::MetaMark: return { 19, 4, kHostOrder, 9, NFT_META_MARK, {} };
	case Selector::MetaCgroup: return { 4, 4, kHostOrder, 9, NFT_META_CGROUP, {} };
	case Selector::MetaSkuid: return { 24, 4, kHostOrder, 9, NFT_META_SKUID, {} };
	case Selector::CtZone: return { 4, 2, kHostOrder, 12, NFT_CT_ZONE, 0xffffffffu };
	case Selector::CtMark: return { 19, 4, kHostOrder, 12, NFT_CT_MARK, 0xffffffffu };
	case Selector::QuotedSport: return { 4, 2, kBigEndian, 7, 0, 0 }; // raw payload: see selectorTypeof
	}
	return {};
}

bool convertsToBigEndian(const std::vector<Selector> &parts)
{
	if (parts.size() < 2)
		return false;
	for (Selector s : parts)
		if (selectorInfo(s).order == kBigEndian)
			return true;
	return false;
}

uint32_t concatType(const std::vector<Selector> &parts)
{
	uint32_t t = 0;
	for (Selector s : parts)
		t = (t << 6) | selectorInfo(s).type; // nft's TYPE_BITS
	return t;
}

uint32_t concatLen(const std::vector<Selector> &parts)
{
	if (parts.size() == 1)
		return selectorInfo(parts[0]).len;
	uint32_t n = 0;
	for (Selector s : parts)
		n += pad4(selectorInfo(s).len);
	return n;
}

void Udata::u32(uint8_t type, uint32_t v)
{
	buf_.push_back(static_cast<char>(type));
	buf_.push_back(4);
	buf_.append(reinterpret_cast<const char *>(&v), 4);
}

void Udata::nest(uint8_t type, const Udata &inner)
{
	buf_.push_back(static_cast<char>(type));
	buf_.push_back(static_cast<char>(inner.buf_.size()));
	buf_ += inner.buf_;
}

void Udata::str(uint8_t type, const std::string &s)
{
	buf_.push_back(static_cast<char>(type));
	buf_.push_back(static_cast<char>(s.size() + 1));
	buf_ += s;
	buf_.push_back('\0');
}

namespace {

// nft's proto_bases: the transport header is 3.
constexpr uint32_t kNftProtoBaseTransport = 3;
constexpr uint32_t kExprConcat = 13;

Udata selectorTypeof(Selector s)
{
	SelectorInfo i = selectorInfo(s);
	Udata fields;
	fields.u32(0, i.u0);
	if (i.u1)
		fields.u32(1, *i.u1);
	if (s == Selector::QuotedSport) {
		// A raw payload has no protocol field (desc 0, type 0): nft
		// records base, offset and length in bits.
		fields.u32(2, kNftProtoBaseTransport);
		fields.u32(3, 224);
		fields.u32(4, 16);
	}
	Udata e;
	e.u32(0, i.exprType);
	e.nest(1, fields);
	return e;
}

// typeof user data of a key or data; `typed` false: a `type a . b` concat,
// which nft 1.0.6 records as an empty concatenation.
Udata exprTypeof(const std::vector<Selector> &parts, bool typed)
{
	if (parts.size() == 1)
		return selectorTypeof(parts[0]);
	Udata list;
	if (typed)
		for (size_t i = 0; i < parts.size(); i++)
			list.nest(static_cast<uint8_t>(i), selectorTypeof(parts[i]));
	Udata e;
	e.u32(0, kExprConcat);
	e.nest(1, list);
	return e;
}

void putField(std::string &out, const Field &f, uint32_t v, bool bigEndian, bool inConcat)
{
	size_t start = out.size();
	switch (f.type) {
	case FieldType::IfName: {
		std::string name = f.name;
		name.resize(16, '\0');
		out += name;
		break;
	}
	case FieldType::Ipv4: {
		uint32_t be = htonl(v);
		out.append(reinterpret_cast<const char *>(&be), 4);
		break;
	}
	case FieldType::Port:
	case FieldType::QuotedPort: {
		uint16_t be = htons(static_cast<uint16_t>(v));
		out.append(reinterpret_cast<const char *>(&be), 2);
		break;
	}
	case FieldType::Zone: {
		uint16_t h = static_cast<uint16_t>(v);
		out.append(reinterpret_cast<const char *>(&h), 2);
		break;
	}
	case FieldType::Mark:
	case FieldType::Cgroup:
	case FieldType::Uid: {
		uint32_t x = bigEndian ? htonl(v) : v;
		out.append(reinterpret_cast<const char *>(&x), 4);
		break;
	}
	}
	if (inConcat)
		out.resize(start + pad4(static_cast<uint32_t>(out.size() - start)), '\0');
}

std::string fieldsBytes(const std::vector<Field> &fields, const std::vector<Selector> &parts, bool high)
{
	std::string out;
	bool concat = parts.size() > 1;
	bool be = convertsToBigEndian(parts);
	for (const Field &f : fields)
		putField(out, f, high ? f.hi : f.lo, be, concat);
	return out;
}

bool fieldLess(const Field &x, const Field &y)
{
	if (x.name != y.name)
		return x.name < y.name;
	if (x.lo != y.lo)
		return x.lo < y.lo;
	return x.hi < y.hi;
}

bool sameField(const Field &x, const Field &y)
{
	return x.type == y.type && x.lo == y.lo && x.hi == y.hi && x.name == y.name;
}

bool elementKeyLess(const Element &a, const Element &b)
{
	for (size_t i = 0; i < a.key.size() && i < b.key.size(); i++) {
		if (fieldLess(a.key[i], b.key[i]))
			return true;
		if (fieldLess(b.key[i], a.key[i]))
			return false;
	}
	return a.key.size() < b.key.size();
}

bool sameFields(const std::vector<Field> &a, const std::vector<Field> &b)
{
	if (a.size() != b.size())
		return false;
	for (size_t i = 0; i < a.size(); i++)
		if (!sameField(a[i], b[i]))
			return false;
	return true;
}

bool sameValue(const Element &a, const Element &b)
{
	return sameFields(a.data, b.data) && a.counter == b.counter && a.chain == b.chain &&
	       a.gotoChain == b.gotoChain;
}

bool isRbtree(const Set &s) { return s.interval && s.key.size() == 1; }

// One field of `parts` back from `bytes` at `*at` (see putField).
bool takeField(const std::string &bytes, size_t *at, Selector sel, bool bigEndian, bool inConcat, Field *f)
{
	SelectorInfo info = selectorInfo(sel);
	size_t len = info.len, step = inConcat ? pad4(info.len) : info.len;
	if (*at + len > bytes.size())
		return false;
	const auto *p = reinterpret_cast<const unsigned char *>(bytes.data() + *at);
	f->type = fieldType(sel);
	uint32_t v = 0;
	switch (f->type) {
	case FieldType::IfName:
		f->name.assign(reinterpret_cast<const char *>(p), strnlen(reinterpret_cast<const char *>(p), len));
		break;
	case FieldType::Ipv4:
		v = uint32_t{ p[0] } << 24 | uint32_t{ p[1] } << 16 | uint32_t{ p[2] } << 8 | p[3];
		break;
	case FieldType::Port:
	case FieldType::QuotedPort:
		v = uint32_t{ p[0] } << 8 | p[1];
		break;
	case FieldType::Zone: {
		uint16_t h;
		std::memcpy(&h, p, 2);
		v = h;
		break;
	}
	case FieldType::Mark:
	case FieldType::Cgroup:
	case FieldType::Uid: {
		uint32_t x;
		std::memcpy(&x, p, 4);
		v = bigEndian ? ntohl(x) : x;
		break;
	}
	}
	f->lo = f->hi = v;
	*at += step;
	return true;
}

// All fields of `parts` from `bytes`, which must hold exactly them.
bool takeFields(const std::string &bytes, const std::vector<Selector> &parts, std::vector<Field> *out)
{
	bool concat = parts.size() > 1, be = convertsToBigEndian(parts);
	size_t at = 0;
	out->clear();
	for (Selector sel : parts) {
		Field f;
		if (!takeField(bytes, &at, sel, be, concat, &f))
			return false;
		out->push_back(std::move(f));
	}
	return at == bytes.size();
}

// `lo` fields with the high ends of `hi`'s.
void widen(std::vector<Field> &lo, const std::vector<Field> &hi)
{
	for (size_t i = 0; i < lo.size() && i < hi.size(); i++)
		lo[i].hi = hi[i].lo;
}

} // namespace

std::vector<Element> decodeElements(const Set &s, const std::vector<WireElem> &wire, size_t *malformed)
{
	std::vector<Element> out;
	auto value = [&](const WireElem &w, Element &e) {
		if (s.kind == SetKind::CounterMap) {
			e.counter = w.objref;
			return true;
		}
		if (s.kind == SetKind::VerdictMap) {
			e.chain = w.chain;
			e.gotoChain = w.gotoChain;
			return !w.chain.empty();
		}
		if (s.kind != SetKind::Map)
			return true;
		if (!s.dataInterval)
			return takeFields(w.data, s.data, &e.data);
		size_t half = w.data.size() / 2;
		std::vector<Field> high;
		if (!takeFields(w.data.substr(0, half), s.data, &e.data) || !takeFields(w.data.substr(half), s.data, &high))
			return false;
		widen(e.data, high);
		return true;
	};
	if (isRbtree(s)) {
		// Starts and ends by key; an end closes the range the start before
		// it opened (at hi + 1); a start without an end runs to the top.
		struct Point {
			uint32_t at;
			bool end;
			const WireElem *w;
		};
		std::vector<Point> points;
		for (const WireElem &w : wire) {
			std::vector<Field> key;
			if (!takeFields(w.key, s.key, &key)) {
				++*malformed;
				continue;
			}
			points.push_back({ key[0].lo, (w.flags & NFT_SET_ELEM_INTERVAL_END) != 0, &w });
		}
		std::sort(points.begin(), points.end(), [](const Point &a, const Point &b) {
			return a.at != b.at ? a.at < b.at : a.end > b.end; // an end before a start at the same key
		});
		for (size_t i = 0; i < points.size(); i++) {
			if (points[i].end)
				continue;
			Element e;
			(void)takeFields(points[i].w->key, s.key, &e.key);
			bool closed = i + 1 < points.size() && points[i + 1].end;
			e.key[0].hi = closed ? points[i + 1].at - 1 : 0xffffffffu;
			if (!value(*points[i].w, e)) {
				++*malformed;
				continue;
			}
			out.push_back(std::move(e));
		}
		return out;
	}
	for (const WireElem &w : wire) {
		Element e;
		if (!takeFields(w.key, s.key, &e.key) || !value(w, e)) {
			++*malformed;
			continue;
		}
		if (s.interval) {
			std::vector<Field> high;
			if (!takeFields(w.keyEnd, s.key, &high)) {
				++*malformed;
				continue;
			}
			widen(e.key, high);
		}
		out.push_back(std::move(e));
	}
	return out;
}

std::string setUserData(const Set &s)
{
	bool map = s.kind == SetKind::Map;
	Udata u;
	if (s.kind == SetKind::VerdictMap) {
		// nft's verdict type has no byte order of its own.
		u.u32(kUdKeyByteorder, selectorInfo(s.key[0]).order);
		u.u32(kUdDataByteorder, 0);
		u.u32(kUdDataInterval, 0);
		return u.bytes();
	}
	u.u32(kUdKeyByteorder, s.key.size() > 1 ? 0 : selectorInfo(s.key[0]).order);
	if (map)
		u.u32(kUdDataByteorder, s.data.size() > 1 ? 0 : selectorInfo(s.data[0]).order);
	if (s.typeofDecl || s.key.size() > 1)
		u.nest(kUdKeyTypeof, exprTypeof(s.key, s.typeofDecl));
	if (map && (s.typeofDecl || s.data.size() > 1))
		u.nest(kUdDataTypeof, exprTypeof(s.data, s.typeofDecl));
	if (s.kind != SetKind::Set)
		u.u32(kUdDataInterval, s.dataInterval ? 1 : 0);
	return u.bytes();
}

bool WireElem::operator<(const WireElem &o) const
{
	return std::tie(flags, key, keyEnd, data, objref, chain, gotoChain) <
	       std::tie(o.flags, o.key, o.keyEnd, o.data, o.objref, o.chain, o.gotoChain);
}

bool WireElem::operator==(const WireElem &o) const
{
	return std::tie(flags, key, keyEnd, data, objref, chain, gotoChain) ==
	       std::tie(o.flags, o.key, o.keyEnd, o.data, o.objref, o.chain, o.gotoChain);
}

size_t WireElem::size() const
{
	return 4 + 8 + 8 + key.size() + 8 + keyEnd.size() + 8 + data.size() + 8 + objref.size() + 32 + chain.size() + 16;
}

std::vector<WireElem> wireElements(const Set &s, const std::vector<Element> &elements, bool forDelete, bool head)
{
	std::vector<WireElem> out;
	out.reserve(isRbtree(s) ? 2 * elements.size() + 1 : elements.size());
	auto dataOf = [&](const Element &e, WireElem &w) {
		if (forDelete)
			return;
		if (s.kind == SetKind::CounterMap)
			w.objref = e.counter;
		else if (s.kind == SetKind::VerdictMap) {
			w.chain = e.chain;
			w.gotoChain = e.gotoChain;
		}
		else if (s.kind == SetKind::Map && s.dataInterval) // every field's low ends, then the high ends
			w.data = fieldsBytes(e.data, s.data, false) + fieldsBytes(e.data, s.data, true);
		else if (s.kind == SetKind::Map)
			w.data = fieldsBytes(e.data, s.data, false);
	};
	if (isRbtree(s)) {
		if (head && !elements.empty() && elements.front().key[0].lo != 0 && !forDelete) {
			WireElem zero;
			zero.flags = NFT_SET_ELEM_INTERVAL_END;
			zero.key = fieldsBytes({ Field{ elements.front().key[0].type, 0, 0, {} } }, s.key, false);
			out.push_back(std::move(zero));
		}
		for (const Element &e : elements) {
			WireElem w;
			w.key = fieldsBytes(e.key, s.key, false);
			dataOf(e, w);
			out.push_back(std::move(w));
			uint32_t hi = e.key[0].hi;
			if (hi != 0xffffffffu) {
				WireElem end;
				end.flags = NFT_SET_ELEM_INTERVAL_END;
				Field f = e.key[0];
				f.lo = f.hi = hi + 1;
				end.key = fieldsBytes({ f }, s.key, false);
				out.push_back(std::move(end));
			}
		}
		return out;
	}
	for (const Element &e : elements) {
		WireElem w;
		w.key = fieldsBytes(e.key, s.key, false);
		if (s.interval)
			w.keyEnd = fieldsBytes(e.key, s.key, true);
		dataOf(e, w);
		out.push_back(std::move(w));
	}
	return out;
}

bool sameElements(const std::vector<Element> &a, const std::vector<Element> &b)
{
	if (a.size() != b.size())
		return false;
	for (size_t i = 0; i < a.size(); i++)
		if (!sameFields(a[i].key, b[i].key) || !sameValue(a[i], b[i]))
			return false;
	return true;
}

WireDelta elementDelta(const Set &o, const Set &n)
{
	WireDelta d;
	if (isRbtree(n)) {
		// rbtree: ranges share end elements with their neighbours, so
		// compare what goes on the wire.
		std::vector<WireElem> before = wireElements(n, o.elements, false);
		std::vector<WireElem> after = wireElements(n, n.elements, false);
		std::sort(before.begin(), before.end());
		std::sort(after.begin(), after.end());
		std::set_difference(before.begin(), before.end(), after.begin(), after.end(), std::back_inserter(d.del));
		std::set_difference(after.begin(), after.end(), before.begin(), before.end(), std::back_inserter(d.add));
	} else {
		// One kernel element per model element: walk both lists (sorted
		// by key) once, and encode only what differs.
		std::vector<Element> gone, come;
		size_t i = 0, j = 0;
		while (i < o.elements.size() || j < n.elements.size()) {
			if (j == n.elements.size() ||
			    (i < o.elements.size() && elementKeyLess(o.elements[i], n.elements[j]))) {
				gone.push_back(o.elements[i++]);
			} else if (i == o.elements.size() || elementKeyLess(n.elements[j], o.elements[i])) {
				come.push_back(n.elements[j++]);
			} else {
				if (!sameValue(o.elements[i], n.elements[j])) {
					gone.push_back(o.elements[i]);
					come.push_back(n.elements[j]);
				}
				i++;
				j++;
			}
		}
		d.del = wireElements(n, gone, false);
		d.add = wireElements(n, come, false);
	}
	for (WireElem &e : d.del) {
		e.data.clear();
		e.objref.clear();
		e.chain.clear();
		e.gotoChain = false;
	}
	return d;
}

} // namespace portslice::nft
