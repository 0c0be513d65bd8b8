// SPDX-License-Identifier: MIT
// TableModel -> libnftnl messages in one batch, equal to what `nft -f` of the rendered text sends (tests/unit/nft_wire_test.cpp).
#include "nft/writer.h"

#include <arpa/inet.h>
#include <cstring>
#include <linux/icmp.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <netinet/in.h>
#include <optional>
#include <variant>

namespace portslice::nft {

namespace {

constexpr uint32_t kReg1 = NFT_REG_1;
constexpr uint32_t kReg32First = NFT_REG32_00;
constexpr uint32_t kCtStateNew = 1u << 3; // NF_CT_STATE_BIT(IP_CT_NEW)
constexpr uint8_t kCtDirReply = 1;        // IP_CT_DIR_REPLY

// Element messages stay far below 64 KiB: a netlink attribute length is 16 bits.
constexpr size_t kElemMessageBytes = 48 * 1024;

// nft numbers a register by 128-bit slot when the offset allows, else by 32-bit word.
uint32_t regAt(uint32_t words)
{
	return words % 4 == 0 ? kReg1 + words / 4 : kReg32First + words;
}

void putNetU32(nlmsghdr *nlh, uint16_t type, uint32_t v) { mnl_attr_put_u32(nlh, type, htonl(v)); }

void putValue(nlmsghdr *nlh, uint16_t type, const std::string &bytes)
{
	nlattr *n = mnl_attr_nest_start(nlh, type);
	mnl_attr_put(nlh, NFTA_DATA_VALUE, bytes.size(), bytes.data());
	mnl_attr_nest_end(nlh, n);
}

// Attributes in libnftnl's order: flags, key, key end, data, object reference.
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
	if (!e.chain.empty()) {
		nlattr *data = mnl_attr_nest_start(nlh, NFTA_SET_ELEM_DATA);
		nlattr *verdict = mnl_attr_nest_start(nlh, NFTA_DATA_VERDICT);
		putNetU32(nlh, NFTA_VERDICT_CODE, static_cast<uint32_t>(e.gotoChain ? NFT_GOTO : NFT_JUMP));
		mnl_attr_put_strz(nlh, NFTA_VERDICT_CHAIN, e.chain.c_str());
		mnl_attr_nest_end(nlh, verdict);
		mnl_attr_nest_end(nlh, data);
	}
	if (!e.objref.empty())
		mnl_attr_put_strz(nlh, NFTA_SET_ELEM_OBJREF, e.objref.c_str());
	mnl_attr_nest_end(nlh, n);
}

template<class... F>
struct Overloaded : F... {
	using F::operator()...;
};

} // namespace

// One rule's expressions, as nft 1.0.6 compiles its text.
class RuleEncoder {
public:
	RuleEncoder(TableWriter &w, const std::string &chain) : w_(w), chain_(chain), rule_(nftnl_rule_alloc())
	{
		nftnl_rule_set_str(rule_.get(), NFTNL_RULE_TABLE, w.table_.c_str());
		nftnl_rule_set_str(rule_.get(), NFTNL_RULE_CHAIN, chain.c_str());
		nftnl_rule_set_u32(rule_.get(), NFTNL_RULE_FAMILY, w.family_);
	}

	void statement(const Statement &st)
	{
		std::visit(Overloaded{
				   [&](const Match &m) { match(m); },
				   [&](const Lookup &l) {
					   loadKey(l.key);
					   lookup(l.set, std::nullopt, l.negate);
				   },
				   [&](const MapAssign &a) {
					   loadKey(a.key);
					   lookup(a.map, kReg1, false);
					   write(a.target);
				   },
				   [&](const Assign &a) {
					   loadKey(Key{ { a.source }, {} });
					   write(a.target);
				   },
				   [&](const CounterRef &c) {
					   if (c.key) {
						   loadKey(*c.key);
						   auto e = expr("objref");
						   nftnl_expr_set_u32(e.get(), NFTNL_EXPR_OBJREF_SET_SREG, kReg1);
						   nftnl_expr_set_str(e.get(), NFTNL_EXPR_OBJREF_SET_NAME, c.name.c_str());
						   nftnl_expr_set_u32(e.get(), NFTNL_EXPR_OBJREF_SET_ID, w_.idOf(c.name));
						   add(std::move(e));
					   } else {
						   auto e = expr("objref");
						   nftnl_expr_set_u32(e.get(), NFTNL_EXPR_OBJREF_IMM_TYPE, NFT_OBJECT_COUNTER);
						   nftnl_expr_set_str(e.get(), NFTNL_EXPR_OBJREF_IMM_NAME, c.name.c_str());
						   add(std::move(e));
					   }
				   },
				   [&](const Snat &n) {
					   loadKey(n.key);
					   lookup(n.map, kReg1, false);
					   snat(n.ports);
				   },
				   [&](const Notrack &) { add(expr("notrack")); },
				   [&](const Verdict &v) { verdict(v); },
				   [&](const Dispatch &d) {
					   loadKey(d.key);
					   lookup(d.map, NFT_REG_VERDICT, false);
				   },
			   },
			   st);
	}

	nftnl_rule *get() { return rule_.get(); }

private:
	NftnlExpr expr(const char *name) { return NftnlExpr(nftnl_expr_alloc(name)); }
	void add(NftnlExpr e) { nftnl_rule_add_expr(rule_.get(), e.release()); }

	void metaLoad(uint32_t key, uint32_t dreg)
	{
		auto e = expr("meta");
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_META_KEY, key);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_META_DREG, dreg);
		add(std::move(e));
	}
	void ctLoad(uint32_t key, uint32_t dreg)
	{
		auto e = expr("ct");
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_KEY, key);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_DREG, dreg);
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
	void lookup(const std::string &set, std::optional<uint32_t> dreg, bool invert)
	{
		auto e = expr("lookup");
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOOKUP_SREG, kReg1);
		if (dreg)
			nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOOKUP_DREG, *dreg);
		nftnl_expr_set_str(e.get(), NFTNL_EXPR_LOOKUP_SET, set.c_str());
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOOKUP_SET_ID, w_.idOf(set));
		if (invert)
			nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
		add(std::move(e));
	}
	void verdict(const Verdict &v)
	{
		auto e = expr("immediate");
		int code = NF_ACCEPT;
		switch (v.kind) {
		case Verdict::Kind::Accept: code = NF_ACCEPT; break;
		case Verdict::Kind::Drop: code = NF_DROP; break;
		case Verdict::Kind::Return: code = NFT_RETURN; break;
		case Verdict::Kind::Jump: code = NFT_JUMP; break;
		}
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_IMM_DREG, NFT_REG_VERDICT);
		nftnl_expr_set_u32(e.get(), NFTNL_EXPR_IMM_VERDICT, static_cast<uint32_t>(code));
		if (v.kind == Verdict::Kind::Jump)
			nftnl_expr_set_str(e.get(), NFTNL_EXPR_IMM_CHAIN, v.chain.c_str());
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
	void write(Target t)
	{
		auto setter = [&](const char *kind, uint16_t keyAttr, uint16_t sregAttr, uint32_t key) {
			auto e = expr(kind);
			nftnl_expr_set_u32(e.get(), keyAttr, key);
			nftnl_expr_set_u32(e.get(), sregAttr, kReg1);
			add(std::move(e));
		};
		switch (t) {
		case Target::CtZone: setter("ct", NFTNL_EXPR_CT_KEY, NFTNL_EXPR_CT_SREG, NFT_CT_ZONE); break;
		case Target::CtMark: setter("ct", NFTNL_EXPR_CT_KEY, NFTNL_EXPR_CT_SREG, NFT_CT_MARK); break;
		case Target::MetaMark: setter("meta", NFTNL_EXPR_META_KEY, NFTNL_EXPR_META_SREG, NFT_META_MARK); break;
		case Target::IpSaddr: payloadWriteAddress(12); break;
		case Target::IpDaddr: payloadWriteAddress(16); break;
		}
	}

	// `meta nfproto ipv4`, which nft puts once per rule before anything
	// that reads the IPv4 header.
	void ipv4Only()
	{
		if (ipv4Checked_)
			return;
		ipv4Checked_ = true;
		metaLoad(NFT_META_NFPROTO, kReg1);
		uint8_t v = NFPROTO_IPV4;
		cmp(NFT_CMP_EQ, &v, 1);
	}

	void match(const Match &m)
	{
		switch (m.what) {
		case Match::What::Iifname:
		case Match::What::Oifname: {
			metaLoad(m.what == Match::What::Iifname ? NFT_META_IIFNAME : NFT_META_OIFNAME, kReg1);
			char buf[16] = {};
			std::strncpy(buf, m.ifname.c_str(), sizeof(buf) - 1);
			cmp(m.negate ? NFT_CMP_NEQ : NFT_CMP_EQ, buf, sizeof(buf));
			break;
		}
		case Match::What::L4ProtoTcpUdp: {
			Udata fields;
			fields.u32(0, NFT_META_L4PROTO);
			Udata e;
			e.u32(0, 9); // meta
			e.nest(1, fields);
			w_.anonymousPair(chain_, 12 /* inet_proto */, e, kHostOrder, IPPROTO_TCP, IPPROTO_UDP);
			metaLoad(NFT_META_L4PROTO, kReg1);
			lookup("__set%d", std::nullopt, false);
			break;
		}
		case Match::What::IcmpErrorTypes: {
			// nft checks for IPv4 and ICMP first, then looks the type up
			// in an anonymous set.
			Udata fields;
			fields.u32(0, 4); // nft's PROTO_DESC_ICMP
			fields.u32(1, 1); // ICMPHDR_TYPE
			Udata e;
			e.u32(0, 7); // payload
			e.nest(1, fields);
			w_.anonymousPair(chain_, 14 /* icmp_type */, e, kBigEndian, ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED);
			ipv4Only();
			metaLoad(NFT_META_L4PROTO, kReg1);
			uint8_t icmp = IPPROTO_ICMP;
			cmp(NFT_CMP_EQ, &icmp, 1);
			payloadLoad(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1, kReg1);
			lookup("__set%d", std::nullopt, false);
			break;
		}
		case Match::What::CtStateNew: {
			ctLoad(NFT_CT_STATE, kReg1);
			uint32_t mask = kCtStateNew;
			bitwiseAnd(kReg1, &mask, 4);
			uint32_t zero = 0;
			cmp(NFT_CMP_NEQ, &zero, 4);
			break;
		}
		case Match::What::CtDirectionReply: {
			ctLoad(NFT_CT_DIRECTION, kReg1);
			uint8_t reply = kCtDirReply;
			cmp(NFT_CMP_EQ, &reply, 1);
			break;
		}
		}
	}

	// Load a concatenation into register 1 onwards, its mask on the last
	// part (or the first).
	void loadKey(const Key &key)
	{
		for (Selector s : key.parts)
			if (s == Selector::IpSaddr || s == Selector::IpDaddr)
				ipv4Only();
		bool be = convertsToBigEndian(key.parts);
		uint32_t words = 0, maskReg = kReg1;
		for (size_t i = 0; i < key.parts.size(); i++) {
			Selector s = key.parts[i];
			uint32_t reg = regAt(words);
			if (!key.maskFirst || i == 0)
				maskReg = reg;
			switch (s) {
			case Selector::Iifname: metaLoad(NFT_META_IIFNAME, reg); break;
			case Selector::IpSaddr: payloadLoad(NFT_PAYLOAD_NETWORK_HEADER, 12, 4, reg); break;
			case Selector::IpDaddr: payloadLoad(NFT_PAYLOAD_NETWORK_HEADER, 16, 4, reg); break;
			case Selector::ThSport: payloadLoad(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 2, reg); break;
			case Selector::ThDport: payloadLoad(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, reg); break;
			case Selector::MetaMark: metaLoad(NFT_META_MARK, reg); break;
			case Selector::MetaCgroup: metaLoad(NFT_META_CGROUP, reg); break;
			case Selector::MetaSkuid: metaLoad(NFT_META_SKUID, reg); break;
			case Selector::CtMark: ctLoad(NFT_CT_MARK, reg); break;
			case Selector::CtZone: ctLoad(NFT_CT_ZONE, reg); break;
			case Selector::QuotedSport: payloadLoad(NFT_PAYLOAD_TRANSPORT_HEADER, 28, 2, reg); break;
			}
			if (be && selectorInfo(s).order == kHostOrder && s != Selector::Iifname)
				byteorderHton(reg);
			words += pad4(selectorInfo(s).len) / 4;
		}
		if (key.mask) {
			// The mask in the register's byte order.
			Selector masked = key.maskFirst ? key.parts.front() : key.parts.back();
			uint32_t len = selectorInfo(masked).len;
			bool network = be || selectorInfo(masked).order == kBigEndian;
			if (len == 2) {
				auto m = static_cast<uint16_t>(*key.mask);
				uint16_t v = network ? htons(m) : m;
				bitwiseAnd(maskReg, &v, 2);
			} else {
				uint32_t v = network ? htonl(*key.mask) : *key.mask;
				bitwiseAnd(maskReg, &v, 4);
			}
		}
	}

	TableWriter &w_;
	std::string chain_;
	NftnlRule rule_;
	bool ipv4Checked_ = false;
};

void TableWriter::table(const std::string &comment, bool dormant)
{
	NftnlTable t(nftnl_table_alloc());
	nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, table_.c_str());
	nftnl_table_set_u32(t.get(), NFTNL_TABLE_FLAGS, dormant ? NFT_TABLE_F_DORMANT : 0);
	Udata u;
	u.str(0, comment); // NFTNL_UDATA_TABLE_COMMENT
	nftnl_table_set_data(t.get(), NFTNL_TABLE_USERDATA, u.bytes().data(), static_cast<uint32_t>(u.bytes().size()));
	nlmsghdr *nlh = batch_.message(NFT_MSG_NEWTABLE, family_, NLM_F_CREATE, "adding table " + table_);
	nftnl_table_nlmsg_build_payload(nlh, t.get());
	batch_.commit();
}

void TableWriter::wake()
{
	// NEWTABLE of an existing table updates its flags (and keeps its comment).
	NftnlTable t(nftnl_table_alloc());
	nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, table_.c_str());
	nftnl_table_set_u32(t.get(), NFTNL_TABLE_FLAGS, 0);
	nlmsghdr *nlh = batch_.message(NFT_MSG_NEWTABLE, family_, NLM_F_CREATE, "waking table " + table_);
	nftnl_table_nlmsg_build_payload(nlh, t.get());
	batch_.commit();
}

void TableWriter::deleteTable()
{
	NftnlTable t(nftnl_table_alloc());
	nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, table_.c_str());
	nlmsghdr *nlh = batch_.message(NFT_MSG_DELTABLE, family_, 0, "deleting table " + table_);
	nftnl_table_nlmsg_build_payload(nlh, t.get());
	batch_.commit();
}

void TableWriter::chain(const Chain &h)
{
	static const std::map<std::string, uint32_t> kHooks = {
		{ "prerouting", NF_INET_PRE_ROUTING }, { "input", NF_INET_LOCAL_IN },
		{ "forward", NF_INET_FORWARD },       { "output", NF_INET_LOCAL_OUT },
		{ "postrouting", NF_INET_POST_ROUTING },
		{ "egress", NF_NETDEV_EGRESS },
	};
	NftnlChain c(nftnl_chain_alloc());
	nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TABLE, table_.c_str());
	nftnl_chain_set_str(c.get(), NFTNL_CHAIN_NAME, h.name.c_str());
	if (!h.hook.empty()) {
		nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TYPE, h.type.c_str());
		nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_POLICY, NF_ACCEPT);
		nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_HOOKNUM, kHooks.at(h.hook));
		nftnl_chain_set_s32(c.get(), NFTNL_CHAIN_PRIO, h.priorityValue);
		if (!h.device.empty())
			nftnl_chain_set_str(c.get(), NFTNL_CHAIN_DEV, h.device.c_str());
	}
	nlmsghdr *nlh = batch_.message(NFT_MSG_NEWCHAIN, family_, NLM_F_CREATE, "adding chain " + h.name);
	nftnl_chain_nlmsg_build_payload(nlh, c.get());
	batch_.commit();
}

void TableWriter::counter(const std::string &name, bool remove)
{
	NftnlObj o(nftnl_obj_alloc());
	nftnl_obj_set_str(o.get(), NFTNL_OBJ_TABLE, table_.c_str());
	nftnl_obj_set_str(o.get(), NFTNL_OBJ_NAME, name.c_str());
	nftnl_obj_set_u32(o.get(), NFTNL_OBJ_TYPE, NFT_OBJECT_COUNTER);
	if (!remove) {
		nftnl_obj_set_u64(o.get(), NFTNL_OBJ_CTR_BYTES, 0);
		nftnl_obj_set_u64(o.get(), NFTNL_OBJ_CTR_PKTS, 0);
	}
	nlmsghdr *nlh = batch_.message(remove ? NFT_MSG_DELOBJ : NFT_MSG_NEWOBJ, family_, remove ? 0 : NLM_F_CREATE,
				       (remove ? "deleting counter " : "adding counter ") + name);
	nftnl_obj_nlmsg_build_payload(nlh, o.get());
	batch_.commit();
}

void TableWriter::set(const Set &d)
{
	uint32_t id = ++setId_;
	bool map = d.kind == SetKind::Map, objmap = d.kind == SetKind::CounterMap;
	NftnlSet s(nftnl_set_alloc());
	nftnl_set_set_str(s.get(), NFTNL_SET_TABLE, table_.c_str());
	nftnl_set_set_str(s.get(), NFTNL_SET_NAME, d.name.c_str());
	uint32_t flags = 0;
	if (d.interval)
		flags |= NFT_SET_INTERVAL;
	if (map || d.kind == SetKind::VerdictMap)
		flags |= NFT_SET_MAP;
	if (objmap)
		flags |= NFT_SET_OBJECT;
	if (d.interval && d.key.size() > 1)
		flags |= NFT_SET_CONCAT;
	nftnl_set_set_u32(s.get(), NFTNL_SET_FLAGS, flags);
	nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_TYPE, concatType(d.key));
	nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_LEN, concatLen(d.key));
	if (map) {
		nftnl_set_set_u32(s.get(), NFTNL_SET_DATA_TYPE, concatType(d.data));
		uint32_t len = concatLen(d.data);
		nftnl_set_set_u32(s.get(), NFTNL_SET_DATA_LEN, d.dataInterval ? 2 * len : len);
	} else if (d.kind == SetKind::VerdictMap) {
		// The kernel sizes verdicts itself; nft sends the register's 16 bytes.
		nftnl_set_set_u32(s.get(), NFTNL_SET_DATA_TYPE, NFT_DATA_VERDICT);
		nftnl_set_set_u32(s.get(), NFTNL_SET_DATA_LEN, 16);
	}
	if (objmap)
		nftnl_set_set_u32(s.get(), NFTNL_SET_OBJ_TYPE, NFT_OBJECT_COUNTER);
	nftnl_set_set_u32(s.get(), NFTNL_SET_ID, id);
	if (d.interval && d.key.size() > 1) {
		uint8_t lens[NFT_REG32_COUNT];
		for (size_t i = 0; i < d.key.size(); i++)
			lens[i] = static_cast<uint8_t>(selectorInfo(d.key[i]).len);
		nftnl_set_set_data(s.get(), NFTNL_SET_DESC_CONCAT, lens, static_cast<uint32_t>(d.key.size()));
	}
	std::string ud = setUserData(d);
	nftnl_set_set_data(s.get(), NFTNL_SET_USERDATA, ud.data(), static_cast<uint32_t>(ud.size()));
	nlmsghdr *nlh = batch_.message(NFT_MSG_NEWSET, family_, NLM_F_CREATE, "adding set " + d.name);
	nftnl_set_nlmsg_build_payload(nlh, s.get());
	batch_.commit();
	ids_[d.name] = id;
}

void TableWriter::deleteSet(const std::string &name)
{
	NftnlSet s(nftnl_set_alloc());
	nftnl_set_set_str(s.get(), NFTNL_SET_TABLE, table_.c_str());
	nftnl_set_set_str(s.get(), NFTNL_SET_NAME, name.c_str());
	nlmsghdr *nlh = batch_.message(NFT_MSG_DELSET, family_, 0, "deleting set " + name);
	nftnl_set_nlmsg_build_payload(nlh, s.get());
	batch_.commit();
}

void TableWriter::flushChain(const std::string &name)
{
	// A DELRULE without a handle.
	NftnlRule r(nftnl_rule_alloc());
	nftnl_rule_set_str(r.get(), NFTNL_RULE_TABLE, table_.c_str());
	nftnl_rule_set_str(r.get(), NFTNL_RULE_CHAIN, name.c_str());
	nlmsghdr *nlh = batch_.message(NFT_MSG_DELRULE, family_, 0, "flushing chain " + name);
	nftnl_rule_nlmsg_build_payload(nlh, r.get());
	batch_.commit();
}

void TableWriter::flushSet(const std::string &name)
{
	// A DELSETELEM without elements.
	nlmsghdr *nlh = batch_.message(NFT_MSG_DELSETELEM, family_, 0, "flushing set " + name);
	mnl_attr_put_strz(nlh, NFTA_SET_ELEM_LIST_TABLE, table_.c_str());
	mnl_attr_put_strz(nlh, NFTA_SET_ELEM_LIST_SET, name.c_str());
	batch_.commit();
}

uint32_t TableWriter::idOf(const std::string &name) const
{
	auto it = ids_.find(name);
	return it == ids_.end() ? 0 : it->second;
}

void TableWriter::putElements(uint16_t msgType, const std::string &setName, uint32_t setId,
			      const std::vector<WireElem> &elems, const char *verb)
{
	size_t i = 0;
	while (i < elems.size()) {
		nlmsghdr *nlh = batch_.message(msgType, family_, NLM_F_CREATE,
					       std::string(verb) + " elements of set " + setName);
		mnl_attr_put_strz(nlh, NFTA_SET_ELEM_LIST_TABLE, table_.c_str());
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
		batch_.commit();
	}
}

// A constant anonymous set of two one-byte keys, as nft gives each rule that
// writes `{ a, b }`: key type, typeof user data and byte order as nft records them.
uint32_t TableWriter::anonymousPair(const std::string &chain, uint32_t keyType, const Udata &typeofExpr,
				    uint32_t byteorder, uint8_t first, uint8_t second)
{
	uint32_t id = ++setId_;
	NftnlSet s(nftnl_set_alloc());
	nftnl_set_set_str(s.get(), NFTNL_SET_TABLE, table_.c_str());
	nftnl_set_set_str(s.get(), NFTNL_SET_NAME, "__set%d");
	nftnl_set_set_u32(s.get(), NFTNL_SET_FLAGS, NFT_SET_ANONYMOUS | NFT_SET_CONSTANT);
	nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_TYPE, keyType);
	nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_LEN, 1);
	nftnl_set_set_u32(s.get(), NFTNL_SET_ID, id);
	nftnl_set_set_u32(s.get(), NFTNL_SET_DESC_SIZE, 2);
	Udata u;
	u.u32(kUdKeyByteorder, byteorder);
	u.nest(kUdKeyTypeof, typeofExpr);
	nftnl_set_set_data(s.get(), NFTNL_SET_USERDATA, u.bytes().data(), static_cast<uint32_t>(u.bytes().size()));
	nlmsghdr *nlh = batch_.message(NFT_MSG_NEWSET, family_, NLM_F_CREATE,
				       "adding anonymous set of chain " + chain);
	nftnl_set_nlmsg_build_payload(nlh, s.get());
	batch_.commit();
	ids_["__set%d"] = id;

	std::vector<WireElem> elems(2);
	elems[0].key = std::string(1, static_cast<char>(first));
	elems[1].key = std::string(1, static_cast<char>(second));
	putElements(NFT_MSG_NEWSETELEM, "__set%d", id, elems, "adding");
	return id;
}

void TableWriter::rule(const std::string &chain, const Rule &rule)
{
	RuleEncoder r(*this, chain);
	for (const Statement &st : rule.statements)
		r.statement(st);
	nlmsghdr *nlh = batch_.message(NFT_MSG_NEWRULE, family_, NLM_F_CREATE | NLM_F_APPEND,
				       "adding a rule to chain " + chain);
	nftnl_rule_nlmsg_build_payload(nlh, r.get());
	batch_.commit();
}

void TableWriter::rules(const Chain &chain)
{
	for (const Rule &r : chain.rules)
		rule(chain.name, r);
}

void TableWriter::elements(const Set &s, const std::vector<Element> &elements, size_t *count, bool head)
{
	if (elements.empty())
		return;
	*count += elements.size();
	// Encoded a slice at a time, so that a set's wire form is never held
	// whole beside the batch (an rbtree's closing end element goes with
	// the first slice).
	constexpr size_t kPiece = 1024;
	if (elements.size() <= kPiece) {
		putElements(NFT_MSG_NEWSETELEM, s.name, idOf(s.name), wireElements(s, elements, false, head), "adding");
		if (checkpoint_)
			checkpoint_();
		return;
	}
	std::vector<Element> part;
	for (size_t at = 0; at < elements.size(); at += kPiece) {
		auto from = elements.begin() + static_cast<ptrdiff_t>(at);
		part.assign(from, from + static_cast<ptrdiff_t>(std::min(kPiece, elements.size() - at)));
		putElements(NFT_MSG_NEWSETELEM, s.name, idOf(s.name), wireElements(s, part, false, head && at == 0), "adding");
		if (checkpoint_)
			checkpoint_();
	}
}

void TableWriter::delta(const Set &o, const Set &n, size_t *added, size_t *deleted)
{
	WireDelta d = elementDelta(o, n);
	*deleted += d.del.size();
	*added += d.add.size();
	if (!d.del.empty())
		putElements(NFT_MSG_DELSETELEM, n.name, 0, d.del, "deleting");
	if (!d.add.empty())
		putElements(NFT_MSG_NEWSETELEM, n.name, 0, d.add, "adding");
}

void TableWriter::wholeTable(TableModel &model, const plan::Plan *plan, size_t *count, bool dormant)
{
	table(model.comment, dormant);
	for (const Chain &c : model.chains)
		chain(c);
	for (const std::string &c : model.counters) {
		counter(c);
		if (checkpoint_)
			checkpoint_();
	}
	// Every set is made first, in the model's order (the order `nft list`
	// shows); then the elements the model holds, each set's freed once
	// encoded; then the port sets, built from the plan a piece at a time.
	// So the batch, at its largest, is not held beside the model's sets.
	std::vector<Set *> fromPlan;
	for (Set &s : model.sets) {
		set(s);
		if (plan && s.elements.empty() && isPortSet(s.name))
			fromPlan.push_back(&s);
	}
	for (Set &s : model.sets) {
		elements(s, s.elements, count);
		std::vector<Element>().swap(s.elements); // encoded: the batch holds it now
	}
	if (!fromPlan.empty()) {
		PortSetSource source(*plan);
		for (Set *s : fromPlan) {
			bool head = true; // the first piece begins the set (an rbtree's closing end element)
			source.chunks(s->name, 1024, [&](const std::vector<Element> &some) {
				elements(*s, some, count, head);
				head = false;
			});
		}
	}
	for (const Chain &c : model.chains)
		rules(c);
}

} // namespace portslice::nft
