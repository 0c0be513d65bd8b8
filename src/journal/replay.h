// SPDX-License-Identifier: MIT
// The journal read back: who owned what when, the history lines, and the abuse-desk answer for a past moment.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config/config.h"
#include "journal/journal.h"

namespace portslice::journal {

using SliceMap = std::map<SliceKey, SliceState>;

// Every slice of every address of `config`: its owner and previous owner
// (`until` from `drains` where one is given, else 0).
SliceMap ownershipOf(const config::Config &config);
// The slices of `state` whose state differs from what `file` says.
Ownership exceptionsAgainst(const config::Config &file, const SliceMap &state);
// `file` with its owners and previous owners replaced by `state`.
config::Config withOwnership(const config::Config &file, const SliceMap &state);

// One line of `portslicectl history`.
struct Change {
	int64_t timeUs = 0;
	uint64_t generation = 0;
	std::optional<SliceKey> key; // none: the line of a newly applied file
	std::string old;             // who held the slice before (for a drain's end: the draining owner)
	std::string now;             // who holds it after
	std::string why;             // file, set-owner, drain end, fleet
	std::optional<uint32_t> uid;
	std::string hash; // the file's line: its SHA-256
	bool drainEnd = false; // the owner stays; `old` stopped draining (no SliceOwnerChanged)
	std::string damaged; // a damaged record in its place (why "damaged", time of the record before it): Damaged::str()
	bool operator==(const Change &) const = default;
};

// The slice changes between two states, in key order (why and time left to the caller).
std::vector<Change> diff(const SliceMap &before, const SliceMap &after);

// The slices of a SliceMap, or those ownershipOf(config) would list with
// `until` from `untils`, one at a time in key order: a walk over a fleet's
// hundreds of thousands of slices that never holds them all.
class SliceWalk {
public:
	explicit SliceWalk(const SliceMap &map);
	SliceWalk(const config::Config &config, const std::map<SliceKey, int64_t> &untils);
	bool done() const;
	SliceKey key() const;
	SliceState state() const;
	void next();

private:
	void settle(); // past addresses without slices
	const SliceMap *map_ = nullptr;
	SliceMap::const_iterator it_;
	const config::Config *config_ = nullptr;
	const std::map<SliceKey, int64_t> *untils_ = nullptr;
	std::vector<uint32_t> order_; // indices of config_->addresses, by address
	size_t at_ = 0;
	uint32_t slice_ = 0;
};

// diff() of two walks; with `afterStates`, the state after of each change too.
std::vector<Change> diff(SliceWalk before, SliceWalk after, std::vector<SliceState> *afterStates = nullptr);

// A kept file by hash; errors name the file.
using FileLoader = std::function<Result<std::shared_ptr<const config::Config>>(const std::string &hash)>;

// One applied step: the state after it, from `timeUs` on.
struct Step {
	int64_t timeUs = 0;
	uint64_t generation = 0;
	std::string hash;            // the file in force
	std::vector<Change> changes; // its history lines
	std::vector<Record> records; // its change records (File, Move)
};

// Walk the applied steps in order (changes whose outcome is not `applied`
// never took effect and are left out); `visit` sees each step and the state
// after it. `passed` is told of each damaged record in its place, with the
// time of the record before it. A damaged record that may have changed who
// owns what (inside a change: its outcome or one of its moves; or just
// before an applied outcome or change of moves it may belong to) makes the
// state uncertain from that change's time: `damaged` is told, and the steps
// are visited with `uncertain` set until the next applied file record,
// which holds the whole state again. One between changes that is followed
// by none applied, or by a file record (a line torn by a crash, then the
// restart's file), changes nothing. Fails on a missing kept file.
Status replay(const Scan &scan, const FileLoader &load,
	      const std::function<void(const Step &, const SliceMap &, const config::Config &file,
				       const Damaged *uncertain)> &visit,
	      const std::function<void(const Damaged &, int64_t sinceUs)> &damaged = {},
	      const std::function<void(const Damaged &, int64_t previousUs)> &passed = {});

// The history lines since `sinceUs`, each damaged record a line of its own (Change::damaged) in its place.
Result<std::vector<Change>> history(const Scan &scan, const FileLoader &load, int64_t sinceUs);

// What ADDRESS:PORT meant under one state.
struct PortAnswer {
	bool shared = false;            // the address was a shared address
	std::optional<uint32_t> slice;  // nullopt: outside the usable slices
	std::string server;             // "" : no owner
	std::string source;             // "" : no source used the port
	std::string mode;               // "conntrack" or "stateless"
	std::string inside;             // stateless: the address; conntrack: "FIRST-LAST" (or one address)
	std::string insidePrefix;       // conntrack: the source's inside prefix, if it matches on saddr
	std::string previous;           // the draining previous owner, if any
	int64_t drainUntil = 0;
	bool operator==(const PortAnswer &) const = default;
};

// Plan `config` as the owner of the port (findOwner) and name the answer.
PortAnswer answerFor(const config::Config &config, Ipv4 address, uint16_t port);

struct AnswerAt {
	PortAnswer answer;     // at the moment asked, the draining owner included
	int64_t from = 0;      // Unix seconds: the same server and inside from here
	int64_t until = 0;     // ... to here, exclusive; 0: still holds
	uint64_t generation = 0; // the change that made `answer` what it is at the moment
	// withinSecond's answers: the interval to the microsecond (untilUs 0: still
	// holds), and, where a damaged record leaves it unknown, the record (Damaged::str()).
	int64_t fromUs = 0, untilUs = 0;
	std::string unknown;
	// The draining previous owner at that moment (server "": none), as the
	// daemon's Owner answer names it now: what it keeps is what it had as
	// owner, so its source and inside address are its plan as owner. The
	// drain held from drainFrom until drainTo (Unix seconds; drainTo 0: it
	// still holds), as the journal applied it (its end may follow the deadline).
	PortAnswer draining;
	int64_t drainFrom = 0, drainTo = 0;
};

// The answer at `when` (Unix seconds: the state after every change made at or
// before that second) and the interval its server and inside held, whatever
// else changed within it (a drain that ended, say).
// nullopt: `when` is before the journal; `begins` is then set to the first
// second it answers for (left alone when it has no applied file at all).
// Fails when a damaged record leaves the answer at `when` uncertain (the
// error names the record and the interval it leaves unknown).
// `withinSecond`: when the server or inside address changed within that
// second, every answer that held during part of it, in order, each with its
// interval to the microsecond (the journal's precision); empty otherwise.
Result<std::optional<AnswerAt>> ownerAt(const Scan &scan, const FileLoader &load, Ipv4 address, uint16_t port,
					int64_t when, std::optional<int64_t> *begins = nullptr,
					std::vector<AnswerAt> *withinSecond = nullptr);

} // namespace portslice::journal
