// SPDX-License-Identifier: MIT
// TableModel -> libnftnl objects in one batch, built to equal byte for byte what `nft -f` of the rendered text creates.
#include "nft/apply.h"

#include <stdexcept>

#include <algorithm>
#include <arpa/inet.h>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <linux/icmp.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <map>
#include <set>
#include <tuple>

#include "nft/render.h"

namespace portslice::nft {

namespace {

// ---- the expressions a key component is loaded by, and its set type ----

enum class Comp : uint8_t {
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
	QuotedSport, // @th,224,16: source port of the packet an ICMP error quotes
	Counter,     // object map data
};

constexpr uint32_t kHostOrder = 1;
constexpr uint32_t kBigEndian = 2;

struct CompInfo {
	uint32_t type;  // nft datatype id (ipv4_addr 7, inet_service 13, mark 19, uid 24, ifname 41, integer 4)
	uint32_t len;   // bytes, unpadded
	uint32_t order; // kHostOrder or kBigEndian
	// typeof user data: nft expression type (payload 7, meta 9, ct 12) and its two fields.
	uint32_t exprType;
	uint32_t u0;
	std::optional<uint32_t> u1;
};

CompInfo info(Comp c)
{
	switch (c) {
	case Comp::Iifname: return {41, 16, kHostOrder, 9, NFT_META_IIFNAME, {}};
	case Comp::IpSaddr: return {7, 4, kBigEndian, 7, 12, 11};
	case Comp::IpDaddr: return {7, 4, kBigEndian, 7, 12, 12};
	case Comp::ThSport: return {13, 2, kBigEndian, 7, 11, 1};
	case Comp::ThDport: return {13, 2, kBigEndian, 7, 11, 2};
	case Comp::MetaMark: return {19, 4, kHostOrder, 9, NFT_META_MARK, {}};
	case Comp::MetaCgroup: return {4, 4, kHostOrder, 9, NFT_META_CGROUP, {}};
	case Comp::MetaSkuid: return {24, 4, kHostOrder, 9, NFT_META_SKUID, {}};
	case Comp::CtZone: return {4, 2, kHostOrder, 12, NFT_CT_ZONE, 0xffffffffu};
	case Comp::CtMark: return {19, 4, kHostOrder, 12, NFT_CT_MARK, 0xffffffffu};
	case Comp::QuotedSport: return {4, 2, kBigEndian, 7, 0, 0}; // raw payload: see compTypeof
	case Comp::Counter: return {0, 0, 0, 0, 0, {}};
	}
	return {};
}

uint32_t pad4(uint32_t n) { return (n + 3) & ~3u; }

// A concatenation with an address carries its host-order integers in network
// order (nft inserts hton on the rule side, and stores elements likewise).
bool convertsToBigEndian(const std::vector<Comp> &comps)
{
	if (comps.size() < 2)
		return false;
	for (Comp c : comps)
		if (info(c).order == kBigEndian)
			return true;
	return false;
}

// ---- set declarations ----

struct SetDecl {
	std::vector<Comp> key;
	std::vector<Comp> data; // empty: plain set; {Counter}: object map
	bool typeofKey = false;
	bool typeofData = false;
	bool interval = false;
	bool dataInterval = false; // `: interval ...` (nat_port)

	bool isMap() const { return !data.empty() && data[0] != Comp::Counter; }
	bool isObjMap() const { return !data.empty() && data[0] == Comp::Counter; }
};

Comp compOf(const std::string &word)
{
	static const std::map<std::string, Comp> kWords = {
		{"iifname", Comp::Iifname}, {"ifname", Comp::Iifname},
		{"ip saddr", Comp::IpSaddr}, {"ipv4_addr", Comp::IpSaddr},
		{"ip daddr", Comp::IpDaddr},
		{"th sport", Comp::ThSport}, {"inet_service", Comp::ThSport},
		{"th dport", Comp::ThDport},
		{"meta mark", Comp::MetaMark}, {"mark", Comp::MetaMark},
		{"meta cgroup", Comp::MetaCgroup},
		{"meta skuid", Comp::MetaSkuid}, {"uid", Comp::MetaSkuid},
		{"ct zone", Comp::CtZone},
		{"ct mark", Comp::CtMark},
		{"@th,224,16", Comp::QuotedSport},
		{"counter", Comp::Counter},
	};
	auto it = kWords.find(word);
	if (it == kWords.end())
		throw std::logic_error("nft apply: unknown key expression '" + word + "'");
	return it->second;
}

std::vector<Comp> compsOf(const std::string &text)
{
	std::vector<Comp> out;
	size_t p = 0;
	for (;;) {
		size_t dot = text.find(" . ", p);
		out.push_back(compOf(text.substr(p, dot == std::string::npos ? std::string::npos : dot - p)));
		if (dot == std::string::npos)
			return out;
		p = dot + 3;
	}
}

// The set's netlink form follows from its declaration, the line `nft list`
// prints ("typeof ip saddr . th sport : ip saddr"), so that text and kernel
// cannot disagree on a type.
SetDecl declOf(const Set &s)
{
	SetDecl d;
	std::string text = s.declaration;
	bool typeofDecl = text.rfind("typeof ", 0) == 0;
	text = text.substr(typeofDecl ? 7 : 5);
	size_t colon = text.find(" : ");
	d.key = compsOf(text.substr(0, colon));
	d.typeofKey = typeofDecl;
	if (colon != std::string::npos) {
		std::string data = text.substr(colon + 3);
		if (data.rfind("interval ", 0) == 0) {
			d.dataInterval = true;
			data = data.substr(9);
		}
		d.data = compsOf(data);
		d.typeofData = typeofDecl;
	}
	d.interval = s.interval;
	return d;
}

uint32_t concatType(const std::vector<Comp> &comps)
{
	uint32_t t = 0;
	for (Comp c : comps)
		t = (t << 6) | info(c).type; // nft's TYPE_BITS
	return t;
}

uint32_t concatLen(const std::vector<Comp> &comps)
{
	if (comps.size() == 1)
		return info(comps[0]).len;
	uint32_t n = 0;
	for (Comp c : comps)
		n += pad4(info(c).len);
	return n;
}

// nftnl_udata TLVs: u8 type, u8 length, value.
class Udata {
public:
	void u32(uint8_t type, uint32_t v)
	{
		buf_.push_back(static_cast<char>(type));
		buf_.push_back(4);
		buf_.append(reinterpret_cast<const char *>(&v), 4);
	}
	void nest(uint8_t type, const Udata &inner)
	{
		buf_.push_back(static_cast<char>(type));
		buf_.push_back(static_cast<char>(inner.buf_.size()));
		buf_ += inner.buf_;
	}
	void str(uint8_t type, const std::string &s)
	{
		buf_.push_back(static_cast<char>(type));
		buf_.push_back(static_cast<char>(s.size() + 1));
		buf_ += s;
		buf_.push_back('\0');
	}
	const std::string &bytes() const { return buf_; }

private:
	std::string buf_;
};

// nft's proto_bases: the transport header is 3.
constexpr uint32_t kNftProtoBaseTransport = 3;

Udata compTypeof(Comp c)
{
	CompInfo i = info(c);
	Udata fields;
	fields.u32(0, i.u0);
	if (i.u1)
		fields.u32(1, *i.u1);
	if (c == Comp::QuotedSport) {
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

constexpr uint32_t kExprConcat = 13;

// typeof user data of a key or data; `typed` false: a `type a . b` concat,
// which nft 1.0.6 records as an empty concatenation.
Udata exprTypeof(const std::vector<Comp> &comps, bool typed)
{
	if (comps.size() == 1)
		return compTypeof(comps[0]);
	Udata list;
	if (typed)
		for (size_t i = 0; i < comps.size(); i++)
			list.nest(static_cast<uint8_t>(i), compTypeof(comps[i]));
	Udata e;
	e.u32(0, kExprConcat);
	e.nest(1, list);
	return e;
}

enum UdataSet : uint8_t {
	kUdKeyByteorder = 0,
	kUdDataByteorder = 1,
	kUdKeyTypeof = 3,
	kUdDataTypeof = 4,
	kUdDataInterval = 6,
};

std::string setUdata(const SetDecl &d)
{
	Udata u;
	u.u32(kUdKeyByteorder, d.key.size() > 1 ? 0 : info(d.key[0]).order);
	if (d.isMap())
		u.u32(kUdDataByteorder, d.data.size() > 1 ? 0 : info(d.data[0]).order);
	if (d.typeofKey || d.key.size() > 1)
		u.nest(kUdKeyTypeof, exprTypeof(d.key, d.typeofKey));
	if (d.isMap() && (d.typeofData || d.data.size() > 1))
		u.nest(kUdDataTypeof, exprTypeof(d.data, d.typeofData));
	if (!d.data.empty())
		u.u32(kUdDataInterval, d.dataInterval ? 1 : 0);
	return u.bytes();
}

// ---- element bytes ----

void putField(std::string &out, const Field &f, uint32_t v, Comp c, bool bigEndian, bool inConcat)
{
	CompInfo i = info(c);
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
	(void)i;
	if (inConcat)
		out.resize(start + pad4(static_cast<uint32_t>(out.size() - start)), '\0');
}

std::string fieldsBytes(const std::vector<Field> &fields, const std::vector<Comp> &comps, bool high)
{
	std::string out;
	bool concat = comps.size() > 1;
	bool be = convertsToBigEndian(comps);
	for (size_t i = 0; i < fields.size(); i++)
		putField(out, fields[i], high ? fields[i].hi : fields[i].lo, comps[i], be, concat);
	return out;
}

// Interval data (nat_port): every field's low ends, then every field's high ends.
std::string intervalDataBytes(const std::vector<Field> &fields, const std::vector<Comp> &comps)
{
	return fieldsBytes(fields, comps, false) + fieldsBytes(fields, comps, true);
}

// ---- netlink helpers ----

void putNetU32(nlmsghdr *nlh, uint16_t type, uint32_t v) { mnl_attr_put_u32(nlh, type, htonl(v)); }

void putValue(nlmsghdr *nlh, uint16_t type, const std::string &bytes)
{
	nlattr *n = mnl_attr_nest_start(nlh, type);
	mnl_attr_put(nlh, NFTA_DATA_VALUE, bytes.size(), bytes.data());
	mnl_attr_nest_end(nlh, n);
}

// One element as the kernel takes it (NFTA_LIST_ELEM), attributes in
// libnftnl's order: flags, key, key end, data, object reference.
struct WireElem {
	uint32_t flags = 0;
	std::string key;
	std::string keyEnd;
	std::string data;
	std::string objref;

	auto tie() const { return std::tie(flags, key, keyEnd, data, objref); }
	bool operator<(const WireElem &o) const { return tie() < o.tie(); }
	bool operator==(const WireElem &o) const { return tie() == o.tie(); }

	size_t size() const
	{
		return 4 + 8 + 8 + key.size() + 8 + keyEnd.size() + 8 + data.size() + 8 + objref.size() + 16;
	}
};

void putElem(nlmsghdr *nlh, uint16_t index, const WireElem &e)
{
	nlattr *n = mnl_attr_nest_start(nlh, index);
	if (e.flags)
		putNetU32(nlh, NFTA_SET_ELEM_FLAGS, e.flags);
	putValue(nlh, NFTA_SET_ELEM_KEY, e.key);
	if (!e.keyEnd.empty())
		putValue(nlh, NFTA_SET_ELEM_KEY_END, e.keyEnd);
	if (!e.data.empty())
		putValue(nlh, NFTA_SET_ELEM_DATA, e.data);
	if (!e.objref.empty())
		mnl_attr_put_strz(nlh, NFTA_SET_ELEM_OBJREF, e.objref.c_str());
	mnl_attr_nest_end(nlh, n);
}

// The elements of a set as nft sends them. A single-field interval set (the
// kernel's rbtree) takes each range as a start element and an end element at
// hi + 1, plus a closing end element at 0 when no range starts there.
std::vector<WireElem> wireElements(const SetDecl &d, const std::vector<Element> &elements, bool forDelete)
{
	std::vector<WireElem> out;
	auto dataOf = [&](const Element &e, WireElem &w) {
		if (forDelete || d.data.empty())
			return;
		if (d.isObjMap())
			w.objref = e.counter;
		else if (d.dataInterval)
			w.data = intervalDataBytes(e.data, d.data);
		else
			w.data = fieldsBytes(e.data, d.data, false);
	};
	if (d.interval && d.key.size() == 1) {
		if (!elements.empty() && elements.front().key[0].lo != 0 && !forDelete) {
			WireElem zero;
			zero.flags = NFT_SET_ELEM_INTERVAL_END;
			zero.key = fieldsBytes({Field{elements.front().key[0].type, 0, 0, {}}}, d.key, false);
			out.push_back(std::move(zero));
		}
		for (const Element &e : elements) {
			WireElem w;
			w.key = fieldsBytes(e.key, d.key, false);
			dataOf(e, w);
			out.push_back(std::move(w));
			uint32_t hi = e.key[0].hi;
			if (hi != 0xffffffffu) {
				WireElem end;
				end.flags = NFT_SET_ELEM_INTERVAL_END;
				Field f = e.key[0];
				f.lo = f.hi = hi + 1;
				end.key = fieldsBytes({f}, d.key, false);
				out.push_back(std::move(end));
			}
		}
		return out;
	}
	for (const Element &e : elements) {
		WireElem w;
		w.key = fieldsBytes(e.key, d.key, false);
		if (d.interval)
			w.keyEnd = fieldsBytes(e.key, d.key, true);
		dataOf(e, w);
		out.push_back(std::move(w));
	}
	return out;
}

// Element messages stay far below 64 KiB: a netlink attribute length is 16 bits.
constexpr size_t kElemMessageBytes = 48 * 1024;

void putElements(Batch &batch, uint16_t msgType, const std::string &setName, uint32_t setId,
		 const std::vector<WireElem> &elems, const char *verb)
{
	size_t i = 0;
	while (i < elems.size()) {
		size_t first = i;
		std::string label = std::string(verb) + " elements of set " + setName;
		nlmsghdr *nlh = batch.message(msgType, NFPROTO_INET, NLM_F_CREATE, label);
		mnl_attr_put_strz(nlh, NFTA_SET_ELEM_LIST_TABLE, kTableName);
		mnl_attr_put_strz(nlh, NFTA_SET_ELEM_LIST_SET, setName.c_str());
		if (setId)
			putNetU32(nlh, NFTA_SET_ELEM_LIST_SET_ID, setId);
		nlattr *list = mnl_attr_nest_start(nlh, NFTA_SET_ELEM_LIST_ELEMENTS);
		size_t bytes = 0;
		uint16_t index = 0;
		while (i < elems.size() && bytes + elems[i].size() < kElemMessageBytes) {
			putElem(nlh, ++index, elems[i]);
			bytes += elems[i].size();
			i++;
		}
		mnl_attr_nest_end(nlh, list);
		(void)first;
		batch.commit();
	}
}

// ---- element comparison (the model sorts elements by key) ----

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

bool sameValue(const Element &a, const Element &b) { return sameFields(a.data, b.data) && a.counter == b.counter; }

bool sameElements(const std::vector<Element> &a, const std::vector<Element> &b)
{
	if (a.size() != b.size())
		return false;
	for (size_t i = 0; i < a.size(); i++)
		if (!sameFields(a[i].key, b[i].key) || !sameValue(a[i], b[i]))
			return false;
	return true;
}

// ---- rules ----

constexpr uint32_t kReg1 = NFT_REG_1;
constexpr uint32_t kCtStateNew = 1u << 3; // NF_CT_STATE_BIT(IP_CT_NEW)
constexpr uint8_t kCtDirReply = 1;        // IP_CT_DIR_REPLY
constexpr uint32_t kReg32First = NFT_REG32_00;

// nft numbers a register by 128-bit slot when the offset allows, else by 32-bit word.
uint32_t regAt(uint32_t words)
{
	return words % 4 == 0 ? kReg1 + words / 4 : kReg32First + words;
}

class RuleBuilder {
public:
	RuleBuilder(const char *chain) : rule_(nftnl_rule_alloc()), chain_(chain)
	{
		nftnl_rule_set_str(rule_.get(), NFTNL_RULE_TABLE, kTableName);
		nftnl_rule_set_str(rule_.get(), NFTNL_RULE_CHAIN, chain);
		nftnl_rule_set_u32(rule_.get(), NFTNL_RULE_FAMILY, NFPROTO_INET);
	}

	NftnlExpr expr(const char *name) { return NftnlExpr(nftnl_expr_alloc(name)); }
	void add(NftnlExpr e) { nftnl_rule_add_expr(rule_.get(), e.release()); }

	void metaLoad(uint32_t key, uint32_t dreg)
	{
		auto e = expr("meta");
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_META_KEY, key);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_META_DREG, dreg);
		add(std::move(e));
	}
	void metaSet(uint32_t key, uint32_t sreg)
	{
		auto e = expr("meta");
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_META_KEY, key);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_META_SREG, sreg);
		add(std::move(e));
	}
	void ctLoad(uint32_t key, uint32_t dreg)
	{
		auto e = expr("ct");
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_KEY, key);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_DREG, dreg);
		add(std::move(e));
	}
	void ctSet(uint32_t key, uint32_t sreg)
	{
		auto e = expr("ct");
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_KEY, key);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_SREG, sreg);
		add(std::move(e));
	}
	void cmp(uint32_t op, const void *data, uint32_t len)
	{
		auto e = expr("cmp");
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CMP_SREG, kReg1);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CMP_OP, op);
		nftnl_expr_set(e.get(), NFTNL_EXPR_CMP_DATA, data, len);
		add(std::move(e));
	}
	void payloadLoad(uint32_t base, uint32_t offset, uint32_t len, uint32_t dreg)
	{
		auto e = expr("payload");
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_DREG, dreg);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_BASE, base);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_OFFSET, offset);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_LEN, len);
		add(std::move(e));
	}
	// Rewrite an IPv4 address, fixing the IP checksum and the L4 pseudo-header.
	void payloadWriteAddress(uint32_t offset)
	{
		auto e = expr("payload");
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_SREG, kReg1);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_OFFSET, offset);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_LEN, 4);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_CSUM_TYPE, NFT_PAYLOAD_CSUM_INET);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_CSUM_OFFSET, 10);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_FLAGS, NFT_PAYLOAD_L4CSUM_PSEUDOHDR);
		add(std::move(e));
	}
	void byteorderHton(uint32_t reg)
	{
		auto e = expr("byteorder");
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BYTEORDER_SREG, reg);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BYTEORDER_DREG, reg);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BYTEORDER_OP, NFT_BYTEORDER_HTON);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BYTEORDER_LEN, 4);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BYTEORDER_SIZE, 4);
		add(std::move(e));
	}
	void lookup(const std::string &set, uint32_t setId, std::optional<uint32_t> dreg, bool invert = false)
	{
		auto e = expr("lookup");
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOOKUP_SREG, kReg1);
		if (dreg)
			nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOOKUP_DREG, *dreg);
		nftnl_expr_set_str(e.get(), NFTNL_EXPR_LOOKUP_SET, set.c_str());
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOOKUP_SET_ID, setId);
		if (invert)
			nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
		add(std::move(e));
	}
	void objrefMap(const std::string &set, uint32_t setId)
	{
		auto e = expr("objref");
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_OBJREF_SET_SREG, kReg1);
		nftnl_expr_set_str(e.get(), NFTNL_EXPR_OBJREF_SET_NAME, set.c_str());
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_OBJREF_SET_ID, setId);
		add(std::move(e));
	}
	void objrefName(const std::string &name)
	{
		auto e = expr("objref");
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_OBJREF_IMM_TYPE, NFT_OBJECT_COUNTER);
		nftnl_expr_set_str(e.get(), NFTNL_EXPR_OBJREF_IMM_NAME, name.c_str());
		add(std::move(e));
	}
	void verdict(int code, const char *chain = nullptr)
	{
		auto e = expr("immediate");
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_IMM_DREG, NFT_REG_VERDICT);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_IMM_VERDICT, static_cast<uint32_t>(code));
		if (chain)
			nftnl_expr_set_str(e.get(), NFTNL_EXPR_IMM_CHAIN, chain);
		add(std::move(e));
	}
	void notrack() { add(expr("notrack")); }
	void bitwiseMask(uint32_t mask) { bitwiseAnd(kReg1, &mask, 4); }
	// reg = reg & mask, len bytes (1 to 4).
	void bitwiseAnd(uint32_t reg, const void *mask, uint32_t len)
	{
		auto e = expr("bitwise");
		uint32_t zero = 0;
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BITWISE_SREG, reg);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BITWISE_DREG, reg);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BITWISE_LEN, len);
		nftnl_expr_set(e.get(), NFTNL_EXPR_BITWISE_MASK, mask, len);
		nftnl_expr_set(e.get(), NFTNL_EXPR_BITWISE_XOR, &zero, len);
		add(std::move(e));
	}
	void snat(bool withPorts)
	{
		auto e = expr("nat");
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_NAT_TYPE, NFT_NAT_SNAT);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_NAT_FAMILY, NFPROTO_IPV4);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_NAT_REG_ADDR_MIN, kReg1);
		if (withPorts) {
			// The map's data `address . port - address . port` sits in
			// 32-bit words 0..3 of register 1.
			nftnl_expr_set_u32(e.get(), NFTNL_EXPR_NAT_REG_ADDR_MAX, kReg32First + 2);
			nftnl_expr_set_u32(e.get(), NFTNL_EXPR_NAT_REG_PROTO_MIN, kReg32First + 1);
			nftnl_expr_set_u32(e.get(), NFTNL_EXPR_NAT_REG_PROTO_MAX, kReg32First + 3);
		}
		add(std::move(e));
	}

	// `meta nfproto ipv4`, which nft puts before anything that reads the IPv4 header.
	void ipv4Only()
	{
		metaLoad(NFT_META_NFPROTO, kReg1);
		uint8_t v = NFPROTO_IPV4;
		cmp(NFT_CMP_EQ, &v, 1);
	}
	void ifname(uint32_t key, uint32_t op, const std::string &name)
	{
		metaLoad(key, kReg1);
		char buf[16] = {};
		std::strncpy(buf, name.c_str(), sizeof(buf) - 1);
		cmp(op, buf, sizeof(buf));
	}

	// Load a concatenation into register 1 onwards.
	void loadKey(const std::vector<Comp> &comps)
	{
		bool hasIp = false;
		for (Comp c : comps)
			if (c == Comp::IpSaddr || c == Comp::IpDaddr)
				hasIp = true;
		if (hasIp)
			ipv4Only();
		bool be = convertsToBigEndian(comps);
		uint32_t words = 0;
		for (Comp c : comps) {
			uint32_t reg = regAt(words);
			switch (c) {
			case Comp::Iifname: metaLoad(NFT_META_IIFNAME, reg); break;
			case Comp::IpSaddr: payloadLoad(NFT_PAYLOAD_NETWORK_HEADER, 12, 4, reg); break;
			case Comp::IpDaddr: payloadLoad(NFT_PAYLOAD_NETWORK_HEADER, 16, 4, reg); break;
			case Comp::ThSport: payloadLoad(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 2, reg); break;
			case Comp::ThDport: payloadLoad(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, reg); break;
			case Comp::MetaMark: metaLoad(NFT_META_MARK, reg); break;
			case Comp::MetaCgroup: metaLoad(NFT_META_CGROUP, reg); break;
			case Comp::MetaSkuid: metaLoad(NFT_META_SKUID, reg); break;
			case Comp::CtMark: ctLoad(NFT_CT_MARK, reg); break;
			case Comp::CtZone: ctLoad(NFT_CT_ZONE, reg); break;
			case Comp::QuotedSport: payloadLoad(NFT_PAYLOAD_TRANSPORT_HEADER, 28, 2, reg); break;
			case Comp::Counter: break;
			}
			if (be && info(c).order == kHostOrder && c != Comp::Iifname)
				byteorderHton(reg);
			words += pad4(info(c).len) / 4;
		}
	}

	nftnl_rule *get() { return rule_.get(); }
	const char *chain() const { return chain_; }

private:
	NftnlRule rule_;
	const char *chain_;
};

// ---- the whole table ----

class TableWriter {
public:
	TableWriter(Batch &batch) : batch_(batch) {}

	void table(const std::string &comment)
	{
		NftnlTable t(nftnl_table_alloc());
		nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, kTableName);
		nftnl_table_set_u32(t.get(), NFTNL_TABLE_FLAGS, 0);
		Udata u;
		u.str(0, comment); // NFTNL_UDATA_TABLE_COMMENT
		nftnl_table_set_data(t.get(), NFTNL_TABLE_USERDATA, u.bytes().data(),
				     static_cast<uint32_t>(u.bytes().size()));
		nlmsghdr *nlh = batch_.message(NFT_MSG_NEWTABLE, NFPROTO_INET, NLM_F_CREATE, "adding table portslice");
		nftnl_table_nlmsg_build_payload(nlh, t.get());
		batch_.commit();
	}

	void deleteTable()
	{
		NftnlTable t(nftnl_table_alloc());
		nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, kTableName);
		nlmsghdr *nlh = batch_.message(NFT_MSG_DELTABLE, NFPROTO_INET, 0, "deleting table portslice");
		nftnl_table_nlmsg_build_payload(nlh, t.get());
		batch_.commit();
	}

	void chain(const Chain &h)
	{
		static const std::map<std::string, uint32_t> kHooks = {
			{"prerouting", NF_INET_PRE_ROUTING}, {"input", NF_INET_LOCAL_IN},
			{"forward", NF_INET_FORWARD}, {"output", NF_INET_LOCAL_OUT},
			{"postrouting", NF_INET_POST_ROUTING},
		};
		NftnlChain c(nftnl_chain_alloc());
		nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TABLE, kTableName);
		nftnl_chain_set_str(c.get(), NFTNL_CHAIN_NAME, h.name.c_str());
		if (!h.hook.empty()) {
			nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TYPE, h.type.c_str());
			nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_POLICY, NF_ACCEPT);
			nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_HOOKNUM, kHooks.at(h.hook));
			nftnl_chain_set_s32(c.get(), NFTNL_CHAIN_PRIO, h.priorityValue);
		}
		nlmsghdr *nlh = batch_.message(NFT_MSG_NEWCHAIN, NFPROTO_INET, NLM_F_CREATE,
					       "adding chain " + h.name);
		nftnl_chain_nlmsg_build_payload(nlh, c.get());
		batch_.commit();
	}

	void counter(const std::string &name, bool remove = false)
	{
		NftnlObj o(nftnl_obj_alloc());
		nftnl_obj_set_str(o.get(), NFTNL_OBJ_TABLE, kTableName);
		nftnl_obj_set_str(o.get(), NFTNL_OBJ_NAME, name.c_str());
		nftnl_obj_set_u32(o.get(), NFTNL_OBJ_TYPE, NFT_OBJECT_COUNTER);
		if (!remove) {
			nftnl_obj_set_u64(o.get(), NFTNL_OBJ_CTR_BYTES, 0);
			nftnl_obj_set_u64(o.get(), NFTNL_OBJ_CTR_PKTS, 0);
		}
		nlmsghdr *nlh = batch_.message(remove ? NFT_MSG_DELOBJ : NFT_MSG_NEWOBJ, NFPROTO_INET,
					       remove ? 0 : NLM_F_CREATE,
					       (remove ? "deleting counter " : "adding counter ") + name);
		nftnl_obj_nlmsg_build_payload(nlh, o.get());
		batch_.commit();
	}

	uint32_t set(const std::string &name, const SetDecl &d, uint32_t extraFlags = 0)
	{
		uint32_t id = ++setId_;
		NftnlSet s(nftnl_set_alloc());
		nftnl_set_set_str(s.get(), NFTNL_SET_TABLE, kTableName);
		nftnl_set_set_str(s.get(), NFTNL_SET_NAME, name.c_str());
		uint32_t flags = extraFlags;
		if (d.interval)
			flags |= NFT_SET_INTERVAL;
		if (d.isMap())
			flags |= NFT_SET_MAP;
		if (d.isObjMap())
			flags |= NFT_SET_OBJECT;
		if (d.interval && d.key.size() > 1)
			flags |= NFT_SET_CONCAT;
		nftnl_set_set_u32(s.get(), NFTNL_SET_FLAGS, flags);
		nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_TYPE, concatType(d.key));
		nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_LEN, concatLen(d.key));
		if (d.isMap()) {
			nftnl_set_set_u32(s.get(), NFTNL_SET_DATA_TYPE, concatType(d.data));
			uint32_t len = concatLen(d.data);
			nftnl_set_set_u32(s.get(), NFTNL_SET_DATA_LEN, d.dataInterval ? 2 * len : len);
		}
		if (d.isObjMap())
			nftnl_set_set_u32(s.get(), NFTNL_SET_OBJ_TYPE, NFT_OBJECT_COUNTER);
		nftnl_set_set_u32(s.get(), NFTNL_SET_ID, id);
		if (d.interval && d.key.size() > 1) {
			uint8_t lens[NFT_REG32_COUNT];
			for (size_t i = 0; i < d.key.size(); i++)
				lens[i] = static_cast<uint8_t>(info(d.key[i]).len);
			nftnl_set_set_data(s.get(), NFTNL_SET_DESC_CONCAT, lens, static_cast<uint32_t>(d.key.size()));
		}
		if (extraFlags & NFT_SET_ANONYMOUS)
			nftnl_set_set_u32(s.get(), NFTNL_SET_DESC_SIZE, 2);
		std::string ud = setUdata(d);
		nftnl_set_set_data(s.get(), NFTNL_SET_USERDATA, ud.data(), static_cast<uint32_t>(ud.size()));
		nlmsghdr *nlh = batch_.message(NFT_MSG_NEWSET, NFPROTO_INET, NLM_F_CREATE, "adding set " + name);
		nftnl_set_nlmsg_build_payload(nlh, s.get());
		batch_.commit();
		ids_[name] = id;
		return id;
	}

	// All rules of a chain, in the transaction (a DELRULE without a handle).
	void flushChain(const std::string &name)
	{
		NftnlRule r(nftnl_rule_alloc());
		nftnl_rule_set_str(r.get(), NFTNL_RULE_TABLE, kTableName);
		nftnl_rule_set_str(r.get(), NFTNL_RULE_CHAIN, name.c_str());
		nlmsghdr *nlh = batch_.message(NFT_MSG_DELRULE, NFPROTO_INET, 0, "flushing chain " + name);
		nftnl_rule_nlmsg_build_payload(nlh, r.get());
		batch_.commit();
	}

	void deleteSet(const std::string &name)
	{
		NftnlSet s(nftnl_set_alloc());
		nftnl_set_set_str(s.get(), NFTNL_SET_TABLE, kTableName);
		nftnl_set_set_str(s.get(), NFTNL_SET_NAME, name.c_str());
		nlmsghdr *nlh = batch_.message(NFT_MSG_DELSET, NFPROTO_INET, 0, "deleting set " + name);
		nftnl_set_nlmsg_build_payload(nlh, s.get());
		batch_.commit();
	}

	uint32_t idOf(const std::string &name) const
	{
		auto it = ids_.find(name);
		return it == ids_.end() ? 0 : it->second;
	}

	// A constant anonymous set of two one-byte keys, as nft gives each rule
	// that writes `{ a, b }`: key type, typeof user data and byte order as
	// nft records them.
	uint32_t anonymousPair(RuleBuilder &r, uint32_t keyType, const Udata &typeofExpr, uint32_t byteorder,
			       uint8_t first, uint8_t second)
	{
		uint32_t id = ++setId_;
		NftnlSet s(nftnl_set_alloc());
		nftnl_set_set_str(s.get(), NFTNL_SET_TABLE, kTableName);
		nftnl_set_set_str(s.get(), NFTNL_SET_NAME, "__set%d");
		nftnl_set_set_u32(s.get(), NFTNL_SET_FLAGS, NFT_SET_ANONYMOUS | NFT_SET_CONSTANT);
		nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_TYPE, keyType);
		nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_LEN, 1);
		nftnl_set_set_u32(s.get(), NFTNL_SET_ID, id);
		nftnl_set_set_u32(s.get(), NFTNL_SET_DESC_SIZE, 2);
		Udata u;
		u.u32(kUdKeyByteorder, byteorder);
		u.nest(kUdKeyTypeof, typeofExpr);
		nftnl_set_set_data(s.get(), NFTNL_SET_USERDATA, u.bytes().data(),
				   static_cast<uint32_t>(u.bytes().size()));
		nlmsghdr *nlh = batch_.message(NFT_MSG_NEWSET, NFPROTO_INET, NLM_F_CREATE,
					       std::string("adding anonymous set of chain ") + r.chain());
		nftnl_set_nlmsg_build_payload(nlh, s.get());
		batch_.commit();

		std::vector<WireElem> elems(2);
		elems[0].key = std::string(1, static_cast<char>(first));
		elems[1].key = std::string(1, static_cast<char>(second));
		putElements(batch_, NFT_MSG_NEWSETELEM, "__set%d", id, elems, "adding");
		return id;
	}

	// `meta l4proto { tcp, udp }`
	void l4protoTcpUdp(RuleBuilder &r)
	{
		Udata fields;
		fields.u32(0, NFT_META_L4PROTO);
		Udata e;
		e.u32(0, 9); // meta
		e.nest(1, fields);
		uint32_t id = anonymousPair(r, 12 /* inet_proto */, e, kHostOrder, IPPROTO_TCP, IPPROTO_UDP);
		r.metaLoad(NFT_META_L4PROTO, kReg1);
		r.lookup("__set%d", id, std::nullopt);
	}

	// `icmp type { destination-unreachable, time-exceeded }`: nft checks
	// for IPv4 and ICMP first, then looks the type up in an anonymous set.
	void icmpErrorTypes(RuleBuilder &r)
	{
		Udata fields;
		fields.u32(0, 4); // nft's PROTO_DESC_ICMP
		fields.u32(1, 1); // ICMPHDR_TYPE
		Udata e;
		e.u32(0, 7); // payload
		e.nest(1, fields);
		uint32_t id = anonymousPair(r, 14 /* icmp_type */, e, kBigEndian, ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED);
		r.ipv4Only();
		r.metaLoad(NFT_META_L4PROTO, kReg1);
		uint8_t icmp = IPPROTO_ICMP;
		r.cmp(NFT_CMP_EQ, &icmp, 1);
		r.payloadLoad(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1, kReg1);
		r.lookup("__set%d", id, std::nullopt);
	}

	void rule(RuleBuilder &r)
	{
		nlmsghdr *nlh = batch_.message(NFT_MSG_NEWRULE, NFPROTO_INET, NLM_F_CREATE | NLM_F_APPEND,
					       std::string("adding a rule to chain ") + r.chain());
		nftnl_rule_nlmsg_build_payload(nlh, r.get());
		batch_.commit();
	}

	void elements(const Set &s, const std::vector<Element> &elements, bool remove, size_t *count)
	{
		if (elements.empty())
			return;
		SetDecl d = declOf(s);
		*count += elements.size();
		// An rbtree's interval ends depend on neighbours: one piece. Other
		// sets are encoded a slice at a time, so their wire form is never
		// held whole beside the batch.
		const size_t piece = d.interval && d.key.size() == 1 ? elements.size() : 4096;
		for (size_t at = 0; at < elements.size(); at += piece) {
			std::vector<Element> part;
			const std::vector<Element> *some = &elements;
			if (piece < elements.size()) {
				auto from = elements.begin() + static_cast<ptrdiff_t>(at);
				part.assign(from, from + static_cast<ptrdiff_t>(std::min(piece, elements.size() - at)));
				some = &part;
			}
			std::vector<WireElem> wire = wireElements(d, *some, remove);
			putElements(batch_, remove ? NFT_MSG_DELSETELEM : NFT_MSG_NEWSETELEM, s.name, idOf(s.name), wire,
				    remove ? "deleting" : "adding");
		}
	}

	// Only the kernel elements that differ: a changed value is deleted and
	// added again in the same transaction.
	void delta(const Set &o, const Set &n, ApplyReport &report)
	{
		SetDecl d = declOf(n);
		std::vector<WireElem> del, add;
		if (d.interval && d.key.size() == 1) {
			// rbtree: ranges share end elements with their neighbours,
			// so compare what goes on the wire.
			std::vector<WireElem> before = wireElements(d, o.elements, false);
			std::vector<WireElem> after = wireElements(d, n.elements, false);
			std::sort(before.begin(), before.end());
			std::sort(after.begin(), after.end());
			std::set_difference(before.begin(), before.end(), after.begin(), after.end(),
					    std::back_inserter(del));
			std::set_difference(after.begin(), after.end(), before.begin(), before.end(),
					    std::back_inserter(add));
		} else {
			// One kernel element per model element: walk both lists
			// (sorted by key) once, and encode only what differs.
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
			del = wireElements(d, gone, false);
			add = wireElements(d, come, false);
		}
		for (WireElem &e : del) {
			e.data.clear();
			e.objref.clear();
		}
		report.elementsDeleted += del.size();
		report.elementsAdded += add.size();
		if (!del.empty())
			putElements(batch_, NFT_MSG_DELSETELEM, n.name, 0, del, "deleting");
		if (!add.empty())
			putElements(batch_, NFT_MSG_NEWSETELEM, n.name, 0, add, "adding");
	}

private:
	Batch &batch_;
	uint32_t setId_ = 0;
	std::map<std::string, uint32_t> ids_;
};

void markNewConnections(RuleBuilder &r, TableWriter &w)
{
	r.ctLoad(NFT_CT_STATE, kReg1);
	r.bitwiseMask(kCtStateNew);
	uint32_t zero = 0;
	r.cmp(NFT_CMP_NEQ, &zero, 4);
	r.ctLoad(NFT_CT_ZONE, kReg1);
	r.lookup("ct_marks", w.idOf("ct_marks"), kReg1);
	r.ctSet(NFT_CT_MARK, kReg1);
}

bool endsWith(const std::string &s, const std::string &tail)
{
	return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// The prefix length of a zoneSaddrRule() text, or nullopt for any other rule.
std::optional<uint8_t> zoneSaddrLength(const std::string &text)
{
	const std::string tag = " map @zone_saddr_";
	size_t at = text.rfind(tag);
	if (at == std::string::npos || text.rfind("ct zone set ip saddr", 0) != 0)
		return std::nullopt;
	std::string digits = text.substr(at + tag.size());
	if (digits.empty() || digits.size() > 2 || !std::all_of(digits.begin(), digits.end(), ::isdigit))
		return std::nullopt;
	int length = std::stoi(digits);
	if (length > 32 || text != zoneSaddrRule(static_cast<uint8_t>(length)))
		return std::nullopt;
	return static_cast<uint8_t>(length);
}

// The expressions of one rule of render.cpp's chains(), as nft 1.0.6 compiles
// that text. Rules are matched by their text, so a rule the renderer gains
// without a netlink twin here is an error, never a silent difference.
void buildRule(RuleBuilder &r, TableWriter &w, const std::string &text, const std::string &uplink)
{
	const std::string up = "\"" + uplink + "\"";
	using C = Comp;
	if (text == "iifname " + up + " jump from_uplink") {
		r.ifname(NFT_META_IIFNAME, NFT_CMP_EQ, uplink);
		r.verdict(NFT_JUMP, "from_uplink");
	} else if (auto length = zoneSaddrLength(text); length) {
		// zoneSaddrRule(): the address, masked to the map's prefix length.
		std::string set = zoneSaddrMap(*length);
		r.loadKey({C::IpSaddr});
		if (*length < 32) {
			uint32_t mask = htonl(*length == 0 ? 0u : ~uint32_t{0} << (32 - *length));
			r.bitwiseAnd(kReg1, &mask, 4);
		}
		r.lookup(set, w.idOf(set), kReg1);
		r.ctSet(NFT_CT_ZONE, kReg1);
	} else if (text.rfind("ct zone set ", 0) == 0 && text.find(" map @zone_") != std::string::npos) {
		size_t at = text.find(" map @");
		r.loadKey(compsOf(text.substr(12, at - 12)));
		std::string set = text.substr(at + 6);
		r.lookup(set, w.idOf(set), kReg1);
		r.ctSet(NFT_CT_ZONE, kReg1);
	} else if (endsWith(text, " notrack") && text.find(" @stateless_") != std::string::npos) {
		size_t at = text.find(" @");
		r.loadKey(compsOf(text.substr(0, at)));
		std::string set = text.substr(at + 2, text.size() - 8 - at - 2);
		r.lookup(set, w.idOf(set), std::nullopt);
		r.notrack();
	} else if (text == "meta l4proto { tcp, udp } ip daddr set ip daddr . th dport map @sl_return notrack") {
		w.l4protoTcpUdp(r);
		r.loadKey({C::IpDaddr, C::ThDport});
		r.lookup("sl_return", w.idOf("sl_return"), kReg1);
		r.payloadWriteAddress(16);
		r.notrack();
	} else if (text == "meta l4proto { tcp, udp } ct zone set ip daddr . th dport map @ret_zone" ||
		   text == "meta l4proto { tcp, udp } ct zone set ip daddr . th dport map @drain_zone") {
		std::string set = text.substr(text.find(" map @") + 6);
		w.l4protoTcpUdp(r);
		r.loadKey({C::IpDaddr, C::ThDport});
		r.lookup(set, w.idOf(set), kReg1);
		r.ctSet(NFT_CT_ZONE, kReg1);
	} else if (text == "icmp type { destination-unreachable, time-exceeded } ct zone set ip daddr . @th,224,16 map @icmp_zone") {
		// The IPv4 check comes with `icmp type`: the key is loaded without
		// loadKey's own.
		w.icmpErrorTypes(r);
		r.payloadLoad(NFT_PAYLOAD_NETWORK_HEADER, 16, 4, kReg1);
		r.payloadLoad(NFT_PAYLOAD_TRANSPORT_HEADER, 28, 2, regAt(1));
		r.lookup("icmp_zone", w.idOf("icmp_zone"), kReg1);
		r.ctSet(NFT_CT_ZONE, kReg1);
	} else if (text == "ct state new ct mark set ct zone map @ct_marks") {
		markNewConnections(r, w);
	} else if (text == "ct direction reply ct mark @route_marks meta mark set ct mark") {
		r.ctLoad(NFT_CT_DIRECTION, kReg1);
		uint8_t reply = kCtDirReply;
		r.cmp(NFT_CMP_EQ, &reply, 1);
		r.ctLoad(NFT_CT_MARK, kReg1);
		r.lookup("route_marks", w.idOf("route_marks"), std::nullopt);
		r.ctLoad(NFT_CT_MARK, kReg1);
		r.metaSet(NFT_META_MARK, kReg1);
	} else if (text == "oifname " + up + " meta l4proto { tcp, udp } snat ip to ct mark . ip saddr map @nat_port") {
		r.ifname(NFT_META_OIFNAME, NFT_CMP_EQ, uplink);
		w.l4protoTcpUdp(r);
		r.loadKey({C::CtMark, C::IpSaddr});
		r.lookup("nat_port", w.idOf("nat_port"), kReg1);
		r.snat(true);
	} else if (text == "oifname " + up + " snat ip to ct mark . ip saddr map @nat_addr") {
		r.ifname(NFT_META_OIFNAME, NFT_CMP_EQ, uplink);
		r.loadKey({C::CtMark, C::IpSaddr});
		r.lookup("nat_addr", w.idOf("nat_addr"), kReg1);
		r.snat(false);
	} else if (text == "oifname != " + up + " accept") {
		r.ifname(NFT_META_OIFNAME, NFT_CMP_NEQ, uplink);
		r.verdict(NF_ACCEPT);
	} else if (text == "counter name ct mark map @count_mark") {
		r.ctLoad(NFT_CT_MARK, kReg1);
		r.objrefMap("count_mark", w.idOf("count_mark"));
	} else if (text == "meta l4proto { tcp, udp } ip saddr set ip saddr . th sport map @sl_egress") {
		w.l4protoTcpUdp(r);
		r.loadKey({C::IpSaddr, C::ThSport});
		r.lookup("sl_egress", w.idOf("sl_egress"), kReg1);
		r.payloadWriteAddress(12);
	} else if (text == "meta l4proto { tcp, udp } ip saddr . th sport & " + std::to_string(kPortBlockMask) +
				   " != @my_blocks jump port_guard") {
		w.l4protoTcpUdp(r);
		r.loadKey({C::IpSaddr, C::ThSport});
		uint16_t mask = htons(static_cast<uint16_t>(kPortBlockMask));
		r.bitwiseAnd(regAt(1), &mask, 2); // the port, the key's second word
		r.lookup("my_blocks", w.idOf("my_blocks"), std::nullopt, true);
		r.verdict(NFT_JUMP, "port_guard");
	} else if (text == "ip saddr != @shared return") {
		r.loadKey({C::IpSaddr});
		r.lookup("shared", w.idOf("shared"), std::nullopt, true);
		r.verdict(NFT_RETURN);
	} else if (text == "ip saddr . th sport @my_ports return") {
		r.loadKey({C::IpSaddr, C::ThSport});
		r.lookup("my_ports", w.idOf("my_ports"), std::nullopt);
		r.verdict(NFT_RETURN);
	} else if (text == "counter name ct mark map @guard_mark drop") {
		r.ctLoad(NFT_CT_MARK, kReg1);
		r.objrefMap("guard_mark", w.idOf("guard_mark"));
		r.verdict(NF_DROP);
	} else if (text == "counter name \"guard_other\" drop") {
		r.objrefName("guard_other");
		r.verdict(NF_DROP);
	} else if (text == "ip saddr != @shared counter name ct mark map @guard_mark drop") {
		r.loadKey({C::IpSaddr});
		r.lookup("shared", w.idOf("shared"), std::nullopt, true);
		r.ctLoad(NFT_CT_MARK, kReg1);
		r.objrefMap("guard_mark", w.idOf("guard_mark"));
		r.verdict(NF_DROP);
	} else if (text.rfind("counter name ip saddr map @", 0) == 0) {
		// count_sl, count_addr; `... drop` for guard_sl
		bool drop = endsWith(text, " drop");
		std::string set = text.substr(27, text.size() - 27 - (drop ? 5 : 0));
		r.loadKey({C::IpSaddr});
		r.objrefMap(set, w.idOf(set));
		if (drop)
			r.verdict(NF_DROP);
	} else {
		throw std::logic_error("nft apply: no netlink form for rule '" + text + "'");
	}
}

bool isZoneSaddrMap(const Set &s) { return s.name.rfind("zone_saddr_", 0) == 0; }

// The indexes of the sets other than the per-length zone maps, in order.
std::vector<size_t> fixedSets(const TableModel &m)
{
	std::vector<size_t> out;
	for (size_t i = 0; i < m.sets.size(); i++)
		if (!isZoneSaddrMap(m.sets[i]))
			out.push_back(i);
	return out;
}

// Same sets, chains and rules, except perhaps the prefix lengths of the zone
// maps: an element delta suffices (plus, for other lengths, new zone maps and
// new rules in the raw chains). Counters are objects, added and deleted like
// elements.
bool sameStructure(const TableModel &a, const TableModel &b)
{
	if (a.uplink != b.uplink || a.shapes != b.shapes)
		return false;
	std::vector<size_t> x = fixedSets(a), y = fixedSets(b);
	if (x.size() != y.size())
		return false;
	for (size_t i = 0; i < x.size(); i++) {
		const Set &p = a.sets[x[i]], &q = b.sets[y[i]];
		if (p.name != q.name || p.declaration != q.declaration || p.interval != q.interval)
			return false;
	}
	return true;
}

uint64_t parseHex(const std::string &s, bool *ok)
{
	uint64_t v = 0;
	if (s.empty() || s.size() > 16) {
		*ok = false;
		return 0;
	}
	for (char c : s) {
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= static_cast<uint64_t>(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= static_cast<uint64_t>(c - 'a' + 10);
		else {
			*ok = false;
			return 0;
		}
	}
	return v;
}

} // namespace

std::optional<TableState> parseComment(const std::string &comment)
{
	// "portslice generation G plan HASH16 server NAME"
	const std::string kGen = "portslice generation ";
	if (comment.rfind(kGen, 0) != 0)
		return std::nullopt;
	size_t p = kGen.size();
	size_t sp = comment.find(' ', p);
	if (sp == std::string::npos)
		return std::nullopt;
	TableState st;
	st.comment = comment;
	try {
		st.generation = std::stoull(comment.substr(p, sp - p));
	} catch (...) {
		return std::nullopt;
	}
	const std::string kPlan = " plan ";
	if (comment.compare(sp, kPlan.size(), kPlan) != 0)
		return std::nullopt;
	p = sp + kPlan.size();
	sp = comment.find(' ', p);
	if (sp == std::string::npos)
		return std::nullopt;
	bool ok = true;
	st.planHash = parseHex(comment.substr(p, sp - p), &ok);
	if (!ok)
		return std::nullopt;
	const std::string kServer = " server ";
	if (comment.compare(sp, kServer.size(), kServer) != 0)
		return std::nullopt;
	st.server = comment.substr(sp + kServer.size());
	return st;
}

Result<NftApplier> NftApplier::open()
{
	auto sock = Socket::open();
	if (!sock)
		return sock.error().wrap("opening nftables");
	return NftApplier(std::move(*sock));
}

Result<std::optional<TableState>> NftApplier::readState()
{
	std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
	NftnlTable t(nftnl_table_alloc());
	nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, kTableName);
	nlmsghdr *nlh = nftnl_nlmsg_build_hdr(buf.data(), NFT_MSG_GETTABLE, NFPROTO_INET, NLM_F_ACK, ++seq_);
	nftnl_table_nlmsg_build_payload(nlh, t.get());
	std::optional<TableState> state;
	bool seen = false;
	Status s = sock_.request(nlh, [&](const nlmsghdr *m) {
		NftnlTable got(nftnl_table_alloc());
		if (nftnl_table_nlmsg_parse(m, got.get()) < 0)
			return MNL_CB_ERROR;
		seen = true;
		uint32_t len = 0;
		const void *ud = nftnl_table_get_data(got.get(), NFTNL_TABLE_USERDATA, &len);
		// user data: comment TLV (type 0, length, NUL-terminated text)
		if (ud && len >= 3) {
			auto *p = static_cast<const uint8_t *>(ud);
			if (p[0] == 0 && p[1] + 2u <= len && p[1] > 0)
				state = parseComment(std::string(reinterpret_cast<const char *>(p + 2), p[1] - 1));
		}
		return MNL_CB_OK;
	});
	lastTableSeen_ = seen;
	if (!s) {
		if (s.error().code() == std::errc::no_such_file_or_directory) {
			lastTableSeen_ = false;
			return std::optional<TableState>{};
		}
		return s.error().wrap("reading table inet portslice");
	}
	if (seen && !state)
		state = TableState{}; // a table without our comment: still ours to replace
	return state;
}

Result<ApplyReport> NftApplier::apply(const plan::Plan &next, const plan::Plan *current, uint64_t generation)
{
	TableModel nextModel = buildModel(next, generation, false);
	if (!current)
		return replace(nextModel, &next);
	TableModel currentModel = buildModel(*current, 0, false);
	return delta(nextModel, currentModel, &next, current);
}

Result<ApplyReport> NftApplier::applyModel(const TableModel &next, const TableModel *current)
{
	TableModel nextCopy = next;
	if (!current)
		return replace(nextCopy, nullptr);
	TableModel currentCopy = *current;
	return delta(nextCopy, currentCopy, nullptr, nullptr);
}

Result<ApplyReport> NftApplier::delta(TableModel &next, TableModel &current, const plan::Plan *nextPlan,
				      const plan::Plan *currentPlan)
{
	auto exists = readState();
	if (!exists)
		return exists.error().wrap("applying table portslice");
	if (!exists->has_value() || !sameStructure(next, current))
		return replace(next, nextPlan);

	// Element delta: counters first (elements refer to them), deleted
	// elements before added ones, stale counters last. With plans, the port
	// sets are built one at a time on both sides and freed once compared.
	// The kernel ignores new user data on an existing table (checked on
	// 6.18), so the comment keeps the generation of the last full
	// replace; the daemon holds the current one.
	ApplyReport report;
	Batch batch;
	TableWriter w(batch);
	bool sameCounters = current.counters == next.counters;
	std::set<std::string> oldCounters, newCounters;
	if (!sameCounters) {
		oldCounters.insert(current.counters.begin(), current.counters.end());
		newCounters.insert(next.counters.begin(), next.counters.end());
		for (const std::string &c : next.counters)
			if (!oldCounters.count(c))
				w.counter(c);
	}
	// Other prefix lengths: the raw chains' rules and all zone maps are
	// made again (they are the last sets, so the table lists as a fresh one
	// would), in the same transaction, the rest untouched.
	bool newLengths = current.zoneSaddrLengths != next.zoneSaddrLengths;
	std::vector<Chain> rawChains;
	if (newLengths) {
		for (const Chain &c : chains(next))
			if (c.name == "prerouting" || c.name == "output") {
				w.flushChain(c.name);
				rawChains.push_back(c);
			}
		for (const Set &s : current.sets)
			if (isZoneSaddrMap(s))
				w.deleteSet(s.name);
		for (const Set &s : next.sets)
			if (isZoneSaddrMap(s)) {
				w.set(s.name, declOf(s));
				w.elements(s, s.elements, false, &report.elementsAdded);
			}
	}
	std::vector<size_t> before = fixedSets(current), after = fixedSets(next);
	for (size_t i = 0; i < after.size(); i++) {
		Set &n = next.sets[after[i]], &o = current.sets[before[i]];
		bool built = nextPlan && currentPlan && isPortSet(n.name);
		if (built) {
			n.elements = portSetElements(*nextPlan, n.name);
			o.elements = portSetElements(*currentPlan, o.name);
		}
		if (!sameElements(o.elements, n.elements))
			w.delta(o, n, report);
		if (built) {
			std::vector<Element>().swap(n.elements);
			std::vector<Element>().swap(o.elements);
		}
	}
	if (!newLengths)
		for (size_t i = 0; i < next.sets.size(); i++)
			if (isZoneSaddrMap(next.sets[i]) && !sameElements(current.sets[i].elements, next.sets[i].elements))
				w.delta(current.sets[i], next.sets[i], report);
	for (const Chain &c : rawChains)
		for (const std::string &text : c.rules) {
			RuleBuilder r(c.name.c_str());
			buildRule(r, w, text, next.uplink);
			w.rule(r);
		}
	if (!sameCounters)
		for (const std::string &c : current.counters)
			if (!newCounters.count(c))
				w.counter(c, true);
	batch.finish();
	report.messages = batch.messages();
	if (Status s = sock_.send(batch); !s) {
		// A delta assumes the kernel holds `current`; when it does not
		// (someone changed the table), replace the table instead.
		return replace(next, nextPlan);
	}
	report.bytes = batch.bytes();
	return report;
}

Result<ApplyReport> NftApplier::replace(TableModel &model, const plan::Plan *plan)
{
	auto exists = readState();
	if (!exists)
		return exists.error().wrap("applying table portslice");
	ApplyReport report;
	report.fullReplace = true;
	Batch batch;
	TableWriter w(batch);
	if (exists->has_value())
		w.deleteTable();
	w.table(model.comment);
	std::vector<Chain> chainList = chains(model);
	for (const Chain &c : chainList)
		w.chain(c);
	for (const std::string &c : model.counters)
		w.counter(c);
	for (Set &set : model.sets) {
		w.set(set.name, declOf(set));
		if (plan && set.elements.empty() && isPortSet(set.name))
			portSetChunks(*plan, set.name, 4096, [&](const std::vector<Element> &some) {
				w.elements(set, some, false, &report.elementsAdded);
			});
		else
			w.elements(set, set.elements, false, &report.elementsAdded);
		std::vector<Element>().swap(set.elements); // encoded: the batch holds it now
	}
	for (const Chain &c : chainList)
		for (const std::string &text : c.rules) {
			RuleBuilder r(c.name.c_str());
			buildRule(r, w, text, model.uplink);
			w.rule(r);
		}
	batch.finish();
	report.messages = batch.messages();
	if (Status s = sock_.send(batch); !s)
		return s.error().wrap("applying table portslice");
	report.bytes = batch.bytes();
	return report;
}

namespace {

// Flush set `set.name` and add set's elements, in `batch`.
void flushAndFill(Batch &batch, TableWriter &w, const Set &set, size_t *added)
{
	// A DELSETELEM without elements flushes the set.
	nlmsghdr *nlh = batch.message(NFT_MSG_DELSETELEM, NFPROTO_INET, 0, "flushing set " + set.name);
	mnl_attr_put_strz(nlh, NFTA_SET_ELEM_LIST_TABLE, kTableName);
	mnl_attr_put_strz(nlh, NFTA_SET_ELEM_LIST_SET, set.name.c_str());
	batch.commit();
	w.elements(set, set.elements, false, added);
}

} // namespace

Result<ApplyReport> NftApplier::applyDelta(const std::vector<Set> &before, const std::vector<Set> &after,
					   const Set *fill)
{
	if (before.size() != after.size())
		throw std::logic_error("nft delta: before and after differ in their sets");
	ApplyReport report;
	Batch batch;
	TableWriter w(batch);
	for (size_t i = 0; i < after.size(); i++)
		if (!sameElements(before[i].elements, after[i].elements))
			w.delta(before[i], after[i], report);
	if (fill)
		flushAndFill(batch, w, *fill, &report.elementsAdded);
	else if (report.elementsAdded + report.elementsDeleted == 0)
		return report;
	batch.finish();
	report.messages = batch.messages();
	if (Status s = sock_.send(batch); !s)
		return s.error().wrap("changing elements of table portslice");
	report.bytes = batch.bytes();
	return report;
}

Result<size_t> NftApplier::fillSet(const Set &set)
{
	Batch batch;
	TableWriter w(batch);
	size_t added = 0;
	flushAndFill(batch, w, set, &added);
	batch.finish();
	if (Status s = sock_.send(batch); !s)
		return s.error().wrap("filling set " + set.name + " of table portslice");
	return added;
}

Status NftApplier::remove()
{
	auto st = readState();
	if (!st)
		return st.error().wrap("removing table portslice");
	if (!lastTableSeen_)
		return {};
	Batch batch;
	TableWriter w(batch);
	w.deleteTable();
	batch.finish();
	Status s = sock_.send(batch);
	if (!s)
		return s.error().wrap("removing table portslice");
	return {};
}

Result<std::vector<CounterValue>> NftApplier::readCounters()
{
	std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
	NftnlObj filter(nftnl_obj_alloc());
	nftnl_obj_set_str(filter.get(), NFTNL_OBJ_TABLE, kTableName);
	nftnl_obj_set_u32(filter.get(), NFTNL_OBJ_TYPE, NFT_OBJECT_COUNTER);
	nlmsghdr *nlh = nftnl_nlmsg_build_hdr(buf.data(), NFT_MSG_GETOBJ, NFPROTO_INET, NLM_F_DUMP, ++seq_);
	nftnl_obj_nlmsg_build_payload(nlh, filter.get());
	std::vector<CounterValue> out;
	Status s = sock_.request(nlh, [&](const nlmsghdr *m) {
		NftnlObj o(nftnl_obj_alloc());
		if (nftnl_obj_nlmsg_parse(m, o.get()) < 0)
			return MNL_CB_ERROR;
		const char *table = nftnl_obj_get_str(o.get(), NFTNL_OBJ_TABLE);
		if (!table || std::strcmp(table, kTableName) != 0 ||
		    nftnl_obj_get_u32(o.get(), NFTNL_OBJ_FAMILY) != NFPROTO_INET)
			return MNL_CB_OK;
		CounterValue v;
		v.name = nftnl_obj_get_str(o.get(), NFTNL_OBJ_NAME);
		v.packets = nftnl_obj_get_u64(o.get(), NFTNL_OBJ_CTR_PKTS);
		v.bytes = nftnl_obj_get_u64(o.get(), NFTNL_OBJ_CTR_BYTES);
		out.push_back(std::move(v));
		return MNL_CB_OK;
	});
	if (!s)
		return s.error().wrap("reading counters of table portslice");
	return out;
}

} // namespace portslice::nft
