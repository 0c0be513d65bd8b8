// SPDX-License-Identifier: MIT
// The state behind org.portslice.Egress1: config, overlay, plan, generation; every change validated, applied, announced.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "common/quote.h"
#include "config/config.h"
#include "journal/journal.h"
#include "journal/replay.h"
#include "service/backend.h"
#include "service/state_store.h"
#include "plan/plan.h"

namespace portslice::service {

// The org.portslice.Error.* a failed call maps to.
enum class Fault { InvalidArgument, InvalidConfig, ApplyFailed, NotFound };

std::string_view faultName(Fault fault); // "org.portslice.Error.InvalidArgument", ...

// Caller input as a message quotes it (see common/quote.h).
using portslice::quoteInput;

struct Failure {
	Fault fault;
	std::string message; // for a person: what is wrong and what would fix it
};

// A value or the Failure a D-Bus caller receives.
template<class T>
class Answer {
public:
	Answer(T value) : v_(std::move(value)) {}
	Answer(Failure failure) : v_(std::move(failure)) {}
	bool ok() const { return v_.index() == 0; }
	const T &value() const { return std::get<0>(v_); }
	T &value() { return std::get<0>(v_); }
	const Failure &failure() const { return std::get<1>(v_); }

private:
	std::variant<T, Failure> v_;
};

// What the service tells the outside world; the D-Bus object and sd_notify implement it.
class Listener {
public:
	virtual ~Listener() = default;
	virtual void applied(uint64_t generation) = 0;
	virtual void applyFailed(const std::string &error) = 0;
	virtual void propertiesChanged(const std::vector<std::string> &names) = 0;
	virtual void log(const std::string &line) = 0;
	// A line with a syslog priority (3 error, 4 warning, 5 notice, 6 info)
	// and journal fields (GENERATION, PLAN_MS, ...); by default the plain line.
	virtual void logEvent(int priority, const std::string &line,
			      const std::vector<std::pair<std::string, std::string>> &fields)
	{
		(void)priority;
		(void)fields;
		log(line);
	}
	// Slices changed owner (or a drain ended), or a file was applied: once
	// the change is applied and its outcome journaled. Each has the journal's fields.
	virtual void ownershipChanged(const std::vector<journal::Change> &changes) { (void)changes; }
};

// One row of Owners(): a slice of the fleet, its owner, its draining previous owner and the drain's deadline.
struct OwnerRow {
	std::string address;
	uint32_t slice = 0;
	std::string owner;
	std::string previous;
	uint64_t until = 0; // Unix seconds; 0: no deadline
	auto operator<=>(const OwnerRow &) const = default;
};

// The daemon's answer for ADDRESS:PORT now: who owns it, and during a drain
// the previous owner too, with what it keeps (the flows it opened before the move).
struct LiveOwner {
	journal::PortAnswer now;
	std::optional<journal::PortAnswer> draining;
};

enum class State { Applied, Degraded, Failed };

// One move of SetSliceOwners: slice `slice` of `address` to `server`; its
// old owner drains for `drain` seconds (SetSliceOwnersDrains), else for the
// call's drain_seconds.
struct OwnerMove {
	std::string address;
	uint32_t slice = 0;
	std::string server;
	std::optional<uint32_t> drain;
};
std::string_view stateName(State state);

class Service {
public:
	struct Options {
		std::string configPath;
		std::string stateDir;
		// How long the old owner of a slice moved by SetSliceOwner stays its
		// `previous` (draining) owner; 0: no drain, the move is immediate.
		std::chrono::seconds drain{60};
		// Unix time in seconds (the drain deadlines are persisted); empty: the system clock.
		std::function<int64_t()> clock;
		// How long the ownership journal keeps records (--journal-days).
		int journalDays = 400;
	};

	Service(Options options, Backend &backend, Listener &listener);

	// Load the file, lay the persisted overlay over it, plan, apply. On
	// failure the service keeps running in state Failed so that `status`
	// shows why and a Reload can fix it.
	Answer<uint64_t> start();
	Answer<uint64_t> reload();
	Answer<uint64_t> setSliceOwner(std::string_view address, uint32_t slice, std::string_view server);
	// Many moves in one generation, all or nothing: a bad move rejects the
	// call and changes nothing. The old owner of each moved slice drains for
	// `drainSeconds` (0: no drain), or its move's own `drain`. One move goes the way of setSliceOwner
	// (an element delta of that slice); more are planned and applied as one
	// delta, one kernel transaction.
	// Each drain is at most kMaxDrainSeconds, as portsliced --drain-seconds.
	Answer<uint64_t> setSliceOwners(const std::vector<OwnerMove> &moves, uint32_t drainSeconds);
	static constexpr uint32_t kMaxDrainSeconds = 86400;

	Answer<std::string> planJson() const;
	Answer<std::string> dump() const;
	Answer<std::pair<std::string, std::string>> owner(std::string_view address, uint16_t port) const;
	Answer<std::vector<StatRow>> stats();
	// Every slice of the fleet: owner, previous owner, drain deadline.
	Answer<std::vector<OwnerRow>> owners() const;
	Answer<LiveOwner> ownerNow(std::string_view address, uint16_t port) const;
	// From the ownership journal: the answer at `when` (Unix seconds) and the
	// interval its server and inside held. A moment more than
	// kClockSkewSeconds ahead of the clock is NotFound; one less is now.
	// `withinSecond`: see journal::ownerAt.
	Answer<journal::AnswerAt> ownerAt(std::string_view address, uint16_t port, uint64_t when,
					  std::vector<journal::AnswerAt> *withinSecond = nullptr) const;
	static constexpr int64_t kClockSkewSeconds = 5;
	// The journal's changes from `sinceUs` on; damaged records fail the call, naming their offsets.
	Answer<std::vector<journal::Change>> history(int64_t sinceUs) const;
	// The live kernel against the plan: one line per difference, none when equal.
	Answer<std::vector<std::string>> audit();
	// The plan applied now, if any.
	const plan::Plan *appliedPlan() const { return plan_ ? &*plan_ : nullptr; }

	// The D-Bus caller of the change being made (its uid goes into the journal).
	void setCaller(std::optional<uint32_t> uid) { caller_ = uid; }
	// The why of SetSliceOwners' moves: "fleet" (portslice-fleetd's, the default) or "set-owner" (an operator's).
	void setMovesWhy(std::string why) { movesWhy_ = std::move(why); }
	const journal::Journal &ownershipJournal() const { return journal_; }

	// Compare the kernel with the plan and restore it if someone changed it.
	// `why` names what prompted the check (a netlink event, the timer).
	void repairDrift(std::string_view why);
	// --no-repair: compare the kernel with the plan and say in State and
	// LastError that it differs, changing nothing in the kernel; State is
	// applied again when it is equal (the operator put it back). `what`
	// names the change that prompted the check ("a commit by nft pid 42";
	// empty: the timer). `full`: compare every rule and element, as audit
	// does; otherwise only the table's comment, its generation and the XDP
	// program (cheap enough for each tick), which never finds it equal again.
	void leaveDrift(std::string_view what, bool full);
	// Restore the applied plan in full: `what` says what changed it.
	void restore(std::string_view what);
	// Restore it by `undo` (a delta that reverses what someone changed,
	// `how` says what it does); in full if that fails.
	void restoreBy(std::string_view what, std::string_view how, const std::function<Status()> &undo);
	// Drop the drains whose deadline has passed and apply the plan without
	// them (a new generation). Called by the daemon's periodic timer.
	void expireDrains();
	// Rotate the ownership journal when its segment began on an earlier UTC
	// day, deleting the segments older than --journal-days; the new segment
	// starts with a checkpoint of the applied state. Every change does it
	// before its records; the daemon's timer does it too, so an idle daemon
	// rotates and expires at the first tick of a new day.
	void rotateJournal();

	const std::string &server() const { return server_; }
	uint64_t generation() const { return generation_; }
	State state() const { return state_; }
	const std::string &lastError() const { return lastError_; }
	const plan::Plan *currentPlan() const { return plan_ ? &*plan_ : nullptr; }
	const Overlay &overlay() const { return overlay_; }
	const Drains &drains() const { return drains_; }

private:
	// Plan `config` and apply it incrementally; on success the new state
	// becomes current and is announced.
	// `changed`: the caller knows the plan differs (a slice changed owner).
	Answer<uint64_t> commit(config::Config config, Overlay overlay, Drains drains, bool persist, Fault planFault,
				bool changed = false);
	int64_t now() const;
	// One slice of a SetSliceOwners batch, as validated: config_->addresses[address].
	struct BatchMove {
		uint32_t address;
		uint32_t slice;
		std::string server;
		std::optional<std::string> previous;
	};
	// SetSliceOwners without planning the fleet again: plan::moveSlice per
	// move, one Backend::applyMoves. Nothing when a move needs a full plan.
	std::optional<Answer<uint64_t>> moveSlices(const std::vector<BatchMove> &moves, config::Config &next,
						   Overlay &overlay, Drains &drains);
	journal::SliceMap batchBefore(const std::vector<BatchMove> &moves) const;
	journal::SliceMap batchAfter(const std::vector<BatchMove> &moves, const Drains &drains) const;
	Answer<uint64_t> setSliceOwnerDraining(std::string_view address, uint32_t slice, std::string_view server,
					       std::chrono::seconds drain);
	// Why `move` cannot be made on the applied config, or nullopt.
	std::optional<Failure> checkMove(std::string_view addressText, uint32_t slice, std::string_view serverName,
					 uint32_t *addressIndex, Ipv4 *ip) const;
	void indexAddresses();
	int64_t nowUs() const;
	// Who holds what: a few slices in a map (those a move changes), or every
	// slice of a config with its drains' deadlines, walked a slice at a time
	// (a fleet has hundreds of thousands: never held as a map).
	struct Slices {
		const journal::SliceMap *map = nullptr;
		const config::Config *config = nullptr;
		std::map<journal::SliceKey, int64_t> untils;
		bool empty() const // no slice at all, as an empty map would be
		{
			if (map)
				return map->empty();
			return !config || std::none_of(config->addresses.begin(), config->addresses.end(),
						       [](const config::Address &a) { return a.sliceCount() > 0; });
		}
		journal::SliceWalk walk() const
		{
			return map ? journal::SliceWalk(*map) : journal::SliceWalk(*config, untils);
		}
	};
	static Slices slicesOf(const journal::SliceMap &map) { return Slices{&map, nullptr, {}}; }
	static Slices slicesOf(const config::Config &config, const Drains &drains);
	// Journal the change from the applied state to `after` as generation
	// `generation` (a file record when the file is new, else a record per
	// slice), flushed; on error nothing may be applied.
	Result<std::vector<journal::Change>> journalChange(const Slices &before, const Slices &after,
							   uint64_t generation, bool fileChanged);
	// The rotation of rotateJournal() at `timeUs`: the checkpoint records
	// that must start the new segment (none when it did not rotate).
	Result<std::vector<journal::Record>> journalRotation(int64_t timeUs);
	// The slices of `state` whose state differs from what the applied file says.
	journal::Ownership fileExceptions(const Slices &state) const;
	// After the kernel: the outcome of the journaled generation, then the announcements.
	void journalOutcome(uint64_t generation, const Status &applied, const std::vector<journal::Change> &changes);
	Result<std::shared_ptr<const config::Config>> keptFile(const std::string &hash) const;
	// SetSliceOwner without planning the fleet again: the plan follows the
	// one slice and the backend changes only what that touches. Nothing when
	// the move needs a full plan (see plan::moveSlice).
	// `previous`: the slice's previous owner after the move (a drain, or the file's).
	std::optional<Answer<uint64_t>> moveSlice(uint32_t address, uint32_t slice, const std::string &server,
						  Overlay overlay, Drains drains, const std::optional<std::string> &previous);
	Failure fail(Failure failure, bool degrade);
	// When generation_ is the largest there is: the failure of a change that
	// would need the next one (generations never wrap).
	std::optional<Failure> lastGeneration();
	// A call rejected before anything was tried (InvalidArgument, NotFound):
	// logged, answered, but neither LastError nor ApplyFailed, which are
	// about applying.
	Failure reject(Failure failure);
	void recovered(); // a repair worked, or the table is equal again: leave the degraded state drift caused

	uint64_t applyFailures_ = 0; // ApplyFailed signals since start
	// A drain's end that failed: tried again at drainRetryAt_ (Unix
	// seconds), the interval doubling from kDrainRetryFirst to kDrainRetryMax.
	static constexpr int64_t kDrainRetryFirst = 2;
	static constexpr int64_t kDrainRetryMax = 300;
	int64_t drainRetryAt_ = 0;
	int64_t drainBackoff_ = 0;
	uint64_t drainTries_ = 0;
	bool quiet_ = false; // fail() stays silent when the message is the last one (a retry)
	int64_t lastApplied_ = 0;    // Unix seconds of the last apply that changed the kernel (0: none yet)

	Options options_;
	Backend &backend_;
	Listener &listener_;
	StateStore store_;
	journal::Journal journal_;
	std::string fileHash_;        // SHA-256 of the applied file ("" before the first apply)
	std::string pendingHash_;     // of the file being applied by reload()
	std::string pendingText_;
	std::string why_ = "file";    // why the change being committed is made
	std::optional<uint32_t> caller_;
	std::string movesWhy_ = "fleet";
	mutable std::map<std::string, std::shared_ptr<const config::Config>> keptFiles_;

	std::optional<config::Config> config_; // the file as last loaded, the overlay laid over it
	std::unordered_map<uint32_t, uint32_t> addressIndex_; // config_'s shared addresses: their index in it
	// The file's own slice owners and previous owners by address (not a
	// second copy of the whole config): an overlay entry the file agrees
	// with retires, and an ended drain gives the slice the file's previous.
	struct FileSlices {
		decltype(config::Address::owners) owners;
		decltype(config::Address::previous) previous;
	};
	std::unordered_map<uint32_t, FileSlices> fileSlices_;
	std::optional<plan::Plan> plan_;       // what is applied
	Persisted persisted_;                  // what the state directory holds (what a failure writes back)
	std::optional<Persisted> resume_;      // during start(): what the state directory says the generation is
	bool started_ = false;                 // start() read the file: a reload reads it again
	Overlay overlay_;                      // persisted SetSliceOwner changes
	Drains drains_;                        // persisted old owners still draining, with their deadlines
	std::string server_;
	uint64_t generation_ = 0;
	// The kernel differs from the plan: the last drift repair failed, or
	// --no-repair left a change by hand. State is degraded because of it,
	// and a reload of the same file applies the plan again in full.
	bool drifted_ = false;
	State state_ = State::Failed;
	std::string lastError_ = "not started";
};

} // namespace portslice::service
