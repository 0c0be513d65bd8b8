// SPDX-License-Identifier: MIT
// KernelBackend: what the D-Bus service asks of the kernel, answered by the Applier and the counter readers.
#include "daemon/kernel_backend.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <string_view>
#include <unordered_set>

#include "common/log.h"
#include "daemon/kernel_stats.h"
#ifdef PORTSLICE_HAVE_XDP
#include <bpf/libbpf.h>
#include <net/if.h>

#include "xdp/forwarder.h"
#endif
#include "nft/model.h"
#include "nft/render.h"
#include "service/table_diff.h"

namespace portslice::daemon {

Status KernelBackend::readNatFailures(const plan::Plan &plan)
{
	Result<std::vector<nft::CounterValue>> counters = applier_.nft().readCounters();
	if (!counters)
		return counters.error().wrap("reading the counters of table inet portslice");
	Result<std::vector<nft::CounterValue>> lefts = applier_.nft().readCounters(true);
	if (!lefts)
		return lefts.error().wrap("reading the counters of table netdev portslice_egress");
	std::vector<std::string> planned = plannedCounters(plan);
	natFailures_.update(*counters, *lefts, planned);
	counterTotals_.update(*counters, planned);
	return {};
}

Status KernelBackend::apply(const plan::Plan &plan, const plan::Plan *old, uint64_t generation)
{
	conntrackUse_.reset();
	// The failures and counters counted so far, before a replace starts them at 0
	// (none to read before the first apply).
	if (old)
		(void)readNatFailures(*old);
	Result<ApplyResult> result = applier_.apply(plan, old, generation);
	if (!result)
		return result.error();
	const ApplyResult &r = *result;
	if (r.nft.fullReplace) {
		natFailures_.rebase();
		counterTotals_.rebase();
	}
	std::string how = !r.nft.fullReplace ? "element delta" : !r.nft.created ? "table replaced" : "table created";
	if (r.nft.transactions > 1)
		how += " in " + std::to_string(r.nft.transactions) + " transactions";
	log::Line(log::Priority::Info) << "generation " << generation << ": " << how
		  << ", +" << r.nft.elementsAdded << " -" << r.nft.elementsDeleted << " elements in " << r.nft.messages
		  << " messages (" << r.nft.bytes << " bytes); " << r.conntrackDeleted
		  << " conntrack entries of moved slices deleted"
		  << (r.drainingFlows ? "; " + std::to_string(r.drainingFlows) + " flows of draining slices kept" : "")
		  << (r.xdp ? "; XDP forwarder maps synced" : "");
	for (const conntrack::SysctlChange &c : r.tuning.changed)
		log::Line(log::Priority::Info) << c.name << " = " << c.value << " (was " << c.previous << ")";
	for (const std::string &skipped : r.tuning.skipped)
		log::Line(log::Priority::Info) << "not set: " << skipped;
	for (const std::string &skipped : r.routes.skipped)
		log::Line(log::Priority::Info) << "no return route: " << skipped;
	for (const std::string &skipped : r.neighbours.skipped)
		log::Line(log::Priority::Info) << "no managed neighbour entry: " << skipped;
	if (r.nft.fullReplace) {
		replacedElements_ = r.nft.elementsAdded;
		comment_ = r.nft.comment; // not tableComment again: it hashes the whole plan
	} else if (comment_.empty()) {
		Result<std::optional<nft::TableState>> state = applier_.nft().readState();
		if (state && state->has_value())
			comment_ = (*state)->comment;
	}
	return {};
}

Status KernelBackend::applyMove(const plan::Plan &plan, const plan::SliceMove &move, uint64_t generation)
{
	conntrackUse_.reset();
	Result<ApplyResult> result = applier_.applyMove(plan, move, generation);
	if (!result)
		return result.error();
	const ApplyResult &r = *result;
	log::Line(log::Priority::Info) << "generation " << generation << ": slice move, +" << r.nft.elementsAdded << " -"
		  << r.nft.elementsDeleted << " elements in " << r.nft.messages << " messages (" << r.nft.bytes
		  << " bytes, " << r.nftMs << " ms); " << r.conntrackDeleted
		  << " conntrack entries of the lost slice deleted (" << r.conntrackMs << " ms)"
		  << (r.xdp ? "; XDP forwarder slice synced (" + std::to_string(r.xdpMs) + " ms)" : "");
	return {};
}

Status KernelBackend::applyMoves(const plan::Plan &plan, const std::vector<plan::SliceMove> &moves, uint64_t generation)
{
	conntrackUse_.reset(); // as for one move: the slices' rows change now
	Result<ApplyResult> result = applier_.applyMoves(plan, moves, generation);
	if (!result)
		return result.error();
	const ApplyResult &r = *result;
	log::Line(log::Priority::Info) << "generation " << generation << ": " << moves.size() << " slice moves, +"
				       << r.nft.elementsAdded << " -" << r.nft.elementsDeleted << " elements in "
				       << r.nft.messages << " messages (" << r.nft.bytes << " bytes, " << r.nftMs
				       << " ms); " << r.conntrackDeleted << " conntrack entries of lost slices deleted ("
				       << r.conntrackMs << " ms)"
				       << (r.xdp ? "; XDP forwarder slices synced (" + std::to_string(r.xdpMs) + " ms)" : "");
	return {};
}

Result<std::string> KernelBackend::drift(const plan::Plan &plan, uint64_t generation)
{
	Result<std::optional<nft::TableState>> state = applier_.nft().readState();
	if (!state)
		return state.error().wrap("reading table inet portslice");
	if (!state->has_value())
		return std::string("table inet portslice is missing");
	std::string expected = comment_.empty() ? nft::tableComment(plan, generation) : comment_;
	if ((*state)->comment != expected)
		return "table inet portslice says \"" + (*state)->comment + "\", not \"" + expected + "\"";
	// Every apply and delta writes the generation into the set `generation`.
	Result<std::optional<uint64_t>> named = applier_.nft().readGeneration();
	if (!named)
		return named.error().wrap("reading set generation of table inet portslice");
	if (!*named)
		return std::string("table inet portslice has no set generation");
	if (**named != (generation & 0xffffffffu))
		return "set generation of table inet portslice names generation " + std::to_string(**named) + ", not " +
		       std::to_string(generation & 0xffffffffu);
#ifdef PORTSLICE_HAVE_XDP
	if (xdp_) {
		unsigned int ifindex = if_nametoindex(plan.uplink.c_str());
		if (ifindex == 0)
			return "uplink " + plan.uplink + " is gone";
		bpf_xdp_query_opts query{};
		query.sz = sizeof(query);
		if (bpf_xdp_query(static_cast<int>(ifindex), 0, &query) < 0)
			return Error(errno, "asking which XDP program " + plan.uplink + " runs");
		if (query.prog_id == 0)
			return "no XDP program on " + plan.uplink;
	}
#endif
	return std::string();
}

Result<std::vector<service::StatRow>> KernelBackend::stats(const plan::Plan &plan)
{
	if (Status s = readNatFailures(plan); !s)
		return s.error();
	std::vector<service::StatRow> rows;
	counterTotals_.addRows(rows); // counters' totals, not the kernel's since the last replace
	natFailures_.addRows(rows);
#ifdef PORTSLICE_HAVE_XDP
	if (xdp_) {
		Result<xdp::ForwarderCounters> verdicts = xdpPinDir_.empty() ? xdp::readForwarderCounters()
									     : xdp::readForwarderCounters(xdpPinDir_);
		if (!verdicts)
			return verdicts.error().wrap("reading the XDP forwarder's counters");
		for (uint32_t v = 0; v < xdp::kVerdictCount; ++v) {
			std::string name(xdp::verdictName(v));
			rows.push_back({"xdp", name, "packets", verdicts->packets[v]});
			rows.push_back({"xdp", name, "bytes", verdicts->bytes[v]});
		}
	} else {
		// No forwarder (--no-xdp): it passed, forwarded and dropped nothing.
		for (uint32_t v = 0; v < xdp::kVerdictCount; ++v) {
			std::string name(xdp::verdictName(v));
			rows.push_back({"xdp", name, "packets", 0});
			rows.push_back({"xdp", name, "bytes", 0});
		}
	}
#endif
	auto now = std::chrono::steady_clock::now();
	if (!conntrackUse_ || now - conntrackUse_->when >= kConntrackUseMaxAge) {
		Result<std::vector<service::StatRow>> use = readConntrackUse(plan);
		if (!use)
			return use;
		conntrackUse_ = ConntrackUse{now, std::move(*use)};
	}
	rows.insert(rows.end(), conntrackUse_->rows.begin(), conntrackUse_->rows.end());
	return rows;
}

nft::TableModel KernelBackend::planned(const plan::Plan &plan, uint64_t generation, bool portElements)
{
	// The comment the kernel holds (a delta keeps the last full replace's).
	nft::TableModel model = nft::buildModel(plan, generation, portElements);
	if (!comment_.empty())
		model.comment = comment_;
	// drain_zone as the applier filled it from the conntrack table.
	for (nft::Set &set : model.sets)
		if (set.name == applier_.drainZone().name)
			set.elements = applier_.drainZone().elements;
	return model;
}

namespace {

// `counters` (the plan's) in the order of `live` (the kernel's), those the
// kernel lacks last in their own order.
void orderCountersAsListed(std::vector<std::string> &counters, const std::vector<nft::CounterValue> &live)
{
	std::unordered_set<std::string_view> planned(counters.begin(), counters.end());
	std::unordered_set<std::string_view> listed;
	std::vector<std::string> ordered;
	ordered.reserve(counters.size());
	for (const nft::CounterValue &c : live)
		if (planned.contains(c.name) && listed.insert(c.name).second)
			ordered.push_back(c.name);
	for (const std::string &c : counters)
		if (!listed.contains(c))
			ordered.push_back(c);
	counters = std::move(ordered);
}

} // namespace

std::string KernelBackend::dump(const plan::Plan &plan, uint64_t generation)
{
	// The port sets are built from the plan one at a time, as rendered.
	nft::TableModel model = planned(plan, generation, false);
	// Counters are listed in the order the kernel holds them: a delta adds
	// a new source's after those of the last full replace.
	if (Result<std::vector<nft::CounterValue>> live = applier_.nft().readCounters(); live)
		orderCountersAsListed(model.counters, *live);
	else
		log::Line(log::Priority::Warning) << "dump: " << live.error().message() << "; counters in plan order";
	// The order of a concatenated interval set is the history of its
	// changes (deltas add at the end): the kernel's, for the plan's elements.
	// Room for the text as long as the last one, or about 45 bytes an element
	// of the last full replace, and some more.
	size_t expected = dumpBytes_ ? dumpBytes_ : replacedElements_ * 48;
	std::string text = nft::render(
		model, &plan,
		[&](const nft::Set &set, std::vector<nft::Element> &elements) {
			if (Status ordered = applier_.nft().orderAsListed(set, elements); !ordered)
				log::Line(log::Priority::Warning) << "dump: set " << set.name << ": "
								  << ordered.error().message() << "; elements in plan order";
		},
		expected + expected / 16);
	dumpBytes_ = text.size();
	return text;
}

namespace {

// The elements of `set` that differ between the plan and the kernel, read
// back over netlink and decoded into the model: one line each.
void compareElements(const nft::Set &set, const std::vector<nft::WireElem> &wire, std::vector<std::string> &out)
{
	std::string object = (set.kind == nft::SetKind::Set ? "set " : "map ") + set.name;
	size_t malformed = 0;
	std::vector<nft::Element> live = nft::decodeElements(set, wire, &malformed);
	std::map<std::string, const nft::Element *> planned, kernel;
	for (const nft::Element &e : set.elements)
		planned.emplace(nft::formatKey(e), &e);
	for (const nft::Element &e : live)
		kernel.emplace(nft::formatKey(e), &e);
	for (const auto &[key, e] : planned) {
		auto it = kernel.find(key);
		if (it == kernel.end())
			out.push_back(object + ": element " + nft::formatElement(set, *e) + " missing from the kernel");
		else if (nft::formatElement(set, *it->second) != nft::formatElement(set, *e))
			out.push_back(object + ": element " + nft::formatElement(set, *it->second) + " in the kernel, " +
				      nft::formatElement(set, *e) + " in the plan");
	}
	for (const auto &[key, e] : kernel)
		if (!planned.contains(key))
			out.push_back(object + ": element " + nft::formatElement(set, *e) + " in the kernel, not in the plan");
	if (malformed)
		out.push_back(object + ": " + std::to_string(malformed) + " element" + (malformed > 1 ? "s" : "") +
			      " in the kernel that do not fit its declaration");
}

// A port set left empty by the model gets its elements from the plan now
// (sorted), so that a large table is compared one set at a time.
void withElements(const nft::PortSetSource &source, nft::Set &set)
{
	if (set.elements.empty() && nft::isPortSet(set.name))
		set.elements = source.elements(set.name);
}

} // namespace

Result<std::vector<std::string>> KernelBackend::audit(const plan::Plan &plan, uint64_t generation)
{
	// Rules, declarations, counters and the comment as the kernel's own
	// listing shows them, as an operator would take it.
	FILE *pipe = ::popen("nft -s list table inet portslice 2>&1", "r");
	if (!pipe)
		return Error(errno, "running nft -s list table inet portslice");
	std::string live;
	char buffer[65536];
	size_t n;
	while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0)
		live.append(buffer, n);
	int status = ::pclose(pipe);
	if (status != 0 && live.find("No such file") == std::string::npos)
		return Error("nft -s list table inet portslice: " + live.substr(0, live.find('\n')));
	nft::TableModel model = planned(plan, generation, false);
	std::string structure = nft::render(model);
	std::vector<std::string> differences = service::compareTables(structure, status == 0 ? live : "", false);
	if (status != 0)
		return differences; // no table
	// Elements: read back over netlink and compared as the model's typed
	// elements, each set that the kernel has.
	const nft::PortSetSource source(plan);
	for (nft::Set &set : model.sets) {
		Result<std::vector<nft::WireElem>> wire = applier_.nft().readElements(set.name);
		if (!wire) {
			if (wire.error().code() == std::errc::no_such_file_or_directory)
				continue; // named above
			return wire.error();
		}
		withElements(source, set);
		compareElements(set, *wire, differences);
		std::vector<nft::Element>().swap(set.elements); // one set at a time
	}
	if (differences.empty()) {
		Result<std::string> drifted = drift(plan, generation);
		if (!drifted)
			return drifted.error();
		if (!drifted->empty())
			differences.push_back(*drifted);
	}
	return differences;
}

std::optional<uint64_t> KernelBackend::appliedGeneration()
{
	Result<std::optional<nft::TableState>> state = applier_.nft().readState();
	if (!state || !state->has_value())
		return std::nullopt;
	return (*state)->generation;
}

} // namespace portslice::daemon
