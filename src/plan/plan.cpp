// SPDX-License-Identifier: MIT
// The planner: slices, candidate addresses, disjoint port shares and zones of one server, purely.
#include "plan/plan.h"
#include "common/quote.h"

#include "common/hash.h"

#include <algorithm>
#include <map>
#include <set>
#include <tuple>
#include <unordered_map>

namespace portslice::plan {

using config::Diagnostic;

std::optional<uint32_t> PlannedAddress::sliceOf(uint16_t port) const
{
	if (port < portRange.lo || port > portRange.hi || sliceSize == 0)
		return std::nullopt;
	uint32_t index = (port - portRange.lo) / sliceSize;
	if (index >= sliceCount)
		return std::nullopt; // the unused partial slice at the end
	return index;
}

// Most addresses never drain: their list of previous owners is only made
// when one does (10,000 addresses of 31 slices: 1.2 MB otherwise).
void PlannedAddress::setPrevious(uint32_t index, int32_t server)
{
	if (server == kNoServer && previous.empty())
		return;
	if (previous.empty())
		previous.assign(sliceCount, kNoServer);
	previous[index] = server;
}

std::vector<PortRange> PlannedAddress::guardRuns(uint32_t self) const
{
	if (std::find(previous.begin(), previous.end(), static_cast<int32_t>(self)) == previous.end())
		return myRuns; // nothing drains here: the common case
	std::vector<PortRange> runs;
	for (uint32_t i = 0; i < sliceCount; i++) {
		if (owner[i] != static_cast<int32_t>(self) && !drainedBy(i, self))
			continue;
		PortRange r = slice(i);
		if (!runs.empty() && uint32_t{ runs.back().hi } + 1 == r.lo)
			runs.back().hi = r.hi;
		else
			runs.push_back(r);
	}
	return runs;
}

namespace {

bool wants(const config::Tags &want, const config::Tags &tags)
{
	return std::all_of(want.begin(), want.end(), [&](const auto &kv) {
		auto it = tags.find(kv.first);
		return it != tags.end() && it->second == kv.second;
	});
}

// Hands out ports of one address's runs (this server's slices, merged) in
// order: stateless blocks first, then the conntrack shares.
class PortCursor {
public:
	explicit PortCursor(const std::vector<PortRange> &runs) : runs_(runs)
	{
		if (!runs_.empty())
			next_ = runs_[0].lo;
	}

	// A contiguous block of `size` ports, skipping to the next run when the
	// current one has too little left (a block never straddles two runs).
	std::optional<PortRange> block(uint32_t size)
	{
		while (run_ < runs_.size()) {
			uint32_t left = uint32_t{ runs_[run_].hi } + 1 - next_;
			if (left >= size) {
				PortRange r{ static_cast<uint16_t>(next_), static_cast<uint16_t>(next_ + size - 1) };
				advance(size);
				return r;
			}
			nextRun();
		}
		return std::nullopt;
	}

	uint32_t remaining() const
	{
		if (run_ >= runs_.size())
			return 0;
		uint32_t total = uint32_t{ runs_[run_].hi } + 1 - next_;
		for (size_t i = run_ + 1; i < runs_.size(); i++)
			total += runs_[i].size();
		return total;
	}

	// `count` ports in order, split where runs end.
	std::vector<PortRange> take(uint32_t count)
	{
		std::vector<PortRange> out;
		while (count > 0 && run_ < runs_.size()) {
			uint32_t left = uint32_t{ runs_[run_].hi } + 1 - next_;
			uint32_t n = std::min(left, count);
			out.push_back({ static_cast<uint16_t>(next_), static_cast<uint16_t>(next_ + n - 1) });
			advance(n);
			count -= n;
		}
		return out;
	}

private:
	void advance(uint32_t n)
	{
		next_ += n;
		if (next_ > runs_[run_].hi)
			nextRun();
	}
	void nextRun()
	{
		run_++;
		if (run_ < runs_.size())
			next_ = runs_[run_].lo;
	}

	const std::vector<PortRange> &runs_;
	size_t run_ = 0;
	uint32_t next_ = 0;
};

// This server's slices of an address and their merged runs, from its owners.
void deriveSlices(PlannedAddress &p, uint32_t self)
{
	p.mySlices.clear();
	p.myRuns.clear();
	for (uint32_t i = 0; i < p.sliceCount; i++) {
		if (p.owner[i] != static_cast<int32_t>(self))
			continue;
		p.mySlices.push_back(i);
		PortRange r = p.slice(i);
		if (!p.myRuns.empty() && uint32_t{ p.myRuns.back().hi } + 1 == r.lo)
			p.myRuns.back().hi = r.hi;
		else
			p.myRuns.push_back(r);
	}
}

// Candidates are local addresses where this server owns a slice.
bool usable(const PlannedAddress &a) { return a.local && !a.mySlices.empty(); }

// A source that uses an address, and where the address stands in its candidates.
struct User {
	size_t source;
	uint64_t position;
};

// What one address gives its users, in the order makePlan hands it out.
struct Allocation {
	std::vector<std::pair<size_t, Assignment>> blocks; // stateless: one per inside address
	std::vector<std::pair<size_t, Share>> shares;      // conntrack
	// Conntrack sources that get no port here (the stateless blocks or the
	// other sources take every port), and why: they do not use the address.
	std::vector<std::pair<size_t, std::string>> starved;
};

// A stateless block that does not fit.
struct AllocationError {
	size_t source;
	std::string message;
};

// `total` ports split in proportion to `weights`, by cumulative rounding (the
// counts add up to exactly `total`). When that leaves someone without a port
// although there are enough for one each, everyone gets one and the rest is
// split by weight: a weight of 1 next to 1000 is small, not nothing. With
// fewer ports than sources, the heaviest get one each (ties: the first).
std::vector<uint64_t> splitByWeight(uint64_t total, const std::vector<uint32_t> &weights)
{
	if (total < weights.size()) {
		std::vector<size_t> order(weights.size());
		for (size_t i = 0; i < order.size(); i++)
			order[i] = i;
		std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) { return weights[x] > weights[y]; });
		std::vector<uint64_t> counts(weights.size(), 0);
		for (size_t i = 0; i < total; i++)
			counts[order[i]] = 1;
		return counts;
	}
	auto split = [&](uint64_t ports, uint64_t floor) {
		uint64_t sum = 0;
		for (uint32_t w : weights)
			sum += w;
		std::vector<uint64_t> counts;
		uint64_t handed = 0, weightSoFar = 0;
		for (uint32_t w : weights) {
			weightSoFar += w;
			uint64_t upto = ports * weightSoFar / sum;
			counts.push_back(floor + upto - handed);
			handed = upto;
		}
		return counts;
	};
	std::vector<uint64_t> counts = split(total, 0);
	const bool someoneEmpty = std::find(counts.begin(), counts.end(), 0u) != counts.end();
	if (someoneEmpty && total >= weights.size())
		counts = split(total - weights.size(), 1);
	return counts;
}

// One address's ports for its users (in file order): stateless blocks first,
// then the rest shared by weight between the conntrack sources.
Allocation allocate(const Plan &plan, uint32_t ai, const std::vector<User> &users,
		    std::vector<AllocationError> &errors)
{
	Allocation out;
	const PlannedAddress &a = plan.addresses[ai];
	PortCursor cursor(a.myRuns);
	std::vector<size_t> conntrackUsers;
	for (const User &user : users) {
		const size_t si = user.source;
		const PlannedSource &s = plan.sources[si];
		if (s.mode == NatMode::Conntrack) {
			conntrackUsers.push_back(si);
			continue;
		}
		// Candidate j takes inside addresses [j*n/c, (j+1)*n/c).
		const Prefix &prefix = *s.match.saddr;
		uint64_t n = prefix.size();
		uint64_t c = s.candidates.size();
		uint64_t j = user.position;
		uint64_t first = j * n / c;
		uint64_t last = (j + 1) * n / c; // exclusive
		for (uint64_t k = first; k < last; k++) {
			auto block = cursor.block(s.block);
			if (!block) {
				errors.push_back({ si,
						   "stateless blocks of source '" + s.name + "' do not fit in the share of server '" +
							   plan.server + "' on " + a.address.str() + ": " +
							   std::to_string(last - first) + " inside addresses need " +
							   std::to_string((last - first) * s.block) + " ports of " +
							   std::to_string(a.mySlices.size() * a.sliceSize) +
							   " (use a smaller block, a longer prefix or more slices)" });
				break;
			}
			Ipv4 inside{ prefix.address.value + static_cast<uint32_t>(k) };
			out.blocks.push_back({ si, { inside, inside, ai, *block } });
		}
	}
	if (conntrackUsers.empty())
		return out;
	std::vector<uint32_t> weights;
	for (size_t si : conntrackUsers)
		weights.push_back(plan.sources[si].weight);
	const uint64_t total = cursor.remaining();
	std::vector<uint64_t> counts = splitByWeight(total, weights);
	for (size_t u = 0; u < conntrackUsers.size(); u++) {
		const size_t si = conntrackUsers[u];
		if (counts[u] == 0) {
			uint64_t mine = 0;
			for (const PortRange &r : a.myRuns)
				mine += r.size();
			std::string why = total == 0 ? "the stateless blocks use all " + std::to_string(mine) +
								" ports of this server's share"
						     : "only " + std::to_string(total) + " of its " + std::to_string(mine) +
								" ports are left" + (out.blocks.empty() ? "" : " after the stateless blocks") +
								" for " + std::to_string(conntrackUsers.size()) +
								" conntrack sources, one each to the heaviest";
			out.starved.push_back({ si, "conntrack source '" + plan.sources[si].name + "' gets no port of " +
							    a.address.str() + " on server '" + plan.server + "': " + why +
							    "; it does not use this address" });
			continue;
		}
		for (const PortRange &r : cursor.take(static_cast<uint32_t>(counts[u])))
			out.shares.push_back({ si, { ai, r } });
	}
	return out;
}

// A conntrack source's inside addresses, spread evenly and deterministically
// over the addresses it has ports of (in their order, as the candidates),
// then each address's part over its shares there (one per run of this
// server's slices); a source without saddr spreads the whole IPv4 space,
// which is how its key is written in the table. An address with two runs
// gets no more inside addresses than one with one.
void spread(PlannedSource &s)
{
	s.assignments.clear();
	uint64_t base = s.match.saddr ? s.match.saddr->address.value : 0;
	uint64_t n = s.match.saddr ? s.match.saddr->size() : (uint64_t{ 1 } << 32);
	// The shares are ordered by address: each address's first share.
	std::vector<size_t> starts;
	for (size_t i = 0; i < s.shares.size(); i++)
		if (i == 0 || s.shares[i].address != s.shares[i - 1].address)
			starts.push_back(i);
	uint64_t c = starts.size();
	for (uint64_t j = 0; j < c; j++) {
		uint64_t from = j * n / c, count = (j + 1) * n / c - from;
		size_t first = starts[j], end = j + 1 < c ? starts[j + 1] : s.shares.size();
		uint64_t runs = end - first;
		for (uint64_t r = 0; r < runs; r++) {
			uint64_t lo = from + r * count / runs, hi = from + (r + 1) * count / runs;
			if (lo == hi)
				continue;
			const Share &share = s.shares[first + r];
			s.assignments.push_back({ Ipv4{ static_cast<uint32_t>(base + lo) },
						  Ipv4{ static_cast<uint32_t>(base + hi - 1) }, share.address, share.ports });
		}
	}
}

// Assigns zones: explicit ones first, then the free zone nearest above a hash
// of the name, so that adding a source does not renumber the others.
void assignZones(const config::Config &config, std::vector<PlannedSource> &sources,
		 std::vector<Diagnostic> &diagnostics)
{
	std::set<uint16_t> used;
	for (const config::Source &s : config.sources)
		if (s.zone)
			used.insert(*s.zone);
	size_t needed = 0;
	for (size_t i = 0; i < sources.size(); i++)
		if (!config.sources[i].zone && sources[i].mode == NatMode::Conntrack)
			needed++;
	if (used.size() + needed > 65535) {
		diagnostics.push_back({ Diagnostic::Severity::Error, config.sources.back().where,
					"more than 65535 conntrack sources: there are not enough conntrack zones" });
		return;
	}
	for (size_t i = 0; i < sources.size(); i++) {
		const config::Source &s = config.sources[i];
		if (s.zone) {
			sources[i].zone = *s.zone;
			continue;
		}
		if (sources[i].mode != NatMode::Conntrack)
			continue;
		uint32_t h = fnv1a32(s.name);
		// Zones 1-999 are left to operators who pick zones by hand.
		uint32_t zone = 1000 + h % 64000;
		while (used.count(static_cast<uint16_t>(zone)))
			zone = zone >= 65535 ? 1000 : zone + 1;
		used.insert(static_cast<uint16_t>(zone));
		sources[i].zone = static_cast<uint16_t>(zone);
	}
}

Diagnostic droppedWarning(const Plan &plan, const PlannedSource &s)
{
	return { Diagnostic::Severity::Warning, s.where,
		 "source '" + s.name + "' has no candidate address on server '" + plan.server +
			 "': its traffic is dropped and counted" };
}

// A conntrack source's assignments and return route follow from its shares.
void settle(PlannedSource &s)
{
	if (s.mode != NatMode::Conntrack)
		return;
	s.routeMark.reset();
	s.routeTable.reset();
	if (s.shares.empty()) {
		s.assignments.clear();
		return;
	}
	spread(s);
	if (s.match.iifname) {
		s.routeMark = kRouteMarkBase + s.zone;
		s.routeTable = kRouteTableBase + s.zone;
	}
}

} // namespace

PlanResult makePlan(const config::Config &config, std::string_view server)
{
	PlanResult result;
	auto &diagnostics = result.diagnostics;
	auto error = [&](const config::Location &w, std::string m) {
		diagnostics.push_back({ Diagnostic::Severity::Error, w, std::move(m) });
	};

	Plan plan;
	plan.server = server.empty() ? config.serverName : std::string(server);
	plan.uplink = config.uplink;
	plan.conntrack = config.conntrack;

	std::map<std::string, int32_t, std::less<>> serverIndex;
	for (const config::Server &s : config.servers) {
		serverIndex[s.name] = static_cast<int32_t>(plan.servers.size());
		plan.servers.push_back({ s.name, s.address, s.datacenter, s.mac });
	}
	auto self = serverIndex.find(plan.server);
	if (self == serverIndex.end()) {
		// Only a name from outside the file gets here (the loader checks
		// [server].name): the file, not a line of it, and the names there are.
		std::string known;
		for (const config::Server &s : config.servers)
			known += (known.empty() ? " (known: " : ", ") + s.name;
		error(config::Location{ config.file, 0, 0 },
		      "--server " + quoteInput(plan.server, '\'') + " is not one of [[servers]]" + (known.empty() ? known : known + ")"));
		return result;
	}
	plan.serverIndex = static_cast<uint32_t>(self->second);
	plan.datacenter = plan.servers[plan.serverIndex].datacenter;
	for (const config::Datacenter &d : config.datacenters)
		plan.datacenters.push_back({ d.name, d.gateway });

	plan.addresses.reserve(config.addresses.size());
	for (const config::Address &a : config.addresses) {
		PlannedAddress p;
		p.address = a.address;
		p.datacenter = a.datacenter;
		p.local = a.datacenter == plan.datacenter;
		p.tags = a.tags;
		p.portRange = a.portRange;
		p.sliceSize = a.sliceSize;
		p.sliceCount = a.sliceCount();
		p.owner.assign(p.sliceCount, kNoServer);
		for (const auto &[index, name] : a.owners) {
			auto it = serverIndex.find(name);
			if (index < p.sliceCount && it != serverIndex.end())
				p.owner[index] = it->second;
		}
		for (const auto &[index, name] : a.previous) {
			auto it = serverIndex.find(name);
			if (index < p.sliceCount && it != serverIndex.end() && p.owner[index] != it->second)
				p.setPrevious(index, it->second);
		}
		deriveSlices(p, plan.serverIndex);
		plan.addresses.push_back(std::move(p));
	}

	// Only addresses living in this data centre can be candidates (answers
	// to the others arrive elsewhere), and only those where this server owns
	// a slice. They are indexed by tag so that a source looks at the
	// addresses that carry one of its wanted tags, not at the whole fleet.
	// The local ones where this server owns nothing yet are wanted all the
	// same (Plan::wanters): a slice move may make them candidates.
	std::vector<uint32_t> eligible;
	struct TagHash {
		size_t operator()(const std::pair<std::string_view, std::string_view> &t) const
		{
			return std::hash<std::string_view>{}(t.first) * 31 + std::hash<std::string_view>{}(t.second);
		}
	};
	std::unordered_map<std::pair<std::string_view, std::string_view>, std::vector<uint32_t>, TagHash> byTag;
	for (uint32_t i = 0; i < plan.addresses.size(); i++) {
		const PlannedAddress &a = plan.addresses[i];
		if (!a.local)
			continue;
		eligible.push_back(i);
		for (const auto &[k, v] : a.tags)
			byTag[{ k, v }].push_back(i);
	}
	static const std::vector<uint32_t> kNone;
	plan.wanters.resize(plan.addresses.size());
	plan.sources.reserve(config.sources.size());
	for (const config::Source &s : config.sources) {
		PlannedSource p;
		p.name = s.name;
		p.match = s.match;
		p.want = s.want;
		p.mode = s.nat;
		p.block = s.block.value_or(0);
		p.weight = s.weight;
		p.where = s.where;
		// The shortest list of one wanted tag, then every wanted tag checked.
		const std::vector<uint32_t> *pool = &eligible;
		for (const auto &[k, v] : s.want) {
			auto it = byTag.find({ k, v });
			const std::vector<uint32_t> *list = it == byTag.end() ? &kNone : &it->second;
			if (list->size() < pool->size())
				pool = list;
		}
		const auto si = static_cast<uint32_t>(plan.sources.size());
		for (uint32_t i : *pool) {
			if (!wants(s.want, plan.addresses[i].tags))
				continue;
			plan.wanters[i].push_back(si);
			if (usable(plan.addresses[i]))
				p.candidates.push_back(i);
		}
		plan.sources.push_back(std::move(p));
	}
	plan.shape = portShape(plan);
	assignZones(config, plan.sources, diagnostics);

	// Per address, the sources that use it (in file order) and where the
	// address stands in each one's candidates.
	std::vector<std::vector<User>> users(plan.addresses.size());
	for (size_t si = 0; si < plan.sources.size(); si++) {
		const std::vector<uint32_t> &candidates = plan.sources[si].candidates;
		for (size_t j = 0; j < candidates.size(); j++)
			users[candidates[j]].push_back({ si, j });
	}
	std::vector<AllocationError> errors;
	std::vector<std::vector<std::string>> starved(plan.sources.size()); // by source, in address order
	for (uint32_t ai = 0; ai < plan.addresses.size(); ai++) {
		Allocation got = allocate(plan, ai, users[ai], errors);
		for (auto &[si, block] : got.blocks)
			plan.sources[si].assignments.push_back(block);
		for (auto &[si, share] : got.shares)
			plan.sources[si].shares.push_back(share);
		for (auto &[si, why] : got.starved)
			starved[si].push_back(std::move(why));
	}
	for (AllocationError &e : errors)
		error(config.sources[e.source].blockWhere, std::move(e.message));

	// Per source, the addresses it gets no port of, then whether it is
	// dropped (moveSlice keeps this order).
	for (size_t si = 0; si < plan.sources.size(); si++) {
		PlannedSource &s = plan.sources[si];
		for (std::string &why : starved[si])
			plan.warnings.push_back({ Diagnostic::Severity::Warning, s.where, std::move(why) });
		settle(s);
		if (s.dropped())
			plan.warnings.push_back(droppedWarning(plan, s));
	}
	for (const Diagnostic &w : plan.warnings)
		diagnostics.push_back(w);
	config::sortByPosition(diagnostics);
	if (!config::hasErrors(diagnostics))
		result.plan = std::move(plan);
	return result;
}

PortShape portShape(const Plan &plan)
{
	if (plan.shape)
		return *plan.shape;
	PortShape shape;
	uint32_t blocks = 0, slices = 0;
	for (const PlannedSource &s : plan.sources) {
		if (s.mode != NatMode::Stateless)
			continue;
		if (s.match.saddr)
			shape.statelessInside += s.match.saddr->size();
		blocks |= s.block;
		shape.largestBlock = std::max(shape.largestBlock, s.block);
	}
	for (const PlannedAddress &a : plan.addresses)
		slices |= uint32_t{ a.portRange.lo } | a.sliceSize;
	// The lowest bit set in any of them: the largest power of two dividing all.
	shape.blockGrain = blocks & (~blocks + 1);
	shape.sliceGrain = slices & (~slices + 1);
	return shape;
}

std::optional<SliceMove> moveSlice(Plan &plan, uint32_t address, uint32_t slice, int32_t owner, int32_t previous)
{
	PlannedAddress &a = plan.addresses.at(address);
	if (slice >= a.sliceCount)
		return std::nullopt;
	SliceMove move{ address, slice, a, {}, false, {}, {} };
	a.owner[slice] = owner;
	a.setPrevious(slice, previous != owner ? previous : kNoServer);
	deriveSlices(a, plan.serverIndex);
	const bool nowUsable = usable(a);
	move.candidatesChanged = nowUsable != usable(move.before);
	if (!move.candidatesChanged && (!nowUsable || a.myRuns == move.before.myRuns))
		return move; // no source's ports change

	// Sources whose candidates change: those that want the address gain it
	// (in address order, as makePlan lists candidates) or lose it. A stateless
	// one spreads its inside addresses over its candidates, so its ports on
	// every other candidate change too; a conntrack one only spreads over
	// its shares again.
	std::vector<uint32_t> reallocate{ address };
	if (move.candidatesChanged) {
		bool fullPlan = false;
		plan.forWanters(address, [&](uint32_t si) {
			const PlannedSource &s = plan.sources[si];
			bool has = std::binary_search(s.candidates.begin(), s.candidates.end(), address);
			if (fullPlan || (nowUsable ? has || !wants(s.want, a.tags) : !has))
				return;
			// A conntrack source matched by iifname that gets its first
			// address or loses its last: its return route appears or goes,
			// which is the full apply's to do.
			auto onlyHere = [&] {
				return std::all_of(s.shares.begin(), s.shares.end(),
						   [address](const Share &x) { return x.address == address; });
			};
			if (s.mode == NatMode::Conntrack && s.match.iifname &&
			    (nowUsable ? s.dropped() : !s.dropped() && onlyHere())) {
				fullPlan = true;
				return;
			}
			move.sources.push_back({ si, s.assignments, s.shares, s.candidates });
			if (s.mode == NatMode::Stateless)
				reallocate.insert(reallocate.end(), s.candidates.begin(), s.candidates.end());
		});
		if (fullPlan) {
			undoMove(plan, std::move(move));
			return std::nullopt;
		}
		move.warnings = plan.warnings;
		for (const SliceMove::Source &kept : move.sources) {
			std::vector<uint32_t> &c = plan.sources[kept.index].candidates;
			auto at = std::lower_bound(c.begin(), c.end(), address);
			if (nowUsable)
				c.insert(at, address);
			else
				c.erase(at);
			if (nowUsable && plan.sources[kept.index].mode == NatMode::Stateless)
				reallocate.insert(reallocate.end(), c.begin(), c.end());
		}
		std::sort(reallocate.begin(), reallocate.end());
		reallocate.erase(std::unique(reallocate.begin(), reallocate.end()), reallocate.end());
	}

	// The users of every address handed out again, in file order, with the
	// address's place in each one's candidates.
	std::vector<std::vector<User>> users(reallocate.size());
	for (size_t r = 0; r < reallocate.size(); r++)
		plan.forWanters(reallocate[r], [&](uint32_t si) {
			const std::vector<uint32_t> &c = plan.sources[si].candidates;
			auto at = std::lower_bound(c.begin(), c.end(), reallocate[r]);
			if (at != c.end() && *at == reallocate[r])
				users[r].push_back({ si, static_cast<uint64_t>(at - c.begin()) });
		});
	std::vector<Allocation> got(reallocate.size());
	std::vector<AllocationError> errors;
	for (size_t r = 0; r < reallocate.size() && errors.empty(); r++)
		got[r] = allocate(plan, reallocate[r], users[r], errors);
	if (!errors.empty()) {
		undoMove(plan, std::move(move));
		return std::nullopt;
	}

	// Every other source whose ports are handed out again, as it was.
	{
		std::vector<uint32_t> known;
		for (const SliceMove::Source &s : move.sources)
			known.push_back(s.index);
		std::sort(known.begin(), known.end());
		for (const std::vector<User> &list : users)
			for (const User &user : list) {
				auto si = static_cast<uint32_t>(user.source);
				auto at = std::lower_bound(known.begin(), known.end(), si);
				if (at != known.end() && *at == si)
					continue;
				known.insert(at, si);
				const PlannedSource &s = plan.sources[si];
				move.sources.push_back({ si, s.assignments, s.shares, std::nullopt });
			}
	}

	// A conntrack source that gets no port of an address handed out again,
	// before or after: its warnings change, and maybe whether it is
	// dropped. Rare (a full share); the full plan's to do.
	{
		bool starved = std::any_of(got.begin(), got.end(), [](const Allocation &g) { return !g.starved.empty(); });
		for (const SliceMove::Source &kept : move.sources) {
			const PlannedSource &s = plan.sources[kept.index];
			if (starved || s.mode != NatMode::Conntrack)
				continue;
			const std::vector<uint32_t> &was = kept.candidates ? *kept.candidates : s.candidates;
			for (uint32_t ai : reallocate)
				if (std::binary_search(was.begin(), was.end(), ai) &&
				    std::none_of(kept.shares.begin(), kept.shares.end(),
						 [ai](const Share &x) { return x.address == ai; }))
					starved = true;
		}
		if (starved) {
			undoMove(plan, std::move(move));
			return std::nullopt;
		}
	}

	// A lost address leaves its former users' ports.
	if (move.candidatesChanged && !nowUsable)
		for (const SliceMove::Source &kept : move.sources) {
			if (!kept.candidates)
				continue;
			PlannedSource &s = plan.sources[kept.index];
			std::erase_if(s.assignments, [address](const Assignment &x) { return x.address == address; });
			std::erase_if(s.shares, [address](const Share &x) { return x.address == address; });
		}
	// Each user's ports on an address are replaced where they stood (its
	// assignments and shares are ordered by address, as makePlan makes them).
	// allocate() hands out in the users' order, so each user's part is the
	// next run of its allocation.
	for (size_t r = 0; r < reallocate.size(); r++) {
		const uint32_t ai = reallocate[r];
		auto onAddress = [ai](const auto &x) { return x.address == ai; };
		auto after = [ai](const auto &x) { return x.address > ai; };
		size_t nextBlock = 0, nextShare = 0;
		for (const User &user : users[r]) {
			PlannedSource &s = plan.sources[user.source];
			if (s.mode == NatMode::Conntrack) {
				std::erase_if(s.shares, onAddress);
				auto at = std::find_if(s.shares.begin(), s.shares.end(), after);
				size_t from = nextShare;
				while (nextShare < got[r].shares.size() && got[r].shares[nextShare].first == user.source)
					nextShare++;
				std::vector<Share> mine;
				for (size_t i = from; i < nextShare; i++)
					mine.push_back(got[r].shares[i].second);
				s.shares.insert(at, mine.begin(), mine.end());
			} else {
				std::erase_if(s.assignments, onAddress);
				auto at = std::find_if(s.assignments.begin(), s.assignments.end(), after);
				size_t from = nextBlock;
				while (nextBlock < got[r].blocks.size() && got[r].blocks[nextBlock].first == user.source)
					nextBlock++;
				std::vector<Assignment> mine;
				for (size_t i = from; i < nextBlock; i++)
					mine.push_back(got[r].blocks[i].second);
				s.assignments.insert(at, mine.begin(), mine.end());
			}
		}
	}
	for (const SliceMove::Source &s : move.sources)
		settle(plan.sources[s.index]);
	if (move.candidatesChanged) {
		// Who is dropped changed, among the sources whose candidates did:
		// the warnings as makePlan lists them, in the file's order.
		auto before = [](const Diagnostic &x, const Diagnostic &y) {
			return std::tie(x.where.line, x.where.column) < std::tie(y.where.line, y.where.column);
		};
		for (const SliceMove::Source &kept : move.sources) {
			const PlannedSource &s = plan.sources[kept.index];
			if (!kept.candidates || kept.assignments.empty() == s.dropped())
				continue;
			// The source's warnings: the addresses it gets no port of,
			// then whether it is dropped.
			Diagnostic w = droppedWarning(plan, s);
			auto [from, to] = std::equal_range(plan.warnings.begin(), plan.warnings.end(), w, before);
			if (s.dropped()) {
				plan.warnings.insert(to, std::move(w));
			} else {
				auto at = std::find_if(from, to, [&](const Diagnostic &x) { return x.message == w.message; });
				if (at != to)
					plan.warnings.erase(at);
			}
		}
	}
	move.reallocated = std::move(reallocate);
	return move;
}

void undoMove(Plan &plan, SliceMove &&move)
{
	plan.addresses.at(move.address) = std::move(move.before);
	for (SliceMove::Source &s : move.sources) {
		PlannedSource &now = plan.sources[s.index];
		now.assignments = std::move(s.assignments);
		now.shares = std::move(s.shares);
		if (s.candidates)
			now.candidates = std::move(*s.candidates);
	}
	if (move.warnings)
		plan.warnings = std::move(*move.warnings);
}

} // namespace portslice::plan
