// SPDX-License-Identifier: MIT
// Replaying the journal: kept files plus the records after them give the state at any moment.
#include "journal/replay.h"

#include <algorithm>
#include <utility>

#include "plan/plan.h"

namespace portslice::journal {

namespace {

int64_t floorSeconds(int64_t timeUs)
{
	return timeUs >= 0 ? timeUs / 1000000 : -((-timeUs + 999999) / 1000000);
}

} // namespace

SliceMap ownershipOf(const config::Config &config)
{
	SliceMap map;
	for (const config::Address &a : config.addresses) {
		for (uint32_t s = 0; s < a.sliceCount(); s++) {
			SliceState state;
			if (auto it = a.owners.find(s); it != a.owners.end())
				state.owner = it->second;
			if (auto it = a.previous.find(s); it != a.previous.end())
				state.previous = it->second;
			map.emplace_hint(map.end(), SliceKey{a.address.value, s}, std::move(state));
		}
	}
	return map;
}

Ownership exceptionsAgainst(const config::Config &file, const SliceMap &state)
{
	SliceMap base = ownershipOf(file);
	Ownership out;
	for (const auto &[key, s] : state) {
		auto it = base.find(key);
		if (it == base.end() || !(it->second == s))
			out.emplace_back(key, s);
	}
	return out;
}

config::Config withOwnership(const config::Config &file, const SliceMap &state)
{
	config::Config config = file;
	for (config::Address &a : config.addresses) {
		for (uint32_t s = 0; s < a.sliceCount(); s++) {
			auto it = state.find(SliceKey{a.address.value, s});
			if (it == state.end())
				continue;
			if (it->second.owner.empty())
				a.owners.erase(s);
			else
				a.owners[s] = it->second.owner;
			if (it->second.previous.empty())
				a.previous.erase(s);
			else
				a.previous[s] = it->second.previous;
		}
	}
	return config;
}

SliceWalk::SliceWalk(const SliceMap &map) : map_(&map), it_(map.begin()) {}

SliceWalk::SliceWalk(const config::Config &config, const std::map<SliceKey, int64_t> &untils)
	: config_(&config), untils_(&untils)
{
	order_.resize(config.addresses.size());
	for (uint32_t i = 0; i < order_.size(); i++)
		order_[i] = i;
	std::sort(order_.begin(), order_.end(), [&](uint32_t x, uint32_t y) {
		return config.addresses[x].address.value < config.addresses[y].address.value;
	});
	settle();
}

void SliceWalk::settle()
{
	while (at_ < order_.size() && slice_ >= config_->addresses[order_[at_]].sliceCount()) {
		at_++;
		slice_ = 0;
	}
}

bool SliceWalk::done() const
{
	return map_ ? it_ == map_->end() : at_ >= order_.size();
}

SliceKey SliceWalk::key() const
{
	if (map_)
		return it_->first;
	return SliceKey{config_->addresses[order_[at_]].address.value, slice_};
}

SliceState SliceWalk::state() const
{
	if (map_)
		return it_->second;
	const config::Address &a = config_->addresses[order_[at_]];
	SliceState state;
	if (auto it = a.owners.find(slice_); it != a.owners.end())
		state.owner = it->second;
	if (auto it = a.previous.find(slice_); it != a.previous.end())
		state.previous = it->second;
	if (auto it = untils_->find(SliceKey{a.address.value, slice_}); it != untils_->end())
		state.until = it->second;
	return state;
}

void SliceWalk::next()
{
	if (map_) {
		++it_;
		return;
	}
	slice_++;
	settle();
}

namespace {

void addChange(std::vector<Change> &out, const SliceKey &key, const SliceState &a, const SliceState &b)
{
	if (a == b)
		return;
	Change c;
	c.key = key;
	if (a.owner == b.owner && !a.previous.empty() && b.previous.empty()) {
		c.old = a.previous; // a drain ended: the draining owner lets go
		c.now = b.owner;
		c.drainEnd = true;
	} else {
		c.old = a.owner;
		c.now = b.owner;
	}
	out.push_back(std::move(c));
}

} // namespace

std::vector<Change> diff(SliceWalk i, SliceWalk j, std::vector<SliceState> *afterStates)
{
	std::vector<Change> out;
	static const SliceState none;
	auto add = [&](const SliceKey &key, const SliceState &a, const SliceState &b) {
		size_t had = out.size();
		addChange(out, key, a, b);
		if (afterStates && out.size() > had)
			afterStates->push_back(b);
	};
	while (!i.done() || !j.done()) {
		if (j.done() || (!i.done() && i.key() < j.key())) {
			add(i.key(), i.state(), none);
			i.next();
		} else if (i.done() || j.key() < i.key()) {
			add(j.key(), none, j.state());
			j.next();
		} else {
			add(i.key(), i.state(), j.state());
			i.next();
			j.next();
		}
	}
	return out;
}

std::vector<Change> diff(const SliceMap &before, const SliceMap &after)
{
	return diff(SliceWalk(before), SliceWalk(after));
}

Status replay(const Scan &scan, const FileLoader &load,
	      const std::function<void(const Step &, const SliceMap &, const config::Config &file,
				       const Damaged *uncertain)> &visit,
	      const std::function<void(const Damaged &, int64_t sinceUs)> &damaged,
	      const std::function<void(const Damaged &, int64_t previousUs)> &passed)
{
	SliceMap state;
	std::shared_ptr<const config::Config> file;
	std::string hash;
	std::vector<const Record *> pending;
	const Damaged *uncertain = nullptr; // the damage the state may be wrong by, until a file record
	const Damaged *lurking = nullptr;   // a damage that matters only if the change after it applies
	size_t nextDamage = 0;
	auto becomeUncertain = [&](const Damaged &d, int64_t since) {
		uncertain = &d;
		if (damaged)
			damaged(d, since);
	};
	auto passDamage = [&](size_t index) {
		for (; nextDamage < scan.damaged.size() && scan.damaged[nextDamage].before <= index; nextDamage++) {
			const Damaged &d = scan.damaged[nextDamage];
			if (passed)
				passed(d, index > 0 ? scan.records[index - 1].timeUs : 0);
			// Within a change (its outcome, or one of its records): what it did is
			// not known from its time on. Between changes: a change record whose
			// outcome follows, or nothing that counts (a crash while writing).
			if (!pending.empty())
				becomeUncertain(d, pending.front()->timeUs);
			else
				lurking = &d;
		}
	};
	for (size_t index = 0; index < scan.records.size(); index++) {
		passDamage(index);
		const Record &r = scan.records[index];
		if (r.kind != Record::Kind::Outcome) {
			// The records of one attempt share generation and time (one append);
			// an earlier attempt that never got an outcome never took effect.
			std::erase_if(pending, [&](const Record *p) {
				return p->generation != r.generation || p->timeUs != r.timeUs;
			});
			pending.push_back(&r);
			continue;
		}
		std::vector<const Record *> group;
		for (const Record *p : pending)
			if (p->generation == r.generation)
				group.push_back(p);
		pending.clear();
		const Damaged *lurked = std::exchange(lurking, nullptr);
		if (!r.applied)
			continue;
		if (group.empty()) {
			// The change this outcome applied may be the damaged record just before it.
			if (lurked && lurked->before == index)
				becomeUncertain(*lurked, index > 0 ? scan.records[index - 1].timeUs : r.timeUs);
			continue;
		}
		bool whole = std::any_of(group.begin(), group.end(),
					 [](const Record *p) { return p->kind == Record::Kind::File; });
		// A damaged first record of a change of moves: the moves applied are not all known.
		if (lurked && !whole && lurked->before == static_cast<size_t>(group.front() - scan.records.data()))
			becomeUncertain(*lurked, group.front()->timeUs);
		Step step;
		step.timeUs = group.front()->timeUs;
		step.generation = r.generation;
		for (const Record *p : group) {
			step.records.push_back(*p);
			if (p->kind == Record::Kind::File) {
				Result<std::shared_ptr<const config::Config>> loaded = load(p->hash);
				if (!loaded)
					return loaded.error();
				bool first = !file;
				file = *loaded;
				hash = p->hash;
				SliceMap next = ownershipOf(*file);
				for (const auto &[key, s] : p->exceptions)
					next[key] = s;
				// The whole state again: what a damage before it left uncertain is known.
				uncertain = nullptr;
				Change line;
				line.timeUs = p->timeUs;
				line.generation = p->generation;
				line.why = p->why == "checkpoint" ? "file" : p->why;
				line.uid = p->uid;
				line.hash = p->hash;
				if (p->why != "checkpoint")
					step.changes.push_back(line);
				if (!first) {
					for (Change c : diff(state, next)) {
						c.timeUs = p->timeUs;
						c.generation = p->generation;
						c.why = line.why;
						c.uid = p->uid;
						step.changes.push_back(std::move(c));
					}
				}
				state = std::move(next);
			} else if (file) {
				Change c;
				c.timeUs = p->timeUs;
				c.generation = p->generation;
				c.key = p->key;
				c.old = p->old;
				c.now = p->after.owner;
				c.why = p->why;
				c.uid = p->uid;
				auto was = state.find(p->key);
				c.drainEnd = was != state.end() && was->second.owner == p->after.owner &&
					     !was->second.previous.empty() && p->after.previous.empty();
				step.changes.push_back(std::move(c));
				state[p->key] = p->after;
			}
		}
		if (!file)
			continue; // moves before any file (a rotated-away start): nothing to lay them on
		step.hash = hash;
		visit(step, state, *file, uncertain);
	}
	passDamage(scan.records.size());
	return {};
}

Result<std::vector<Change>> history(const Scan &scan, const FileLoader &load, int64_t sinceUs)
{
	std::vector<Change> lines;
	Status walked = replay(
		scan, load,
		[&](const Step &step, const SliceMap &, const config::Config &, const Damaged *) {
			for (const Change &c : step.changes)
				if (c.timeUs >= sinceUs)
					lines.push_back(c);
		},
		{},
		[&](const Damaged &d, int64_t previous) {
			if (previous >= sinceUs)
				lines.push_back(Change{.timeUs = previous, .why = "damaged", .damaged = d.str()});
		});
	if (!walked)
		return walked.error();
	return lines;
}

PortAnswer answerFor(const config::Config &config, Ipv4 address, uint16_t port)
{
	PortAnswer out;
	std::optional<plan::OwnerAnswer> answer = plan::findOwner(config, address, port);
	if (!answer)
		return out;
	out.shared = true;
	out.slice = answer->slice;
	out.server = answer->server;
	out.source = answer->source;
	if (answer->inside) {
		out.inside = answer->inside->str();
		if (answer->insideLast) {
			out.mode = "conntrack";
			if (*answer->insideLast != *answer->inside)
				out.inside += "-" + answer->insideLast->str();
		} else {
			out.mode = "stateless";
		}
	}
	for (const config::Source &s : config.sources)
		if (s.name == out.source && out.mode == "conntrack" && s.match.saddr)
			out.insidePrefix = s.match.saddr->str();
	if (answer->slice) {
		const config::Address *a = config.findAddress(address);
		if (auto it = a->previous.find(*answer->slice); it != a->previous.end())
			out.previous = it->second;
	}
	return out;
}

Result<std::optional<AnswerAt>> ownerAt(const Scan &scan, const FileLoader &load, Ipv4 address, uint16_t port,
					int64_t when, std::optional<int64_t> *begins, std::vector<AnswerAt> *withinSecond)
{
	struct Segment {
		int64_t from;
		uint64_t generation;
		PortAnswer answer;
		const Damaged *uncertain = nullptr; // the answer is not known from `from` on
		PortAnswer draining; // the previous owner's answer during a drain
		bool same(const Segment &o) const
		{
			return answer == o.answer && draining == o.draining && uncertain == o.uncertain;
		}
	};
	std::vector<Segment> segments;
	auto visit = [&](const Step &step, const SliceMap &state, const config::Config &file, const Damaged *uncertain) {
		if (uncertain)
			return; // within the interval the damage left unknown (its segment is in place)
		// Only a change that can touch this port's answer is planned again:
		// a new file, a move of its slice, or one to or from its server
		// (the server's plan, so its sources' addresses, may change).
		bool relevant = segments.empty() || segments.back().uncertain;
		const PortAnswer *last = segments.empty() || segments.back().uncertain ? nullptr : &segments.back().answer;
		for (const Record &r : step.records) {
			if (relevant)
				break;
			if (r.kind == Record::Kind::File) {
				relevant = true;
			} else if (last) {
				auto involved = [&](const std::string &name) {
					return !name.empty() && (name == last->server || name == last->previous);
				};
				relevant = (r.key.address == address.value && last->slice && r.key.slice == *last->slice) ||
					   involved(r.old) || involved(r.after.owner) || involved(r.after.previous);
			}
		}
		if (!relevant)
			return;
		config::Config config = withOwnership(file, state);
		PortAnswer answer = answerFor(config, address, port);
		if (answer.slice) {
			auto it = state.find(SliceKey{address.value, *answer.slice});
			if (it != state.end())
				answer.drainUntil = it->second.until;
		}
		// During a drain the previous owner still sends from the port for
		// the flows it opened as owner: its answer is its plan as owner.
		PortAnswer draining;
		if (answer.slice && !answer.previous.empty()) {
			config::Address *a = config.findAddress(address);
			a->owners[*answer.slice] = answer.previous;
			a->previous.erase(*answer.slice);
			draining = answerFor(config, address, port);
		}
		if (last && *last == answer && segments.back().draining == draining)
			return;
		segments.push_back({step.timeUs, step.generation, std::move(answer), nullptr, std::move(draining)});
	};
	auto damaged = [&](const Damaged &d, int64_t since) { segments.push_back({since, 0, PortAnswer{}, &d}); };
	Status walked = replay(scan, load, visit, damaged);
	if (!walked)
		return walked.error();
	// Seconds: of several changes within one second, the last is the answer for that second.
	std::vector<Segment> bySecond;
	for (const Segment &s : segments) {
		if (!bySecond.empty() && floorSeconds(bySecond.back().from) == floorSeconds(s.from))
			bySecond.pop_back();
		if (!bySecond.empty() && bySecond.back().same(s))
			continue;
		bySecond.push_back(s);
	}
	// What the abuse desk is told (OwnerAt's server and inside): the interval
	// is the whole run of seconds with that answer around the moment, not
	// cut where only a detail changed (a drain's end, the draining owner).
	auto sameAnswer = [](const Segment &a, const Segment &b) {
		return !a.uncertain && !b.uncertain && a.answer.shared == b.answer.shared &&
		       a.answer.slice.has_value() == b.answer.slice.has_value() && a.answer.server == b.answer.server &&
		       a.answer.inside == b.answer.inside;
	};
	// The interval of the drain at segment `i` of `list` (Unix microseconds;
	// until 0: it still holds): the run of segments with the same draining
	// owner and inside address on the same slice.
	auto drainOf = [](const std::vector<Segment> &list, size_t i) {
		auto sameDrain = [](const Segment &a, const Segment &b) {
			return !a.uncertain && !b.uncertain && !a.draining.server.empty() &&
			       a.draining.server == b.draining.server && a.draining.inside == b.draining.inside &&
			       a.answer.slice == b.answer.slice;
		};
		size_t first = i, next = i + 1;
		while (first > 0 && sameDrain(list[first - 1], list[i]))
			first--;
		while (next < list.size() && sameDrain(list[next], list[i]))
			next++;
		return std::pair<int64_t, int64_t>{list[first].from, next < list.size() ? list[next].from : 0};
	};
	auto putDrain = [&](AnswerAt &at, const std::vector<Segment> &list, size_t i) {
		at.draining = list[i].draining;
		if (at.draining.server.empty())
			return;
		auto [fromUs, untilUs] = drainOf(list, i);
		at.drainFrom = floorSeconds(fromUs);
		at.drainTo = untilUs ? floorSeconds(untilUs) : 0;
	};
	// Within the second asked, to the microsecond: each answer that held
	// during part of it, when more than one did (the caller may know the
	// moment better than the second).
	if (withinSecond) {
		withinSecond->clear();
		int64_t lo = when * 1000000, hi = lo + 1000000;
		for (size_t i = 0; i < segments.size();) {
			size_t next = i + 1;
			while (next < segments.size() && sameAnswer(segments[next], segments[i]))
				next++;
			int64_t fromUs = segments[i].from;
			int64_t untilUs = next < segments.size() ? segments[next].from : 0;
			if (fromUs < hi && (untilUs == 0 || untilUs > lo)) {
				size_t last = i; // the state the answer had at its end within the second
				while (last + 1 < next && segments[last + 1].from < hi)
					last++;
				AnswerAt at;
				at.answer = segments[last].answer;
				at.fromUs = fromUs;
				at.untilUs = untilUs;
				at.from = floorSeconds(fromUs);
				at.until = untilUs ? floorSeconds(untilUs) : 0;
				at.generation = segments[last].generation;
				if (segments[i].uncertain)
					at.unknown = segments[i].uncertain->str();
				putDrain(at, segments, last);
				withinSecond->push_back(std::move(at));
			}
			i = next;
		}
		if (withinSecond->size() < 2)
			withinSecond->clear();
	}
	for (size_t i = bySecond.size(); i-- > 0;) {
		if (floorSeconds(bySecond[i].from) > when)
			continue;
		if (bySecond[i].uncertain) {
			size_t next = i + 1;
			return Error(bySecond[i].uncertain->str() + ": who held the port from " +
				     formatSeconds(floorSeconds(bySecond[i].from)) + " until " +
				     (next < bySecond.size() ? formatSeconds(floorSeconds(bySecond[next].from))
							     : std::string("now")) +
				     " is not known (the next file record holds the whole state again)");
		}
		size_t first = i, next = i + 1;
		while (first > 0 && sameAnswer(bySecond[first - 1], bySecond[i]))
			first--;
		while (next < bySecond.size() && sameAnswer(bySecond[next], bySecond[i]))
			next++;
		AnswerAt at;
		at.answer = bySecond[i].answer;
		at.from = floorSeconds(bySecond[first].from);
		at.until = next < bySecond.size() ? floorSeconds(bySecond[next].from) : 0;
		at.generation = bySecond[i].generation;
		putDrain(at, bySecond, i);
		return std::optional<AnswerAt>(at);
	}
	if (begins && !bySecond.empty())
		*begins = floorSeconds(bySecond.front().from);
	return std::optional<AnswerAt>();
}

} // namespace portslice::journal
