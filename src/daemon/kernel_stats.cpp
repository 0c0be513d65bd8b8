// SPDX-License-Identifier: MIT
// Stats rows from nft counters, and from one conntrack walk: use per zone, per source and address, per slice.
#include "daemon/kernel_stats.h"

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <unordered_map>

namespace portslice::daemon {

// src_NAME -> (source, NAME), addr_A -> (address, A), guard_X -> (guard, X).
void addCounterRows(std::vector<service::StatRow> &rows, const std::string &name, uint64_t packets, uint64_t bytes)
{
	if (name.starts_with("new_"))
		return; // NatFailures reads them
	struct Prefix {
		const char *prefix;
		const char *kind;
	};
	for (Prefix p : {Prefix{"src_", "source"}, Prefix{"addr_", "address"}, Prefix{"guard_", "guard"}}) {
		std::string_view prefix = p.prefix;
		if (!name.starts_with(prefix))
			continue;
		std::string what = name.substr(prefix.size());
		if (std::string_view(p.kind) == "guard") {
			rows.push_back({p.kind, what, "drops", packets});
		} else {
			rows.push_back({p.kind, what, "packets", packets});
			rows.push_back({p.kind, what, "bytes", bytes});
		}
		return;
	}
	rows.push_back({"counter", name, "packets", packets});
}

std::vector<std::string> plannedCounters(const plan::Plan &plan)
{
	std::vector<std::string> names;
	names.reserve(plan.sources.size() * 3 + plan.addresses.size() + 1);
	for (const plan::PlannedSource &s : plan.sources) {
		names.push_back("src_" + s.name);
		names.push_back("guard_" + s.name);
		if (s.mode == plan::NatMode::Conntrack)
			names.push_back("new_" + s.name);
	}
	for (const plan::PlannedAddress &a : plan.addresses)
		names.push_back("addr_" + a.address.str());
	names.push_back("guard_other");
	return names;
}

void CounterTotals::update(const std::vector<nft::CounterValue> &counters, const std::vector<std::string> &planned)
{
	std::unordered_map<std::string_view, const nft::CounterValue *> read;
	for (const nft::CounterValue &c : counters)
		read.emplace(c.name, &c);
	std::map<std::string, Total> now;
	for (const std::string &name : planned) {
		Total t;
		if (auto was = counters_.find(name); was != counters_.end())
			t = was->second;
		// Missing from the table: 0 since a reset (its last value goes into the base).
		auto got = read.find(name);
		uint64_t packets = got == read.end() ? 0 : got->second->packets;
		uint64_t bytes = got == read.end() ? 0 : got->second->bytes;
		if (packets < t.packets || bytes < t.bytes) {
			t.basePackets += t.packets;
			t.baseBytes += t.bytes;
		}
		t.packets = packets;
		t.bytes = bytes;
		now.emplace(name, t);
	}
	counters_ = std::move(now); // a counter the plan no longer has is gone from the rows
}

void CounterTotals::rebase()
{
	for (auto &[name, t] : counters_) {
		t.basePackets += t.packets;
		t.baseBytes += t.bytes;
		t.packets = t.bytes = 0;
	}
}

void CounterTotals::addRows(std::vector<service::StatRow> &rows) const
{
	for (const auto &[name, t] : counters_)
		addCounterRows(rows, name, t.basePackets + t.packets, t.baseBytes + t.bytes);
}

void NatFailures::update(const std::vector<nft::CounterValue> &news, const std::vector<nft::CounterValue> &lefts,
			 const std::vector<std::string> &planned)
{
	constexpr std::string_view kNew = "new_", kLeft = "left_";
	std::unordered_map<std::string_view, uint64_t> left, created;
	for (const nft::CounterValue &c : lefts)
		if (c.name.starts_with(kLeft))
			left.emplace(std::string_view(c.name).substr(kLeft.size()), c.packets);
	for (const nft::CounterValue &c : news)
		if (c.name.starts_with(kNew))
			created.emplace(std::string_view(c.name).substr(kNew.size()), c.packets);
	std::map<std::string, Source> now;
	for (const std::string &name : planned) {
		if (!name.starts_with(kNew))
			continue;
		std::string source = name.substr(kNew.size());
		Source s;
		if (auto was = sources_.find(source); was != sources_.end())
			s = was->second;
		auto n = created.find(source);
		if (n == created.end()) {
			// The main table is gone (deleted by hand, not yet or never
			// repaired): no new flow counted, the count starts again at 0.
			s.base += s.high;
			s.high = 0;
			s.lastNew = 0;
			s.seen = true;
			now.emplace(std::move(source), s);
			continue;
		}
		auto l = left.find(source);
		if (l == left.end()) {
			// No egress table (yet): nothing to compare with; what was known stays.
			if (s.seen)
				now.emplace(std::move(source), s);
			continue;
		}
		uint64_t packets = n->second;
		if (s.seen && packets < s.lastNew) {
			// The tables were made anew since the last read.
			s.base += s.high;
			s.high = 0;
		}
		s.seen = true;
		s.lastNew = packets;
		s.high = std::max(s.high, packets > l->second ? packets - l->second : 0);
		now.emplace(std::move(source), s);
	}
	sources_ = std::move(now); // a source the plan no longer has is gone from the rows
}

void NatFailures::rebase()
{
	for (auto &[name, s] : sources_) {
		s.base += s.high;
		s.high = 0;
		s.lastNew = 0;
	}
}

void NatFailures::addRows(std::vector<service::StatRow> &rows) const
{
	for (const auto &[name, s] : sources_)
		rows.push_back({ "source", name, "nat_failures", s.base + s.high });
}

std::vector<service::StatRow> conntrackUseRows(const plan::Plan &plan, const std::vector<conntrack::Entry> &entries)
{
	// Ports of each shared address handed to conntrack sources, as sorted
	// runs (lo, hi, source): a NAT port names its source by the run it is in.
	struct Run {
		uint16_t lo, hi;
		uint32_t source;
	};
	std::unordered_map<uint32_t, std::vector<Run>> runs; // address (host order) -> runs
	std::map<uint16_t, uint32_t> sourceOfZone;
	for (uint32_t i = 0; i < plan.sources.size(); ++i) {
		const plan::PlannedSource &s = plan.sources[i];
		if (s.mode != plan::NatMode::Conntrack)
			continue;
		sourceOfZone.emplace(s.zone, i);
		for (const plan::Share &share : s.shares)
			runs[plan.addresses[share.address].address.value].push_back({share.ports.lo, share.ports.hi, i});
	}
	for (auto &[address, list] : runs)
		std::sort(list.begin(), list.end(), [](const Run &x, const Run &y) { return x.lo < y.lo; });

	// The slices this server drains as previous owner, per address (index):
	// no source's share is there any more, a flow's zone names its source.
	std::unordered_map<uint32_t, uint32_t> addressIndex;
	for (uint32_t i = 0; i < plan.addresses.size(); ++i)
		addressIndex.emplace(plan.addresses[i].address.value, i);
	std::unordered_map<uint32_t, std::vector<uint32_t>> drained; // address (host order) -> slices
	for (const plan::PlannedAddress &a : plan.addresses)
		for (uint32_t slice = 0; slice < a.previous.size(); ++slice)
			if (a.drainedBy(slice, plan.serverIndex))
				drained[a.address.value].push_back(slice);

	std::map<uint16_t, uint64_t> perZone;
	// Distinct (address, port) in use: several flows to different peers may share a NAT port.
	std::unordered_map<uint32_t, std::set<uint16_t>> portsByAddress;
	// Distinct ports on drained slices, per (source, address index).
	std::map<std::pair<uint32_t, uint32_t>, std::set<uint16_t>> drainedUse;
	for (const conntrack::Entry &e : entries) {
		++perZone[e.zone];
		if (e.replyDstPort == 0)
			continue;
		portsByAddress[e.replyDst.value].insert(e.replyDstPort);
		auto slices = drained.find(e.replyDst.value);
		auto source = sourceOfZone.find(e.zone);
		if (slices == drained.end() || source == sourceOfZone.end())
			continue;
		const plan::PlannedAddress &a = plan.addresses[addressIndex.at(e.replyDst.value)];
		std::optional<uint32_t> slice = a.sliceOf(e.replyDstPort);
		if (slice && std::binary_search(slices->second.begin(), slices->second.end(), *slice))
			drainedUse[{source->second, addressIndex.at(e.replyDst.value)}].insert(e.replyDstPort);
	}

	std::vector<service::StatRow> rows;
	std::set<uint16_t> zones;
	for (const plan::PlannedSource &s : plan.sources)
		if (s.mode == plan::NatMode::Conntrack)
			zones.insert(s.zone);
	for (uint16_t zone : zones)
		rows.push_back({"zone", std::to_string(zone), "entries", perZone[zone]});
	for (const plan::PlannedSource &s : plan.sources)
		if (s.mode == plan::NatMode::Conntrack)
			rows.push_back({"source", s.name, "conntrack_entries", perZone[s.zone]});

	// Per source and address: its own ports there, and how many are in use.
	std::map<std::pair<uint32_t, uint32_t>, std::pair<uint64_t, uint64_t>> use; // (source, address index) -> (in use, ports)
	for (uint32_t i = 0; i < plan.sources.size(); ++i)
		for (const plan::Share &share : plan.sources[i].shares)
			use[{i, share.address}].second += share.ports.size();
	for (const auto &[address, ports] : portsByAddress) {
		auto list = runs.find(address);
		if (list == runs.end())
			continue;
		uint32_t index = addressIndex.at(address);
		for (uint16_t port : ports) {
			auto run = std::upper_bound(list->second.begin(), list->second.end(), port,
						    [](uint16_t p, const Run &r) { return p < r.lo; });
			if (run == list->second.begin())
				continue;
			--run;
			if (port <= run->hi)
				++use[{run->source, index}].first;
		}
	}
	// Its flows still on a slice this server drains count as in use (a
	// source that only drains on the address: a row with no ports of its own).
	for (const auto &[key, ports] : drainedUse)
		use[key].first += ports.size();
	for (const auto &[key, counts] : use) {
		std::string name = plan.sources[key.first].name + " " + plan.addresses[key.second].address.str();
		rows.push_back({"source_address", name, "ports_in_use", counts.first});
		rows.push_back({"source_address", name, "ports", counts.second});
	}

	for (const plan::PlannedAddress &a : plan.addresses) {
		auto found = portsByAddress.find(a.address.value);
		static const std::set<uint16_t> none;
		const std::set<uint16_t> &used = found == portsByAddress.end() ? none : found->second;
		// Its own slices and those it drains, ascending.
		std::vector<uint32_t> slices = a.mySlices;
		if (auto more = drained.find(a.address.value); more != drained.end()) {
			slices.insert(slices.end(), more->second.begin(), more->second.end());
			std::sort(slices.begin(), slices.end());
		}
		for (uint32_t slice : slices) {
			plan::PortRange range = a.slice(slice);
			auto from = used.lower_bound(range.lo);
			auto to = used.upper_bound(range.hi);
			uint64_t inUse = static_cast<uint64_t>(std::distance(from, to));
			std::string name = a.address.str() + "/" + std::to_string(slice);
			rows.push_back({"slice", name, "ports_in_use", inUse});
			rows.push_back({"slice", name, "percent_in_use", inUse * 100 / range.size()});
			rows.push_back({"slice", name, "ports", range.size()});
		}
	}
	return rows;
}

Result<std::vector<service::StatRow>> readConntrackUse(const plan::Plan &plan)
{
	// Only what the rows need: NAT entries keep their port, the others count per zone.
	std::vector<conntrack::Entry> entries;
	Result<size_t> walked = conntrack::walk([&](const conntrack::Entry &e) {
		conntrack::Entry kept = e;
		if (!e.srcNat)
			kept.replyDstPort = 0;
		entries.push_back(kept);
		return false;
	});
	if (!walked)
		return walked.error();
	return conntrackUseRows(plan, entries);
}

} // namespace portslice::daemon
