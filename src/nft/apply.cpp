// SPDX-License-Identifier: MIT
// NftApplier: the model into the kernel, one transaction each (full replace, element delta, set fill), and the table's state read back.
#include "nft/apply.h"

#include <cstring>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <set>
#include <stdexcept>

#include "nft/writer.h"

namespace portslice::nft {

namespace {

// The indexes of the sets other than the per-length zone maps, in order.
std::vector<size_t> fixedSets(const TableModel &m)
{
	std::vector<size_t> out;
	for (size_t i = 0; i < m.sets.size(); i++)
		if (!isZoneSaddrMap(m.sets[i]))
			out.push_back(i);
	return out;
}

// The raw chains, whose rules name the zone maps of each prefix length.
bool isRawChain(const Chain &c) { return c.name == "prerouting" || c.name == "output"; }

// Same sets, chains and rules, except perhaps the prefix lengths of the zone
// maps: an element delta suffices (plus, for other lengths, new zone maps and
// new rules in the raw chains). Counters are objects, added and deleted like
// elements.
bool sameStructure(const TableModel &a, const TableModel &b)
{
	if (a.uplink != b.uplink || a.shapes != b.shapes || a.chains.size() != b.chains.size())
		return false;
	for (size_t i = 0; i < a.chains.size(); i++)
		if (!isRawChain(a.chains[i]) && !(a.chains[i] == b.chains[i]))
			return false;
	std::vector<size_t> x = fixedSets(a), y = fixedSets(b);
	if (x.size() != y.size())
		return false;
	for (size_t i = 0; i < x.size(); i++)
		if (!a.sets[x[i]].sameDeclaration(b.sets[y[i]]))
			return false;
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
	auto changed = [&](const Set &o, const Set &n) { w.delta(o, n, &report.elementsAdded, &report.elementsDeleted); };
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
	if (newLengths) {
		for (const Chain &c : next.chains)
			if (isRawChain(c))
				w.flushChain(c.name);
		for (const Set &s : current.sets)
			if (isZoneSaddrMap(s))
				w.deleteSet(s.name);
		for (const Set &s : next.sets)
			if (isZoneSaddrMap(s)) {
				w.set(s);
				w.elements(s, s.elements, &report.elementsAdded);
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
			changed(o, n);
		if (built) {
			std::vector<Element>().swap(n.elements);
			std::vector<Element>().swap(o.elements);
		}
	}
	if (!newLengths)
		for (size_t i = 0; i < next.sets.size(); i++)
			if (isZoneSaddrMap(next.sets[i]) && !sameElements(current.sets[i].elements, next.sets[i].elements))
				changed(current.sets[i], next.sets[i]);
	if (newLengths)
		for (const Chain &c : next.chains)
			if (isRawChain(c))
				w.rules(c);
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
	w.wholeTable(model, plan, &report.elementsAdded);
	batch.finish();
	report.messages = batch.messages();
	if (Status s = sock_.send(batch); !s)
		return s.error().wrap("applying table portslice");
	report.bytes = batch.bytes();
	return report;
}

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
			w.delta(before[i], after[i], &report.elementsAdded, &report.elementsDeleted);
	if (fill) {
		w.flushSet(fill->name);
		w.elements(*fill, fill->elements, &report.elementsAdded);
	}
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
	w.flushSet(set.name);
	w.elements(set, set.elements, &added);
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
