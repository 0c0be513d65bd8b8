// SPDX-License-Identifier: MIT
// The batch the writer makes of every example table, read back and printed by libnftnl, equals what `nft --debug=netlink -f` printed for the golden dump (tests/unit/data/netlink/).
//
// The recordings were made once, as root in a scratch network namespace:
//   ip netns exec NS nft --debug=netlink -c -f rules/NAME.nft > tests/unit/data/netlink/NAME.txt
// (nftables 1.0.6, libnftnl 1.2.4). This test needs no root: it sends nothing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <sys/uio.h>

#include <libnftnl/batch.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>

#include "config/config.h"
#include "nft/model.h"
#include "nft/netlink.h"
#include "nft/render.h"
#include "nft/wire.h"
#include "nft/writer.h"
#include "plan/plan.h"

namespace fs = std::filesystem;
using namespace portslice;

namespace {

// The elements of one message in a canonical order: the kernel files them
// by key whatever the order they come in (nft sends a hash set's elements in
// the order of the text, which lists them in hash order; the writer by key).
std::string sortedElements(const std::string &line)
{
	const std::string tag = "\telement ";
	std::vector<std::string> items;
	size_t p = 0;
	while (p < line.size()) {
		size_t next = line.find(tag, p + 1);
		items.push_back(line.substr(p, next == std::string::npos ? std::string::npos : next - p));
		p = next == std::string::npos ? line.size() : next;
	}
	std::sort(items.begin(), items.end());
	std::string out;
	for (const std::string &i : items)
		out += i;
	return out;
}

std::vector<std::string> lines(const std::string &text)
{
	std::vector<std::string> out;
	std::istringstream in(text);
	std::string l, clean;
	while (std::getline(in, l)) {
		// libnftnl writes a name whose length is a multiple of four without
		// its NUL (as nft does; the kernel reads it by length) and, reading
		// it back, takes the next attribute's length byte with it.
		clean.clear();
		for (char c : l)
			if (c == '\t' || static_cast<unsigned char>(c) >= 0x20)
				clean += c;
		while (!clean.empty() && (clean.back() == ' ' || clean.back() == '\t'))
			clean.pop_back();
		if (clean.rfind("\telement ", 0) == 0)
			clean = sortedElements(clean);
		if (!clean.empty())
			out.push_back(clean);
	}
	return out;
}

// What nft printed for the sets, their elements and the rules; chains and
// counters print without their names there ("inet (null) (null)"), so they
// are left out on both sides.
std::vector<std::string> recorded(const std::string &name)
{
	std::ifstream in(fs::path(WIRE_DATA_DIR) / (name + ".txt"));
	std::stringstream s;
	s << in.rdbuf();
	std::vector<std::string> out;
	for (const std::string &l : lines(s.str()))
		if (l.rfind("inet (null) (null)", 0) != 0 && l.rfind("table (null) name (null)", 0) != 0)
			out.push_back(l);
	return out;
}

template<class T, auto Alloc, auto Free, auto Parse, auto Print>
std::string printed(const nlmsghdr *nlh)
{
	Handle<T, Free> obj(Alloc());
	EXPECT_GE(Parse(nlh, obj.get()), 0);
	std::vector<char> buf(1 << 20);
	Print(buf.data(), buf.size(), obj.get(), NFTNL_OUTPUT_DEFAULT, 0);
	return std::string(buf.data()) + "\n";
}

// Debian's libmnl (1.0.4) leaves an attribute's padding as the batch's
// memory had it (the kernel reads attributes by length, nft sends the same):
// zero it, nested attributes included, before libnftnl reads a copy back.
void zeroPadding(char *begin, char *end)
{
	for (auto *a = reinterpret_cast<nlattr *>(begin); mnl_attr_ok(a, static_cast<int>(end - reinterpret_cast<char *>(a)));
	     a = mnl_attr_next(a)) {
		char *payload = static_cast<char *>(mnl_attr_get_payload(a));
		char *last = reinterpret_cast<char *>(a) + a->nla_len;
		if (a->nla_type & NLA_F_NESTED)
			zeroPadding(payload, last);
		std::fill(last, reinterpret_cast<char *>(a) + MNL_ALIGN(a->nla_len), '\0');
	}
}

std::vector<char> cleanCopy(const nlmsghdr *nlh)
{
	std::vector<char> copy(reinterpret_cast<const char *>(nlh), reinterpret_cast<const char *>(nlh) + nlh->nlmsg_len);
	auto *m = reinterpret_cast<nlmsghdr *>(copy.data());
	zeroPadding(static_cast<char *>(mnl_nlmsg_get_payload_offset(m, sizeof(nfgenmsg))),
		    static_cast<char *>(mnl_nlmsg_get_payload_tail(m)));
	return copy;
}

// libnftnl numbers the elements of a message 1, 2, 3 ... when it builds one
// (as nft does, and the writer), but reads back only NFTA_LIST_ELEM (1), as
// the kernel's dumps have them: renumber them in the copy.
std::vector<char> renumberedElements(const nlmsghdr *nlh)
{
	std::vector<char> copy = cleanCopy(nlh);
	auto *m = reinterpret_cast<nlmsghdr *>(copy.data());
	auto *end = static_cast<char *>(mnl_nlmsg_get_payload_tail(m));
	for (auto *a = static_cast<nlattr *>(mnl_nlmsg_get_payload_offset(m, sizeof(nfgenmsg)));
	     mnl_attr_ok(a, static_cast<int>(end - reinterpret_cast<char *>(a))); a = mnl_attr_next(a)) {
		if (mnl_attr_get_type(a) != NFTA_SET_ELEM_LIST_ELEMENTS)
			continue;
		auto *last = reinterpret_cast<char *>(a) + a->nla_len;
		for (auto *e = static_cast<nlattr *>(mnl_attr_get_payload(a));
		     mnl_attr_ok(e, static_cast<int>(last - reinterpret_cast<char *>(e))); e = mnl_attr_next(e))
			e->nla_type = static_cast<uint16_t>((e->nla_type & ~NLA_TYPE_MASK) | NFTA_LIST_ELEM);
	}
	return copy;
}

// The writer's batch for the whole table of `toml`, as libnftnl prints it.
std::vector<std::string> written(const fs::path &toml)
{
	config::LoadResult loaded = config::loadFile(toml);
	EXPECT_TRUE(loaded.ok()) << toml;
	plan::PlanResult planned = plan::makePlan(*loaded.config);
	EXPECT_TRUE(planned.ok()) << toml;
	// As the daemon replaces a table: port sets built from the plan, in
	// the order the golden dump lists them.
	nft::TableModel model = nft::buildModel(*planned.plan, 1, false);
	nft::Batch batch;
	nft::TableWriter w(batch);
	size_t count = 0;
	w.wholeTable(model, &*planned.plan, &count);
	batch.finish();

	std::string out;
	int n = nftnl_batch_iovec_len(batch.raw());
	std::vector<iovec> iov(static_cast<size_t>(n));
	nftnl_batch_iovec(batch.raw(), iov.data(), n);
	for (const iovec &v : iov) {
		int left = static_cast<int>(v.iov_len);
		for (auto *nlh = static_cast<const nlmsghdr *>(v.iov_base); mnl_nlmsg_ok(nlh, left);
		     nlh = mnl_nlmsg_next(nlh, &left)) {
			std::vector<char> clean = cleanCopy(nlh);
			const auto *cleaned = reinterpret_cast<const nlmsghdr *>(clean.data());
			switch (nlh->nlmsg_type & 0xff) {
			case NFT_MSG_NEWSET:
				out += printed<nftnl_set, nftnl_set_alloc, nftnl_set_free, nftnl_set_nlmsg_parse,
					       nftnl_set_snprintf>(cleaned);
				break;
			case NFT_MSG_NEWSETELEM: {
				std::vector<char> copy = renumberedElements(nlh);
				out += printed<nftnl_set, nftnl_set_alloc, nftnl_set_free, nftnl_set_elems_nlmsg_parse,
					       nftnl_set_snprintf>(reinterpret_cast<const nlmsghdr *>(copy.data()));
				break;
			}
			case NFT_MSG_NEWRULE:
				out += printed<nftnl_rule, nftnl_rule_alloc, nftnl_rule_free, nftnl_rule_nlmsg_parse,
					       nftnl_rule_snprintf>(cleaned);
				break;
			default:
				break;
			}
		}
	}
	return lines(out);
}

// The batch's messages in an order that does not depend on when a set's
// elements come: the sets as made, then each set's elements in the order of
// the sets (and within a set as sent), then the rest (the rules) as sent.
// nft sends a set's elements right after the set; the writer makes every
// set first and adds the elements after, which the kernel takes the same.
std::vector<std::string> byKind(const std::vector<std::string> &printed)
{
	std::vector<std::vector<std::string>> messages;
	for (const std::string &l : printed) {
		if (messages.empty() || l.empty() || (l[0] != '\t' && l[0] != ' '))
			messages.emplace_back();
		messages.back().push_back(l);
	}
	auto words = [](const std::string &l) {
		std::istringstream in(l);
		std::vector<std::string> out;
		for (std::string w; in >> w;)
			out.push_back(w);
		return out;
	};
	std::vector<std::string> sets;
	std::map<std::string, std::vector<std::string>> elements;
	std::vector<std::string> rest, out;
	for (const auto &m : messages) {
		std::vector<std::string> head = words(m[0]);
		bool named = head.size() == 3 && head[1] == "portslice";
		if (named && m.size() == 1) {
			sets.push_back(head[0]);
			out.push_back(m[0]);
		} else if (named && m[1].find("element") != std::string::npos) {
			elements[head[0]].insert(elements[head[0]].end(), m.begin(), m.end());
		} else {
			rest.insert(rest.end(), m.begin(), m.end());
		}
	}
	for (const std::string &set : sets) {
		auto it = elements.find(set);
		if (it != elements.end()) {
			out.insert(out.end(), it->second.begin(), it->second.end());
			elements.erase(it);
		}
	}
	for (const auto &[set, lines] : elements) // of a set never made: keep them, to differ
		out.insert(out.end(), lines.begin(), lines.end());
	out.insert(out.end(), rest.begin(), rest.end());
	return out;
}

std::vector<fs::path> examples()
{
	std::vector<fs::path> out;
	for (const auto &e : fs::directory_iterator(RULES_DIR))
		if (e.path().extension() == ".toml")
			out.push_back(e.path());
	std::sort(out.begin(), out.end());
	return out;
}

TEST(NftWire, TheWritersBatchIsWhatNftSendsForEveryExampleRuleAndElement)
{
	auto all = examples();
	ASSERT_GE(all.size(), 4u);
	for (const fs::path &toml : all) {
		std::string name = toml.stem().string();
		std::vector<std::string> want = byKind(recorded(name)), got = byKind(written(toml));
		if (const char *keep = std::getenv("NFT_WIRE_KEEP")) {
			std::ofstream o(std::string(keep) + "/" + name + ".got");
			for (const std::string &l : got)
				o << l << "\n";
			std::ofstream w(std::string(keep) + "/" + name + ".want");
			for (const std::string &l : want)
				w << l << "\n";
		}
		ASSERT_GT(want.size(), 50u) << name << ": recording missing";
		size_t i = 0;
		while (i < want.size() && i < got.size() && want[i] == got[i])
			i++;
		EXPECT_EQ(i, want.size()) << name << ": first difference at line " << i + 1 << ":\n  nft:       "
					 << (i < want.size() ? want[i] : "(end)") << "\n  portslice: "
					 << (i < got.size() ? got[i] : "(end)");
		EXPECT_EQ(got.size(), want.size()) << name;
	}
}

// A key of an address and a port, an interval of a concatenation, a map's
// interval data and an rbtree's closing element, byte for byte.
// What audit reads back from the kernel decodes to the elements that were
// encoded, for every set of every example (intervals, concatenations,
// interfaces, marks in network order, counter references, range data).
TEST(NftWire, EveryElementOfEveryExampleDecodesBackFromItsWireForm)
{
	for (const fs::path &toml : examples()) {
		SCOPED_TRACE(toml.string());
		config::LoadResult loaded = config::loadFile(toml);
		ASSERT_TRUE(loaded.ok());
		plan::PlanResult planned = plan::makePlan(*loaded.config);
		ASSERT_TRUE(planned.ok());
		nft::TableModel model = nft::buildModel(*planned.plan, 7);
		for (const nft::Set &set : model.sets) {
			SCOPED_TRACE(set.name);
			size_t malformed = 0;
			std::vector<nft::Element> back =
				nft::decodeElements(set, nft::wireElements(set, set.elements, false), &malformed);
			EXPECT_EQ(malformed, 0u);
			ASSERT_EQ(back.size(), set.elements.size());
			for (size_t i = 0; i < back.size(); i++)
				EXPECT_EQ(nft::formatElement(set, back[i]), nft::formatElement(set, set.elements[i]));
			EXPECT_TRUE(nft::sameElements(back, set.elements));
		}
	}
	// The declarations alone (what the daemon decodes a commit's elements
	// by) are the table's sets, in its order.
	for (const fs::path &toml : examples()) {
		plan::Plan p = *plan::makePlan(*config::loadFile(toml).config).plan;
		nft::TableModel full = nft::buildModel(p, 0, false), declared = nft::declarations(p);
		ASSERT_EQ(declared.sets.size(), full.sets.size()) << toml;
		for (size_t i = 0; i < full.sets.size(); i++) {
			EXPECT_TRUE(declared.sets[i].sameDeclaration(full.sets[i])) << toml << " " << full.sets[i].name;
			EXPECT_TRUE(declared.sets[i].elements.empty());
		}
	}
	// Bytes that do not fit the declaration are counted, not guessed.
	nft::Set ports = nft::buildModel(*plan::makePlan(*config::loadFile(examples()[0]).config).plan, 1).sets[2];
	nft::WireElem cut;
	cut.key = "\x01\x02";
	size_t malformed = 0;
	EXPECT_TRUE(nft::decodeElements(ports, {cut}, &malformed).empty());
	EXPECT_EQ(malformed, 1u);
}

TEST(NftWire, ElementsOfConcatenationsAndIntervalsEncodeInNetworkOrderWithEndElements)
{
	nft::Set ports;
	ports.name = "my_ports";
	ports.key = { nft::Selector::IpSaddr, nft::Selector::ThSport };
	ports.interval = true;
	nft::Element e{ { { nft::FieldType::Ipv4, 0xc6336401, 0xc6336401, {} }, { nft::FieldType::Port, 1024, 3071, {} } },
			{},
			{} };
	std::vector<nft::WireElem> w = nft::wireElements(ports, { e }, false);
	ASSERT_EQ(w.size(), 1u);
	EXPECT_EQ(w[0].key, std::string("\xc6\x33\x64\x01\x04\x00\x00\x00", 8));
	EXPECT_EQ(w[0].keyEnd, std::string("\xc6\x33\x64\x01\x0b\xff\x00\x00", 8));

	nft::Set prefixes;
	prefixes.name = "stateless_saddr";
	prefixes.key = { nft::Selector::IpSaddr };
	prefixes.interval = true;
	nft::Element p{ { { nft::FieldType::Ipv4, 0x64400200, 0x6440020f, {} } }, {}, {} };
	w = nft::wireElements(prefixes, { p }, false);
	ASSERT_EQ(w.size(), 3u); // closing 0.0.0.0, the start, the end at .16
	EXPECT_EQ(w[0].flags, uint32_t{ NFT_SET_ELEM_INTERVAL_END });
	EXPECT_EQ(w[0].key, std::string(4, '\0'));
	EXPECT_EQ(w[1].key, std::string("\x64\x40\x02\x00", 4));
	EXPECT_EQ(w[2].key, std::string("\x64\x40\x02\x10", 4));
	EXPECT_EQ(w[2].flags, uint32_t{ NFT_SET_ELEM_INTERVAL_END });

	// A large rbtree is encoded a piece at a time: the pieces, the first
	// with the closing element, are the whole set's wire form.
	nft::Element q{ { { nft::FieldType::Ipv4, 0x64400300, 0x644003ff, {} } }, {}, {} };
	nft::Element r{ { { nft::FieldType::Ipv4, 0x64400400, 0x644004ff, {} } }, {}, {} };
	std::vector<nft::WireElem> whole = nft::wireElements(prefixes, { p, q, r }, false);
	std::vector<nft::WireElem> pieces = nft::wireElements(prefixes, { p, q }, false);
	std::vector<nft::WireElem> second = nft::wireElements(prefixes, { r }, false, false);
	ASSERT_EQ(second.size(), 2u) << "a later piece takes no closing element";
	pieces.insert(pieces.end(), second.begin(), second.end());
	EXPECT_EQ(pieces, whole);
}

} // namespace
