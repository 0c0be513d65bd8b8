// SPDX-License-Identifier: MIT
// NftApplier: the model into the kernel, one transaction each (full replace, element delta, set fill), and the table's state read back.
#include "nft/apply.h"

#include <cstring>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <set>
#include <stdexcept>
#include <unordered_map>

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

// The generation set emptied and given `generation`, in the batch of a
// delta (not counted as a changed element).
void putGeneration(TableWriter &w, uint64_t generation)
{
	size_t ignored = 0;
	Set g = generationSet(generation);
	w.flushSet(g.name);
	w.elements(g, g.elements, &ignored);
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
	bool seen = false, dormant = false;
	Status s = sock_.request(nlh, [&](const nlmsghdr *m) {
		NftnlTable got(nftnl_table_alloc());
		if (nftnl_table_nlmsg_parse(m, got.get()) < 0)
			return MNL_CB_ERROR;
		seen = true;
		dormant = nftnl_table_get_u32(got.get(), NFTNL_TABLE_FLAGS) & NFT_TABLE_F_DORMANT;
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
	lastTableDormant_ = dormant;
	if (!s) {
		if (s.error().code() == std::errc::no_such_file_or_directory) {
			lastTableSeen_ = lastTableDormant_ = false;
			return std::optional<TableState>{};
		}
		return s.error().wrap("reading table inet portslice");
	}
	if (seen && !state)
		state = TableState{}; // a table without our comment: still ours to replace
	// A dormant table is a creation stopped half-way (its comment names what
	// it was to become): it holds no applied state.
	if (seen && dormant)
		return std::optional<TableState>{ TableState{} };
	if (seen) {
		// The comment names the generation of the last full replace; the
		// set `generation` (absent in tables of older versions) the last
		// one applied, deltas included. It holds 32 bits: the rest from
		// the comment's, which is never newer.
		Result<std::optional<uint64_t>> g = readGeneration();
		if (!g)
			return g.error();
		if (*g) {
			uint64_t high = state->generation & ~uint64_t{ 0xffffffff };
			uint64_t at = high | **g;
			state->generation = at < state->generation ? at + (uint64_t{ 1 } << 32) : at;
		}
	}
	return state;
}

Result<std::vector<WireElem>> NftApplier::readElements(const std::string &set)
{
	std::vector<WireElem> out;
	if (Status s = forEachElement(set, [&](WireElem &&w) { out.push_back(std::move(w)); }); !s)
		return s.error();
	return out;
}

Status NftApplier::forEachElement(const std::string &set, const std::function<void(WireElem &&)> &take)
{
	std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
	NftnlSet filter(nftnl_set_alloc());
	nftnl_set_set_str(filter.get(), NFTNL_SET_TABLE, kTableName);
	nftnl_set_set_str(filter.get(), NFTNL_SET_NAME, set.c_str());
	nlmsghdr *nlh = nftnl_nlmsg_build_hdr(buf.data(), NFT_MSG_GETSETELEM, NFPROTO_INET, NLM_F_DUMP, ++seq_);
	nftnl_set_elems_nlmsg_build_payload(nlh, filter.get());
	Status s = sock_.request(nlh, [&](const nlmsghdr *m) {
		NftnlSet got(nftnl_set_alloc());
		if (nftnl_set_elems_nlmsg_parse(m, got.get()) < 0)
			return MNL_CB_ERROR;
		auto bytes = [](nftnl_set_elem *e, uint16_t attr) {
			if (!nftnl_set_elem_is_set(e, attr))
				return std::string();
			uint32_t len = 0;
			auto *p = static_cast<const char *>(nftnl_set_elem_get(e, attr, &len));
			return p ? std::string(p, len) : std::string();
		};
		// In the order the kernel walks the set, which is the order nft
		// lists a concatenated interval set in (insertion order).
		nftnl_set_elems_iter *it = nftnl_set_elems_iter_create(got.get());
		if (!it)
			return MNL_CB_ERROR;
		for (nftnl_set_elem *e = nftnl_set_elems_iter_next(it); e; e = nftnl_set_elems_iter_next(it)) {
			WireElem w;
			if (nftnl_set_elem_is_set(e, NFTNL_SET_ELEM_FLAGS))
				w.flags = nftnl_set_elem_get_u32(e, NFTNL_SET_ELEM_FLAGS);
			w.key = bytes(e, NFTNL_SET_ELEM_KEY);
			w.keyEnd = bytes(e, NFTNL_SET_ELEM_KEY_END);
			w.data = bytes(e, NFTNL_SET_ELEM_DATA);
			if (nftnl_set_elem_is_set(e, NFTNL_SET_ELEM_OBJREF))
				w.objref = nftnl_set_elem_get_str(e, NFTNL_SET_ELEM_OBJREF);
			if (nftnl_set_elem_is_set(e, NFTNL_SET_ELEM_CHAIN))
				w.chain = nftnl_set_elem_get_str(e, NFTNL_SET_ELEM_CHAIN);
			if (nftnl_set_elem_is_set(e, NFTNL_SET_ELEM_VERDICT))
				w.gotoChain = static_cast<int32_t>(nftnl_set_elem_get_u32(e, NFTNL_SET_ELEM_VERDICT)) == NFT_GOTO;
			take(std::move(w));
		}
		nftnl_set_elems_iter_destroy(it);
		return MNL_CB_OK;
	});
	if (!s)
		return s.error().wrap("reading the elements of set " + set + " of table portslice");
	return {};
}

Result<std::optional<uint64_t>> NftApplier::readGeneration()
{
	Result<std::vector<WireElem>> got = readElements(kGenerationSet);
	if (!got) {
		if (got.error().code() == std::errc::no_such_file_or_directory)
			return std::optional<uint64_t>{};
		return got.error();
	}
	if (got->size() != 1 || (*got)[0].key.size() != 4)
		return std::optional<uint64_t>{};
	uint32_t g = 0;
	std::memcpy(&g, (*got)[0].key.data(), 4); // host order, as meta cgroup
	return std::optional<uint64_t>{g};
}

Status NftApplier::orderAsListed(const Set &set, std::vector<Element> &elements)
{
	if (!set.interval || set.key.size() < 2 || elements.size() < 2)
		return {};
	// Each kernel element's position by its key and key end, taken as the
	// dump arrives (the elements themselves are not kept).
	std::unordered_map<std::string, size_t> at;
	at.reserve(elements.size());
	Status read = forEachElement(set.name, [&](WireElem &&w) { at.emplace(w.key + w.keyEnd, at.size()); });
	if (!read) {
		if (read.error().code() == std::errc::no_such_file_or_directory)
			return {};
		return read.error();
	}
	// (kernel position, or past the end for one the kernel lacks; model position)
	std::vector<std::pair<size_t, size_t>> order;
	order.reserve(elements.size());
	for (size_t i = 0; i < elements.size(); i++) {
		std::vector<WireElem> wire = wireElements(set, { elements[i] }, true);
		auto found = at.find(wire[0].key + wire[0].keyEnd);
		order.emplace_back(found == at.end() ? at.size() : found->second, i);
	}
	std::stable_sort(order.begin(), order.end(), [](const auto &a, const auto &b) { return a.first < b.first; });
	std::vector<Element> listed;
	listed.reserve(order.size());
	for (const auto &[position, index] : order)
		listed.push_back(std::move(elements[index]));
	elements = std::move(listed);
	return {};
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
	// replace; the set `generation` gets the new one.
	ApplyReport report;
	Batch batch;
	TableWriter w(batch);
	auto changed = [&](const Set &o, const Set &n) { w.delta(o, n, &report.elementsAdded, &report.elementsDeleted); };
	// The egress table keeps its counters like the main one: only the
	// sources that come or go change it.
	TableModel egressNext = egressModel(next), egressCurrent = egressModel(current);
	TableWriter e(batch, egressNext);
	std::set<std::string> oldLeft(egressCurrent.counters.begin(), egressCurrent.counters.end());
	std::set<std::string> newLeft(egressNext.counters.begin(), egressNext.counters.end());
	for (const std::string &c : egressNext.counters)
		if (!oldLeft.count(c))
			e.counter(c);
	for (size_t i = 0; i < egressNext.sets.size(); i++)
		if (!sameElements(egressCurrent.sets[i].elements, egressNext.sets[i].elements))
			e.delta(egressCurrent.sets[i], egressNext.sets[i], &report.elementsAdded, &report.elementsDeleted);
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
	std::optional<PortSetSource> nextSource, currentSource;
	if (nextPlan && currentPlan) {
		nextSource.emplace(*nextPlan);
		currentSource.emplace(*currentPlan);
	}
	for (size_t i = 0; i < after.size(); i++) {
		Set &n = next.sets[after[i]], &o = current.sets[before[i]];
		if (n.name == kGenerationSet)
			continue; // below
		bool built = nextPlan && currentPlan && isPortSet(n.name);
		if (built) {
			n.elements = nextSource->elements(n.name);
			o.elements = currentSource->elements(o.name);
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
	// A table without the set (made by an older portslice) fails here and
	// is replaced below.
	putGeneration(w, next.generation);
	if (!sameCounters)
		for (const std::string &c : current.counters)
			if (!newCounters.count(c))
				w.counter(c, true);
	for (const std::string &c : egressCurrent.counters)
		if (!newLeft.count(c))
			e.counter(c, true);
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
	if (!exists->has_value() || lastTableDormant_)
		return create(model, plan);
	ApplyReport report;
	report.fullReplace = true;
	report.comment = model.comment;
	TableModel egress = egressModel(model); // before wholeTable frees the model's elements
	Batch batch;
	TableWriter w(batch);
	w.deleteTable();
	w.wholeTable(model, plan, &report.elementsAdded);
	// The egress table anew, its counters at 0 like the new_ counters:
	// adding it first makes the delete valid whether it exists or not.
	TableWriter e(batch, egress);
	e.table(egress.comment);
	e.deleteTable();
	e.wholeTable(egress, nullptr, &report.elementsAdded);
	batch.finish();
	report.messages = batch.messages();
	if (Status s = sock_.send(batch); !s)
		return s.error().wrap("applying table portslice");
	report.bytes = batch.bytes();
	return report;
}

namespace {

// A creation's transaction failed: wholeTable stops there.
struct StageFailed {
	Error error;
};

} // namespace

Result<ApplyReport> NftApplier::create(TableModel &model, const plan::Plan *plan)
{
	ApplyReport report;
	report.fullReplace = true;
	report.created = true;
	report.comment = model.comment;
	report.transactions = 0;
	TableModel egress = egressModel(model);
	Batch batch;
	TableWriter w(batch);
	auto send = [&] {
		batch.finish();
		report.messages += batch.messages();
		if (Status s = sock_.send(batch); !s)
			throw StageFailed{ s.error() };
		report.bytes += batch.bytes();
		report.transactions++;
		batch = Batch();
	};
	// Two pages: the first is full, the next begun (a page is a megabyte).
	w.setCheckpoint([&] {
		if (batch.pages() >= 2)
			send();
	});
	try {
		if (lastTableSeen_)
			w.deleteTable(); // the dormant one
		w.wholeTable(model, plan, &report.elementsAdded, true);
		w.setCheckpoint({});
		w.wake();
		TableWriter e(batch, egress);
		e.table(egress.comment);
		e.deleteTable();
		e.wholeTable(egress, nullptr, &report.elementsAdded);
		send();
	} catch (StageFailed &failed) {
		Error error = failed.error.wrap("applying table portslice");
		if (report.transactions > 0) {
			// Nothing half-made stays: the dormant table goes.
			Batch undo;
			TableWriter u(undo);
			u.deleteTable();
			undo.finish();
			if (Status s = sock_.send(undo); !s)
				error = Error(error.message() + " (and deleting the dormant table: " + s.error().message() + ")");
		}
		return error;
	}
	return report;
}

Result<ApplyReport> NftApplier::applyDelta(const std::vector<Set> &before, const std::vector<Set> &after,
					   std::optional<uint64_t> generation, const Set *fill)
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
	// Even when no element of ours changes (a move between two other
	// servers), the table names the new generation.
	if (generation)
		putGeneration(w, *generation);
	else if (!fill && report.elementsAdded + report.elementsDeleted == 0)
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
	TableModel egress;
	egress.family = Family::Netdev;
	egress.tableName = kEgressTableName;
	TableWriter e(batch, egress);
	e.table({});
	e.deleteTable();
	batch.finish();
	Status s = sock_.send(batch);
	if (!s)
		return s.error().wrap("removing table portslice");
	return {};
}

Result<std::vector<CounterValue>> NftApplier::readCounters(bool egress)
{
	const char *table = egress ? kEgressTableName : kTableName;
	const uint16_t family = egress ? NFPROTO_NETDEV : NFPROTO_INET;
	std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
	NftnlObj filter(nftnl_obj_alloc());
	nftnl_obj_set_str(filter.get(), NFTNL_OBJ_TABLE, table);
	nftnl_obj_set_u32(filter.get(), NFTNL_OBJ_TYPE, NFT_OBJECT_COUNTER);
	nlmsghdr *nlh = nftnl_nlmsg_build_hdr(buf.data(), NFT_MSG_GETOBJ, family, NLM_F_DUMP, ++seq_);
	nftnl_obj_nlmsg_build_payload(nlh, filter.get());
	std::vector<CounterValue> out;
	Status s = sock_.request(nlh, [&](const nlmsghdr *m) {
		NftnlObj o(nftnl_obj_alloc());
		if (nftnl_obj_nlmsg_parse(m, o.get()) < 0)
			return MNL_CB_ERROR;
		const char *got = nftnl_obj_get_str(o.get(), NFTNL_OBJ_TABLE);
		if (!got || std::strcmp(got, table) != 0 || nftnl_obj_get_u32(o.get(), NFTNL_OBJ_FAMILY) != family)
			return MNL_CB_OK;
		CounterValue v;
		v.name = nftnl_obj_get_str(o.get(), NFTNL_OBJ_NAME);
		v.packets = nftnl_obj_get_u64(o.get(), NFTNL_OBJ_CTR_PKTS);
		v.bytes = nftnl_obj_get_u64(o.get(), NFTNL_OBJ_CTR_BYTES);
		out.push_back(std::move(v));
		return MNL_CB_OK;
	});
	if (!s) {
		if (egress && s.error().code() == std::errc::no_such_file_or_directory)
			return out; // applied by an older portsliced: no egress table yet
		return s.error().wrap(std::string("reading counters of table ") + table);
	}
	return out;
}

} // namespace portslice::nft
