// SPDX-License-Identifier: MIT
// The service state machine: load, overlay, validate, plan, persist, apply, announce; nothing changes on failure.
#include "service/service.h"

#include "common/version.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include <sys/stat.h>

#include "journal/sha256.h"

namespace portslice::service {

std::string_view faultName(Fault fault)
{
	switch (fault) {
	case Fault::InvalidArgument:
		return "org.portslice.Error.InvalidArgument";
	case Fault::InvalidConfig:
		return "org.portslice.Error.InvalidConfig";
	case Fault::ApplyFailed:
		return "org.portslice.Error.ApplyFailed";
	case Fault::NotFound:
		return "org.portslice.Error.NotFound";
	}
	return "org.portslice.Error.ApplyFailed";
}

std::string_view stateName(State state)
{
	switch (state) {
	case State::Applied:
		return "applied";
	case State::Degraded:
		return "degraded";
	case State::Failed:
		return "failed";
	}
	return "failed";
}

namespace {

// Errors only, one per line, "FILE:LINE:COL: error: ...".
std::string errorLines(const std::vector<config::Diagnostic> &diagnostics)
{
	std::string text;
	for (const config::Diagnostic &d : diagnostics) {
		if (d.severity != config::Diagnostic::Severity::Error)
			continue;
		if (!text.empty())
			text += "\n";
		text += d.str();
	}
	return text.empty() ? "invalid configuration" : text;
}

std::string joinNames(const std::vector<std::string> &names)
{
	std::string text;
	for (const std::string &n : names)
		text += (text.empty() ? "" : ", ") + n;
	return text;
}

} // namespace

Service::Service(Options options, Backend &backend, Listener &listener)
	: options_(std::move(options)), backend_(backend), listener_(listener), store_(options_.stateDir),
	  journal_(options_.stateDir, options_.journalDays)
{
}

Failure Service::fail(Failure failure, bool degrade)
{
	// A retry that fails as the last try did (a drain's end that cannot be
	// kept) was said once: no line, no ApplyFailed every few seconds.
	if (quiet_ && failure.message == lastError_)
		return failure;
	std::vector<std::string> changed{"LastError"};
	lastError_ = failure.message;
	if (degrade && state_ == State::Applied) {
		state_ = State::Degraded;
		changed.push_back("State");
	}
	listener_.logEvent(3, std::string(faultName(failure.fault)) + ": " + failure.message,
			   {{"PORTSLICE_ERROR", std::string(faultName(failure.fault))}});
	++applyFailures_;
	listener_.applyFailed(failure.message);
	listener_.propertiesChanged(changed);
	return failure;
}

Failure Service::reject(Failure failure)
{
	listener_.log(std::string(faultName(failure.fault)) + ": " + failure.message);
	return failure;
}

Answer<uint64_t> Service::start()
{
	Result<Loaded> loaded = store_.read();
	if (!loaded)
		return fail({Fault::InvalidConfig, loaded.error().message()}, true);
	persisted_ = loaded->state;
	overlay_ = persisted_.overlay;
	drains_ = persisted_.drains;
	// Never below what the kernel holds (its set `generation`), nor below
	// what the state directory says was last applied (a table of an older
	// portslice has only its comment, which keeps the generation of the last
	// full replace, not of the element deltas after it).
	generation_ = std::max(persisted_.generation, backend_.appliedGeneration().value_or(0));
	if (loaded->form == Loaded::Form::Legacy)
		listener_.log(store_.path() + ": read in the format before version 2 (no header, no checksum); the next "
			      "write replaces it with format " + std::to_string(kOwnersFormat));
	if (!overlay_.empty())
		listener_.log("re-applying " + std::to_string(overlay_.size()) + " slice owner change(s) from " +
			      store_.path());
	// What generation G was made of, as this portsliced wrote it: a start
	// that finds the same file, overlay and drains applies G again and
	// writes nothing (a read-only state directory is no obstacle then).
	// Only when the journal's last word is that G was applied: a crash
	// between keeping G and applying it (no outcome), or a failed G whose
	// file could not be put back, makes the start a new generation, which
	// the journal then records.
	// A journal segment with a damaged line (most often the last, cut short
	// by a crash while appending) is closed as it is and a new one begun: no
	// record is ever written after the damage, and the start's file record
	// (no resume without the journal's last word) holds the whole state, so
	// that answers from here on are known; queries report the damage.
	Result<std::vector<journal::Damaged>> sealed = journal_.sealIfDamaged(nowUs());
	if (!sealed)
		listener_.logEvent(4, "closing the damaged ownership journal " + journal_.path() + ": " +
					      sealed.error().message(), {});
	else
		for (const journal::Damaged &d : *sealed)
			listener_.logEvent(4, d.str() + "; that segment is closed as it is (renamed journal-STAMP) and "
						      "the journal goes on in a new one", {});
	if (loaded->form == Loaded::Form::Current && loaded->writer == PORTSLICE_VERSION &&
	    !persisted_.fileHash.empty() && persisted_.generation == generation_) {
		std::optional<journal::Record> last = journal_.last();
		if (last && last->kind == journal::Record::Kind::Outcome && last->applied &&
		    last->generation == generation_)
			resume_ = persisted_;
	}
	Answer<uint64_t> answer = reload();
	resume_.reset();
	started_ = true;
	return answer;
}

std::optional<Failure> Service::lastGeneration()
{
	if (generation_ < std::numeric_limits<uint64_t>::max())
		return std::nullopt;
	return fail({Fault::ApplyFailed, "generation " + std::to_string(generation_) +
		     " is the largest there is: no change can have a new one (generations never wrap); nothing "
		     "was applied. Run portsliced --remove and delete " + store_.path() + " to count from 1 again"},
		    false);
}

Answer<uint64_t> Service::reload()
{
	// A pipe (--config <(...), /dev/stdin) is read once, at start: opened
	// again it has nothing left to give (it would read as an empty file),
	// and a named FIFO blocks until a writer comes.
	struct stat st{};
	if (started_ && ::stat(options_.configPath.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
		std::string kind = S_ISFIFO(st.st_mode) ? "a pipe" : S_ISCHR(st.st_mode) ? "a character device"
				 : S_ISSOCK(st.st_mode) ? "a socket" : S_ISDIR(st.st_mode) ? "a directory" : "not a file";
		config::Diagnostic d{config::Diagnostic::Severity::Error, config::Location{options_.configPath, 0, 0},
				     "cannot re-read the configuration: it is " + kind + ", not a regular file (read "
				     "once, at start); " + (plan_ ? "generation " + std::to_string(generation_) +
				     " stays applied" : std::string("nothing is applied")) + ". Start portsliced with "
				     "--config naming a regular file to reload it"};
		return fail({Fault::InvalidConfig, d.str()}, true);
	}
	// The bytes hashed and kept are the bytes loaded.
	std::optional<std::string> text = config::readText(options_.configPath);
	config::LoadResult loaded = text ? config::loadString(*text, options_.configPath)
					 : config::loadFile(options_.configPath);
	if (loaded.ok() && text) {
		pendingHash_ = journal::sha256Hex(*text);
		// The copy under files/ now, so that the text (5 MB at 10,000
		// sources) is not held while the file is planned and applied; one
		// that cannot be written is tried again, and refuses the change,
		// when the change is journaled. (A file the planner then rejects
		// leaves a copy no record names: rotation deletes it.)
		if (!journal_.keepFile(pendingHash_, *text))
			pendingText_ = std::move(*text);
		std::string().swap(*text);
	}
	why_ = "file";
	if (!loaded.ok())
		return fail({Fault::InvalidConfig, errorLines(loaded.diagnostics)}, true);
	decltype(fileSlices_) fileSlices;
	for (const config::Address &a : loaded.config->addresses)
		fileSlices.emplace(a.address.value, FileSlices{a.owners, a.previous});
	OverlayResult laid = applyOverlay(std::move(*loaded.config), overlay_);
	for (const std::string &why : laid.dropped)
		listener_.log("dropping persisted slice owner " + why);
	DrainResult drained = applyDrains(laid.config, drains_, now());
	for (const std::string &why : drained.dropped)
		listener_.log("ending " + why);
	std::vector<config::Diagnostic> errors = config::validate(laid.config);
	if (config::hasErrors(errors))
		return fail({Fault::InvalidConfig, errorLines(errors)}, true);
	bool persist = laid.kept != overlay_ || drained.kept != drains_;
	std::swap(fileSlices_, fileSlices); // the journal's file record compares with the new file
	Answer<uint64_t> answer = commit(std::move(laid.config), std::move(laid.kept), std::move(drained.kept), persist,
					 Fault::InvalidConfig);
	if (!answer.ok())
		fileSlices_ = std::move(fileSlices);
	pendingText_.clear();
	pendingHash_.clear();
	return answer;
}

// Where each shared address of config_ is: a move finds its address by
// hash, not by a walk over 10,000 of them.
void Service::indexAddresses()
{
	addressIndex_.clear();
	addressIndex_.reserve(config_->addresses.size());
	for (size_t i = 0; i < config_->addresses.size(); i++)
		addressIndex_.emplace(config_->addresses[i].address.value, static_cast<uint32_t>(i));
}

std::optional<Failure> Service::checkMove(std::string_view addressText, uint32_t slice, std::string_view serverName,
					  uint32_t *addressIndex, Ipv4 *ipOut) const
{
	std::optional<Ipv4> ip = Ipv4::parse(addressText);
	if (!ip)
		return Failure{Fault::InvalidArgument, quoteInput(addressText) +
			       " is not an IPv4 address; give a shared address such as 198.51.100.1"};
	const config::Address *address = nullptr;
	if (auto it = addressIndex_.find(ip->value); it != addressIndex_.end())
		address = &config_->addresses[it->second];
	if (!address) {
		std::vector<std::string> known;
		for (const config::Address &a : config_->addresses) {
			if (known.size() == 20) {
				known.push_back("...");
				break;
			}
			known.push_back(a.address.str());
		}
		return Failure{Fault::InvalidArgument, ip->str() + " is not a shared address of " + options_.configPath +
			       " (it has: " + joinNames(known) + ")"};
	}
	if (slice >= address->sliceCount())
		return Failure{Fault::InvalidArgument, "slice " + std::to_string(slice) + " of " + ip->str() +
			       " does not exist: its port range " + std::to_string(address->portRange.lo) + "-" +
			       std::to_string(address->portRange.hi) + " in slices of " +
			       std::to_string(address->sliceSize) + " ports has slices 0 to " +
			       std::to_string(int64_t{address->sliceCount()} - 1)};
	if (!config_->findServer(serverName)) {
		std::vector<std::string> known;
		for (const config::Server &s : config_->servers)
			known.push_back(s.name);
		return Failure{Fault::InvalidArgument, quoteInput(serverName) +
			       " is not a server of the fleet (it has: " + joinNames(known) + ")"};
	}
	*addressIndex = static_cast<uint32_t>(address - config_->addresses.data());
	*ipOut = *ip;
	return std::nullopt;
}

Answer<uint64_t> Service::setSliceOwner(std::string_view addressText, uint32_t slice, std::string_view serverName)
{
	why_ = "set-owner";
	return setSliceOwnerDraining(addressText, slice, serverName, options_.drain);
}

Answer<uint64_t> Service::setSliceOwners(const std::vector<OwnerMove> &moves, uint32_t drainSeconds)
{
	if (!config_)
		return reject({Fault::InvalidConfig, "no configuration is applied (" + lastError_ +
			       "); fix " + options_.configPath + " and reload first"});
	if (drainSeconds > kMaxDrainSeconds)
		return reject({Fault::InvalidArgument, "drain_seconds " + std::to_string(drainSeconds) +
			       " is too long: at most " + std::to_string(kMaxDrainSeconds) + " (a day); nothing was moved"});
	auto drainOf = [&](const OwnerMove &m) { return m.drain.value_or(drainSeconds); };
	for (size_t m = 0; m < moves.size(); m++)
		if (drainOf(moves[m]) > kMaxDrainSeconds)
			return reject({Fault::InvalidArgument, "move " + std::to_string(m + 1) + " of " +
				       std::to_string(moves.size()) + ": drain_seconds " +
				       std::to_string(drainOf(moves[m])) + " is too long: at most " +
				       std::to_string(kMaxDrainSeconds) + " (a day); nothing was moved"});
	if (moves.empty())
		return generation_;
	why_ = movesWhy_; // SetSliceOwners: the fleet's moves (portslice-fleetd), or an operator's
	if (moves.size() == 1)
		return setSliceOwnerDraining(moves[0].address, moves[0].slice, moves[0].server,
					     std::chrono::seconds(drainOf(moves[0])));

	// Overlay and drains as maps while the batch changes them (the sorted
	// vectors would shift on every insert of a big batch).
	using Key = std::pair<Ipv4, uint32_t>;
	std::map<Key, std::string> overlay;
	for (const OwnerOverride &o : overlay_)
		overlay.emplace(Key{o.address, o.slice}, o.server);
	std::map<Key, SliceDrain> drains;
	for (const SliceDrain &d : drains_)
		drains.emplace(Key{d.address, d.slice}, d);

	config::Config next = *config_;
	std::set<Key> seen;
	std::vector<BatchMove> batch;
	bool changed = false;
	int64_t t = now();
	for (size_t m = 0; m < moves.size(); m++) {
		const OwnerMove &move = moves[m];
		uint32_t at = 0;
		Ipv4 ip;
		if (std::optional<Failure> bad = checkMove(move.address, move.slice, move.server, &at, &ip)) {
			bad->message = "move " + std::to_string(m + 1) + " of " + std::to_string(moves.size()) + ": " +
				       bad->message + "; nothing was moved";
			return reject(*bad);
		}
		Key key{ip, move.slice};
		if (!seen.insert(key).second)
			return reject({Fault::InvalidArgument, "move " + std::to_string(m + 1) + " of " +
				       std::to_string(moves.size()) + ": slice " + std::to_string(move.slice) + " of " +
				       ip.str() + " is moved twice in one call; nothing was moved"});
		config::Address &address = next.addresses[at];
		auto current = address.owners.find(move.slice);
		bool same = current != address.owners.end() && current->second == move.server;
		bool drainEnds = drains.erase(key) > 0;
		if (same && !drainEnds)
			continue;
		changed = true;
		std::optional<std::string> previous;
		auto inFile = fileSlices_.find(ip.value);
		if (!same && current != address.owners.end() && drainOf(move) > 0) {
			drains[key] = SliceDrain{ip, move.slice, current->second, t + int64_t{drainOf(move)}};
			previous = current->second;
		} else if (inFile != fileSlices_.end() && inFile->second.previous.count(move.slice)) {
			previous = inFile->second.previous.at(move.slice);
		}
		bool fileAgrees = false;
		if (inFile != fileSlices_.end()) {
			auto it = inFile->second.owners.find(move.slice);
			fileAgrees = it != inFile->second.owners.end() && it->second == move.server;
		}
		if (fileAgrees)
			overlay.erase(key);
		else
			overlay[key] = move.server;
		address.owners[move.slice] = move.server;
		if (previous)
			address.previous[move.slice] = *previous;
		else
			address.previous.erase(move.slice);
		batch.push_back({at, move.slice, move.server, previous});
	}
	if (!changed)
		return generation_; // already so: nothing to apply, nothing to persist
	std::vector<config::Diagnostic> errors = config::validate(next);
	if (config::hasErrors(errors))
		return reject({Fault::InvalidArgument, errorLines(errors)});
	Overlay nextOverlay;
	nextOverlay.reserve(overlay.size());
	for (auto &[key, server] : overlay)
		nextOverlay.push_back(OwnerOverride{key.first, key.second, std::move(server)});
	Drains nextDrains;
	nextDrains.reserve(drains.size());
	for (auto &[key, drain] : drains)
		nextDrains.push_back(std::move(drain));
	std::set<uint32_t> lengths;
	for (const OwnerMove &m : moves)
		lengths.insert(drainOf(m));
	std::string drained;
	for (uint32_t d : lengths)
		drained += (drained.empty() ? "" : ", ") + std::to_string(d);
	listener_.log("moving " + std::to_string(batch.size()) + " slices in one generation" +
		      (lengths != std::set<uint32_t>{0} ? " (old owners drain " + drained + " s)" : ""));
	if (std::optional<Answer<uint64_t>> moved = moveSlices(batch, next, nextOverlay, nextDrains))
		return *moved;
	return commit(std::move(next), std::move(nextOverlay), std::move(nextDrains), true, Fault::InvalidArgument,
		      true);
}

std::optional<Answer<uint64_t>> Service::moveSlices(const std::vector<BatchMove> &moves, config::Config &next,
						     Overlay &overlay, Drains &drains)
{
	if (!plan_ || state_ != State::Applied)
		return std::nullopt;
	using Clock = std::chrono::steady_clock;
	Clock::time_point t0 = Clock::now();
	std::unordered_map<std::string_view, int32_t> servers;
	for (size_t i = 0; i < plan_->servers.size(); i++)
		servers.emplace(plan_->servers[i].name, static_cast<int32_t>(i));
	auto serverIndex = [&](std::string_view name) {
		auto it = servers.find(name);
		return it == servers.end() ? plan::kNoServer : it->second;
	};
	std::vector<plan::SliceMove> done;
	done.reserve(moves.size());
	auto undo = [&] {
		for (auto it = done.rbegin(); it != done.rend(); ++it)
			plan::undoMove(*plan_, std::move(*it));
		done.clear();
	};
	for (const BatchMove &m : moves) {
		std::optional<plan::SliceMove> move = plan::moveSlice(
			*plan_, m.address, m.slice, serverIndex(m.server), m.previous ? serverIndex(*m.previous) : plan::kNoServer);
		if (!move) {
			undo(); // a move needs the fleet planned anew
			return std::nullopt;
		}
		done.push_back(std::move(*move));
	}
	Clock::time_point t1 = Clock::now();
	if (std::optional<Failure> last = lastGeneration()) {
		undo();
		return *last;
	}
	// The journal holds every moved slice, before and after, as one record each.
	journal::SliceMap before = batchBefore(moves), after = batchAfter(moves, drains);
	Result<std::vector<journal::Change>> journaled = journalChange(slicesOf(before), slicesOf(after),
								       generation_ + 1, false);
	if (!journaled) {
		undo();
		return fail({Fault::ApplyFailed, journaled.error().wrap("writing the ownership journal").message() +
			     "; nothing was applied"}, false);
	}
	Persisted kept{overlay, generation_ + 1, drains, fileHash_};
	if (Status saved = store_.save(kept); !saved) {
		undo();
		journalOutcome(generation_ + 1, saved, {});
		return fail({Fault::ApplyFailed, saved.error().wrap("keeping the slice owners").message() +
			     "; nothing was applied"}, false);
	}
	Clock::time_point t2 = Clock::now();
	if (Status applied = backend_.applyMoves(*plan_, done, generation_ + 1); !applied) {
		journalOutcome(generation_ + 1, applied, {});
		undo();
		if (Status back = store_.save(persisted_); !back)
			listener_.log("restoring " + store_.path() + ": " + back.error().message());
		if (Status back = backend_.apply(*plan_, nullptr, generation_); !back)
			listener_.log("restoring generation " + std::to_string(generation_) + ": " + back.error().message());
		return fail({Fault::ApplyFailed, applied.error().message() + "; the previous state stays applied"}, true);
	}
	Clock::time_point t3 = Clock::now();
	persisted_ = std::move(kept);
	config_ = std::move(next);
	indexAddresses();
	overlay_ = std::move(overlay);
	drains_ = std::move(drains);
	++generation_;
	std::vector<std::string> properties{"Generation"};
	// A move changes a few elements: a table that differs from the plan
	// (drifted_) still does, and State and LastError go on saying so.
	if (!lastError_.empty() && !drifted_) {
		properties.push_back("LastError");
		lastError_.clear();
	}
	auto ms = [](Clock::time_point from, Clock::time_point to) {
		return std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(to - from).count() / 1000.0);
	};
	listener_.log("applied generation " + std::to_string(generation_) + ": " + std::to_string(moves.size()) +
		      " slices moved (ms: plan " + ms(t0, t1) + ", persist " + ms(t1, t2) + ", apply " + ms(t2, t3) + ")");
	lastApplied_ = now();
	journalOutcome(generation_, {}, *journaled);
	listener_.applied(generation_);
	listener_.propertiesChanged(properties);
	return generation_;
}

// What the applied state says of each slice of a batch, for the journal.
journal::SliceMap Service::batchBefore(const std::vector<BatchMove> &moves) const
{
	std::map<journal::SliceKey, int64_t> until;
	for (const SliceDrain &d : drains_)
		until.emplace(journal::SliceKey{d.address.value, d.slice}, d.until);
	journal::SliceMap out;
	for (const BatchMove &m : moves) {
		const config::Address &a = config_->addresses[m.address];
		journal::SliceKey key{a.address.value, m.slice};
		journal::SliceState was;
		if (auto it = a.owners.find(m.slice); it != a.owners.end())
			was.owner = it->second;
		if (auto it = a.previous.find(m.slice); it != a.previous.end())
			was.previous = it->second;
		if (auto it = until.find(key); it != until.end())
			was.until = it->second;
		out.emplace(key, std::move(was));
	}
	return out;
}

// What each slice of a batch will be once applied (drains: the batch's).
journal::SliceMap Service::batchAfter(const std::vector<BatchMove> &moves, const Drains &drains) const
{
	std::map<journal::SliceKey, int64_t> until;
	for (const SliceDrain &d : drains)
		until.emplace(journal::SliceKey{d.address.value, d.slice}, d.until);
	journal::SliceMap out;
	for (const BatchMove &m : moves) {
		journal::SliceKey key{config_->addresses[m.address].address.value, m.slice};
		journal::SliceState will{m.server, m.previous.value_or(""), 0};
		if (auto it = until.find(key); it != until.end())
			will.until = it->second;
		out.emplace(key, std::move(will));
	}
	return out;
}

Answer<uint64_t> Service::setSliceOwnerDraining(std::string_view addressText, uint32_t slice,
						 std::string_view serverName, std::chrono::seconds drain)
{
	if (!config_)
		return reject({Fault::InvalidConfig, "no configuration is applied (" + lastError_ +
			       "); fix " + options_.configPath + " and reload first"});
	uint32_t index = 0;
	Ipv4 checked;
	if (std::optional<Failure> bad = checkMove(addressText, slice, serverName, &index, &checked))
		return reject(*bad);
	const Ipv4 *ip = &checked;
	const config::Address *address = &config_->addresses[index];
	std::string server(serverName);
	auto current = address->owners.find(slice);
	// The old owner drains: the new owner's forwarder sends packets of flows
	// it has no state for on to it (docs/operations.md "Moving a slice").
	// Moving again during a drain replaces it; setting the owner the slice
	// already has ends it now (a dead old owner has nothing to drain).
	Drains drains = drains_;
	bool drainEnds = std::erase_if(drains, [&](const SliceDrain &d) { return d.address == *ip && d.slice == slice; });
	std::optional<std::string> previous; // after the call: the drain's, else the file's
	bool same = current != address->owners.end() && current->second == server;
	if (same && !drainEnds)
		return generation_; // already so: nothing to apply, nothing to persist
	if (!same && current != address->owners.end() && drain.count() > 0) {
		setDrain(drains, SliceDrain{*ip, slice, current->second, now() + drain.count()});
		previous = current->second;
	} else if (auto inFile = fileSlices_.find(ip->value);
		   inFile != fileSlices_.end() && inFile->second.previous.count(slice)) {
		previous = inFile->second.previous.at(slice);
	}

	Overlay overlay = overlay_;
	// A change the file already says needs no overlay entry: it retires.
	bool fileAgrees = false;
	if (auto inFile = fileSlices_.find(ip->value); inFile != fileSlices_.end()) {
		auto it = inFile->second.owners.find(slice);
		fileAgrees = it != inFile->second.owners.end() && it->second == server;
	}
	if (fileAgrees)
		std::erase_if(overlay, [&](const OwnerOverride &o) { return o.address == *ip && o.slice == slice; });
	else
		setOverride(overlay, *ip, slice, server);

	if (!same) {
		if (std::optional<Answer<uint64_t>> moved = moveSlice(index, slice, server, overlay, drains, previous))
			return *moved;
	}

	config::Config next = *config_;
	next.addresses[index].owners[slice] = server;
	if (previous)
		next.addresses[index].previous[slice] = *previous;
	else
		next.addresses[index].previous.erase(slice);
	std::vector<config::Diagnostic> errors = config::validate(next);
	if (config::hasErrors(errors))
		return reject({Fault::InvalidArgument, errorLines(errors)});
	bool persist = overlay != overlay_ || drains != drains_;
	return commit(std::move(next), std::move(overlay), std::move(drains), persist, Fault::InvalidArgument, true);
}

std::optional<Answer<uint64_t>> Service::moveSlice(uint32_t address, uint32_t slice, const std::string &server,
						    Overlay overlay, Drains drains, const std::optional<std::string> &previous)
{
	if (!plan_ || state_ != State::Applied)
		return std::nullopt;
	using Clock = std::chrono::steady_clock;
	Clock::time_point t0 = Clock::now();
	auto serverIndex = [&](std::string_view name) {
		for (size_t i = 0; i < plan_->servers.size(); i++)
			if (plan_->servers[i].name == name)
				return static_cast<int32_t>(i);
		return plan::kNoServer;
	};
	config::Address &a = config_->addresses[address];
	std::optional<plan::SliceMove> move = plan::moveSlice(*plan_, address, slice, serverIndex(server),
							      previous ? serverIndex(*previous) : plan::kNoServer);
	if (!move)
		return std::nullopt; // candidates change: plan the fleet anew
	Clock::time_point t1 = Clock::now();
	if (std::optional<Failure> last = lastGeneration()) {
		plan::undoMove(*plan_, std::move(*move));
		return *last;
	}
	// The journal holds the one slice, before and after.
	journal::SliceMap before, after;
	{
		journal::SliceKey key{a.address.value, slice};
		journal::SliceState was, will{server, previous.value_or(""), 0};
		if (auto it = a.owners.find(slice); it != a.owners.end())
			was.owner = it->second;
		if (auto it = a.previous.find(slice); it != a.previous.end())
			was.previous = it->second;
		for (const SliceDrain &d : drains_)
			if (d.address == a.address && d.slice == slice)
				was.until = d.until;
		for (const SliceDrain &d : drains)
			if (d.address == a.address && d.slice == slice)
				will.until = d.until;
		before.emplace(key, was);
		after.emplace(key, will);
	}
	Result<std::vector<journal::Change>> journaled =
		journalChange(slicesOf(before), slicesOf(after), generation_ + 1, false);
	if (!journaled) {
		plan::undoMove(*plan_, std::move(*move));
		return fail({Fault::ApplyFailed, journaled.error().wrap("writing the ownership journal").message() +
			     "; nothing was applied"}, false);
	}
	Persisted kept{overlay, generation_ + 1, drains, fileHash_};
	if (Status saved = store_.save(kept); !saved) {
		plan::undoMove(*plan_, std::move(*move));
		journalOutcome(generation_ + 1, saved, {});
		return fail({Fault::ApplyFailed, saved.error().wrap("keeping the slice owners").message() +
			     "; nothing was applied"}, false);
	}
	Clock::time_point t2 = Clock::now();
	if (Status applied = backend_.applyMove(*plan_, *move, generation_ + 1); !applied) {
		journalOutcome(generation_ + 1, applied, {});
		plan::undoMove(*plan_, std::move(*move));
		if (Status back = store_.save(persisted_); !back)
			listener_.logEvent(3, "restoring " + store_.path() + ": " + back.error().message(), {});
		if (Status back = backend_.apply(*plan_, nullptr, generation_); !back)
			listener_.logEvent(3, "restoring generation " + std::to_string(generation_) + ": " +
						      back.error().message(), {});
		return fail({Fault::ApplyFailed, applied.error().message() + "; the previous state stays applied"}, true);
	}
	Clock::time_point t3 = Clock::now();
	a.owners[slice] = server;
	if (previous)
		a.previous[slice] = *previous;
	else
		a.previous.erase(slice);
	persisted_ = std::move(kept);
	overlay_ = std::move(overlay);
	drains_ = std::move(drains);
	++generation_;
	std::vector<std::string> properties{"Generation"};
	// A move changes a few elements: a table that differs from the plan
	// (drifted_) still does, and State and LastError go on saying so.
	if (!lastError_.empty() && !drifted_) {
		properties.push_back("LastError");
		lastError_.clear();
	}
	auto ms = [](Clock::time_point from, Clock::time_point to) {
		return std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(to - from).count() / 1000.0);
	};
	listener_.logEvent(6, "applied generation " + std::to_string(generation_) + ": slice " + std::to_string(slice) +
				      " of " + a.address.str() + " to " + server + " (" +
				      std::to_string(move->sources.size()) + " sources re-planned" +
				      (move->candidatesChanged ? ", candidates changed" : "") + "; ms: plan " + ms(t0, t1) +
				      ", persist " + ms(t1, t2) + ", apply " + ms(t2, t3) + ")",
			   {{"GENERATION", std::to_string(generation_)}, {"PLAN_MS", ms(t0, t1)},
			    {"PERSIST_MS", ms(t1, t2)}, {"APPLY_MS", ms(t2, t3)}});
	lastApplied_ = now();
	journalOutcome(generation_, {}, *journaled);
	listener_.applied(generation_);
	listener_.propertiesChanged(properties);
	return generation_;
}

int64_t Service::nowUs() const
{
	if (options_.clock)
		return options_.clock() * 1000000;
	return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
		.count();
}

Service::Slices Service::slicesOf(const config::Config &config, const Drains &drains)
{
	Slices slices{nullptr, &config, {}};
	for (const SliceDrain &d : drains)
		slices.untils[journal::SliceKey{d.address.value, d.slice}] = d.until;
	return slices;
}

journal::Ownership Service::fileExceptions(const Slices &state) const
{
	journal::Ownership out;
	for (journal::SliceWalk walk = state.walk(); !walk.done(); walk.next()) {
		journal::SliceKey key = walk.key();
		journal::SliceState slice = walk.state();
		journal::SliceState inFile;
		if (auto f = fileSlices_.find(key.address); f != fileSlices_.end()) {
			if (auto o = f->second.owners.find(key.slice); o != f->second.owners.end())
				inFile.owner = o->second;
			if (auto p = f->second.previous.find(key.slice); p != f->second.previous.end())
				inFile.previous = p->second;
		}
		if (!(inFile == slice))
			out.emplace_back(key, std::move(slice));
	}
	return out;
}

Result<std::vector<journal::Record>> Service::journalRotation(int64_t timeUs)
{
	using journal::Record;
	// Neither the file applied now nor the one about to be (kept under
	// files/ when it was loaded) is deleted with the old segments.
	Result<bool> rotated = journal_.rotateIfDue(timeUs, {fileHash_, pendingHash_});
	if (!rotated)
		return rotated.error();
	std::vector<Record> records;
	if (*rotated && config_ && !fileHash_.empty()) {
		Record checkpoint{.kind = Record::Kind::File, .timeUs = timeUs, .generation = generation_, .why = "checkpoint"};
		checkpoint.hash = fileHash_;
		checkpoint.exceptions = fileExceptions(slicesOf(*config_, drains_));
		records.push_back(std::move(checkpoint));
		records.push_back({.kind = Record::Kind::Outcome, .timeUs = timeUs, .generation = generation_, .applied = true});
	}
	return records;
}

void Service::rotateJournal()
{
	Result<std::vector<journal::Record>> checkpoint = journalRotation(nowUs());
	Status written = checkpoint ? journal_.append(*checkpoint) : Status(checkpoint.error());
	if (!written)
		listener_.logEvent(4, "rotating the ownership journal " + journal_.path() + ": " + written.error().message(),
				   {});
}

Result<std::vector<journal::Change>> Service::journalChange(const Slices &before, const Slices &after,
							    uint64_t generation, bool fileChanged)
{
	using journal::Record;
	int64_t t = nowUs();
	// A new day: the segment rotates (and the expired ones go) before any
	// change, a new file's included; the new one starts from the applied state.
	Result<std::vector<Record>> rotation = journalRotation(t);
	if (!rotation)
		return rotation.error();
	std::vector<Record> records = std::move(*rotation);
	std::vector<journal::Change> changes;
	std::string hash = pendingHash_.empty() ? fileHash_ : pendingHash_;
	if ((fileChanged || before.empty()) && !hash.empty()) {
		if (!pendingText_.empty())
			if (Status kept = journal_.keepFile(hash, pendingText_); !kept)
				return kept.error();
		Record file{.kind = Record::Kind::File, .timeUs = t, .generation = generation, .why = "file", .uid = caller_};
		file.hash = hash;
		file.exceptions = fileExceptions(after);
		records.push_back(std::move(file));
		changes.push_back({.timeUs = t, .generation = generation, .why = "file", .uid = caller_, .hash = hash});
		if (!before.empty()) {
			for (journal::Change c : journal::diff(before.walk(), after.walk())) {
				c.timeUs = t;
				c.generation = generation;
				c.why = "file";
				c.uid = caller_;
				changes.push_back(std::move(c));
			}
		}
	} else {
		std::vector<journal::SliceState> afterStates;
		std::vector<journal::Change> diffs = journal::diff(before.walk(), after.walk(), &afterStates);
		for (size_t i = 0; i < diffs.size(); i++) {
			journal::Change &c = diffs[i];
			Record move{.kind = Record::Kind::Move, .timeUs = t, .generation = generation, .why = why_, .uid = caller_};
			move.key = *c.key;
			move.old = c.old;
			move.after = std::move(afterStates[i]);
			records.push_back(std::move(move));
			c.timeUs = t;
			c.generation = generation;
			c.why = why_;
			c.uid = caller_;
			changes.push_back(std::move(c));
		}
	}
	if (Status written = journal_.append(records); !written)
		return written.error();
	return changes;
}

void Service::journalOutcome(uint64_t generation, const Status &applied, const std::vector<journal::Change> &changes)
{
	if (applied && changes.empty())
		return; // nothing was journaled for it
	journal::Record outcome{.kind = journal::Record::Kind::Outcome, .timeUs = nowUs(), .generation = generation};
	outcome.applied = applied.ok();
	if (!applied)
		outcome.detail = applied.error().message().substr(0, 200);
	if (Status written = journal_.append({outcome}); !written)
		listener_.log("writing the outcome of generation " + std::to_string(generation) + " to " + journal_.path() +
			      ": " + written.error().message());
	if (applied)
		listener_.ownershipChanged(changes);
}

Result<std::shared_ptr<const config::Config>> Service::keptFile(const std::string &hash) const
{
	if (auto it = keptFiles_.find(hash); it != keptFiles_.end())
		return it->second;
	std::string path = journal_.filePath(hash);
	config::LoadResult loaded = config::loadFile(path);
	if (!loaded.ok())
		return Error("kept file " + path + " cannot be read: " +
			     (loaded.diagnostics.empty() ? std::string("invalid") : loaded.diagnostics.front().str()));
	auto kept = std::make_shared<const config::Config>(std::move(*loaded.config));
	keptFiles_.emplace(hash, kept);
	return kept;
}

int64_t Service::now() const
{
	if (options_.clock)
		return options_.clock();
	return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
		.count();
}

void Service::expireDrains()
{
	if (!config_ || state_ == State::Failed)
		return;
	int64_t t = now();
	if (std::none_of(drains_.begin(), drains_.end(), [&](const SliceDrain &d) { return d.until <= t; })) {
		drainBackoff_ = drainRetryAt_ = 0; // ended otherwise (a reload, a move): no retry pending
		drainTries_ = 0;
		return;
	}
	// An end that could not be kept (or applied) is tried again after 2 s,
	// then at doubling intervals up to 5 minutes, not at every tick.
	if (t < drainRetryAt_)
		return;
	bool retry = drainBackoff_ > 0;
	// The applied config without the ended drains: those slices get back the
	// previous owner the file names, if any.
	config::Config next = *config_;
	Drains kept;
	for (const SliceDrain &d : drains_) {
		if (d.until > t) {
			kept.push_back(d);
			continue;
		}
		if (!retry)
			listener_.log("ending drain of " + d.address.str() + " slice " + std::to_string(d.slice) + " by " +
				      d.previous + ": its deadline has passed");
		config::Address *address = next.findAddress(d.address);
		if (!address)
			continue;
		auto inFile = fileSlices_.find(d.address.value);
		if (inFile != fileSlices_.end() && inFile->second.previous.count(d.slice))
			address->previous[d.slice] = inFile->second.previous.at(d.slice);
		else
			address->previous.erase(d.slice);
	}
	why_ = "drain end";
	quiet_ = retry;
	Answer<uint64_t> ended = commit(std::move(next), overlay_, std::move(kept), true, Fault::ApplyFailed, true);
	quiet_ = false;
	++drainTries_;
	if (ended.ok()) {
		if (retry)
			listener_.log("the end of the drains is kept and applied now, at try " + std::to_string(drainTries_));
		drainBackoff_ = 0;
		drainRetryAt_ = 0;
		drainTries_ = 0;
		return;
	}
	if (!retry)
		listener_.logEvent(4, "the end of the drains could not be kept or applied (" + ended.failure().message +
					      "); the drains go on and it is tried again in " +
					      std::to_string(kDrainRetryFirst) + " s, then at doubling intervals up to " +
					      std::to_string(kDrainRetryMax) + " s, without a line until it works", {});
	drainBackoff_ = retry ? std::min(drainBackoff_ * 2, kDrainRetryMax) : kDrainRetryFirst;
	drainRetryAt_ = t + drainBackoff_;
}

Answer<uint64_t> Service::commit(config::Config config, Overlay overlay, Drains drains, bool persist, Fault planFault,
				 bool changed)
{
	using Clock = std::chrono::steady_clock;
	auto ms = [](Clock::time_point from, Clock::time_point to) {
		return std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(to - from).count() / 1000.0);
	};
	Clock::time_point t0 = Clock::now();
	plan::PlanResult planned = plan::makePlan(config);
	Clock::time_point t1 = Clock::now();
	if (!planned.ok()) {
		if (planFault == Fault::InvalidArgument)
			return reject({planFault, errorLines(planned.diagnostics)});
		return fail({planFault, errorLines(planned.diagnostics)}, true);
	}
	for (const config::Diagnostic &d : planned.diagnostics)
		if (d.severity == config::Diagnostic::Severity::Warning)
			listener_.log(d.str());

	// A slice that changed owner changes the plan; otherwise compare all
	// that reaches the kernel (the identity renders the whole plan, so it is
	// not done when it is not needed).
	bool same = !changed && plan_ && state_ != State::Failed && planned.plan->identity() == plan_->identity();
	// The start of a daemon that finds the file, overlay and drains its
	// state directory says the generation was made of: the same generation,
	// applied again in full (the kernel may have lost it), already journaled
	// and kept; nothing is written.
	bool resumed = resume_ && !plan_ && !changed && pendingHash_ == resume_->fileHash &&
		       overlay == resume_->overlay && drains == resume_->drains;
	if (!same && !resumed)
		if (std::optional<Failure> last = lastGeneration())
			return *last;
	// Persist before the kernel changes: a crash in between re-applies the
	// new state on start, never loses a change a caller was told about.
	persist = !resumed && (persist || !same);
	uint64_t next = same || resumed ? generation_ : generation_ + 1;
	// The journal first, flushed: what follows may fail, never the other way round.
	bool fileChanged = !pendingHash_.empty() && pendingHash_ != fileHash_;
	Result<std::vector<journal::Change>> journaled =
		resumed ? std::vector<journal::Change>{}
			: journalChange(config_ && state_ != State::Failed ? slicesOf(*config_, drains_) : Slices{},
					slicesOf(config, drains), next, fileChanged);
	if (!journaled)
		return fail({Fault::ApplyFailed, journaled.error().wrap("writing the ownership journal").message() +
			     "; nothing was applied"}, false);
	std::string().swap(pendingText_); // kept by the journal now: not held through the apply
	Persisted kept{overlay, next, drains, pendingHash_.empty() ? fileHash_ : pendingHash_};
	if (persist) {
		if (Status saved = store_.save(kept); !saved) {
			journalOutcome(next, saved, {});
			return fail({Fault::ApplyFailed, saved.error().wrap("keeping the slice owners").message() +
				     "; nothing was applied"}, false);
		}
	}
	Clock::time_point t2 = Clock::now();
	// The same plan on a kernel that differs from it (a change by hand left
	// by --no-repair, a repair that failed): applied again in full, as the
	// same generation.
	bool again = same && drifted_;
	if (!same || again) {
		Status applied = backend_.apply(*planned.plan, plan_ && !drifted_ ? &*plan_ : nullptr, next);
		if (!applied) {
			if (!resumed) // the journal has generation `next` applied, from before this start
				journalOutcome(next, applied, {});
			if (persist) {
				if (Status back = store_.save(persisted_); !back)
					listener_.logEvent(3, "restoring " + store_.path() + ": " + back.error().message(), {});
			}
			// A backend may fail half-way (the table applied, the forwarder
			// not): put the previous plan back in full.
			if (plan_ && state_ != State::Failed) {
				if (Status back = backend_.apply(*plan_, nullptr, generation_); !back)
					listener_.logEvent(3, "restoring generation " + std::to_string(generation_) + ": " +
								   back.error().message(), {});
			}
			return fail({Fault::ApplyFailed, applied.error().message() +
				     "; the previous state stays applied"}, true);
		}
	}

	Clock::time_point t3 = Clock::now();
	// A new generation applied in full over a table that differed from the
	// plan (left by --no-repair, a repair that failed) re-created it: said
	// below, with what differed.
	std::string differed = drifted_ && !same ? "generation " + std::to_string(generation_) + " (" + lastError_ + ")"
						 : std::string();
	std::vector<std::string> properties;
	if (next != generation_) {
		generation_ = next;
		properties.push_back("Generation");
	}
	if (persist)
		persisted_ = std::move(kept);
	if (state_ != State::Applied)
		properties.push_back("State");
	if (!lastError_.empty())
		properties.push_back("LastError");
	if (server_ != planned.plan->server)
		properties.push_back("Server");
	server_ = planned.plan->server;
	state_ = State::Applied;
	lastError_.clear();
	drifted_ = false;
	plan_ = std::move(planned.plan);
	config_ = std::move(config);
	indexAddresses();
	overlay_ = std::move(overlay);
	drains_ = std::move(drains);
	if (fileChanged)
		fileHash_ = pendingHash_;
	journalOutcome(next, {}, *journaled);
	if (resumed)
		listener_.log("generation " + std::to_string(generation_) + " again: the file, slice owners and drains are "
			      "those " + store_.path() + " keeps for it; nothing written");
	if (again)
		listener_.log("applied generation " + std::to_string(generation_) + " again in full: the table differed from it");
	if (!same) {
		listener_.logEvent(6, "applied generation " + std::to_string(generation_) + " (server " + server_ + ", " +
					      std::to_string(plan_->sources.size()) + " sources, " +
					      std::to_string(plan_->addresses.size()) + " addresses; ms: plan " + ms(t0, t1) +
					      ", persist " + ms(t1, t2) + ", apply " + ms(t2, t3) + ")",
				   {{"GENERATION", std::to_string(generation_)}, {"PLAN_MS", ms(t0, t1)},
				    {"PERSIST_MS", ms(t1, t2)}, {"APPLY_MS", ms(t2, t3)}});
		if (!differed.empty())
			listener_.logEvent(5, "generation " + std::to_string(generation_) + " re-created table inet portslice "
						      "in full (" + why_ + "): the kernel holds the plan again; it differed from " +
						      differed, {});
		lastApplied_ = now();
		listener_.applied(generation_);
	}
	if (!properties.empty())
		listener_.propertiesChanged(properties);
	return generation_;
}

Answer<std::string> Service::planJson() const
{
	if (!plan_)
		return Failure{Fault::NotFound, "nothing is applied: " + lastError_};
	// The generation the plan is applied as, first after the opening brace.
	std::string json = plan::toJson(*plan_);
	size_t server = json.find("\"server\"");
	if (server == std::string::npos)
		return json;
	size_t line = json.rfind('\n', server);
	std::string indent = line == std::string::npos ? "" : json.substr(line + 1, server - line - 1);
	json.insert(server, "\"generation\": " + std::to_string(generation_) + "," + (line == std::string::npos ? " " : "\n" + indent));
	return json;
}

Answer<std::string> Service::dump() const
{
	if (!plan_)
		return Failure{Fault::NotFound, "nothing is applied: " + lastError_};
	return backend_.dump(*plan_, generation_);
}

Answer<std::pair<std::string, std::string>> Service::owner(std::string_view addressText, uint16_t port) const
{
	if (!config_)
		return Failure{Fault::NotFound, "nothing is applied: " + lastError_};
	std::optional<Ipv4> ip = Ipv4::parse(addressText);
	if (!ip)
		return Failure{Fault::InvalidArgument, quoteInput(addressText) + " is not an IPv4 address"};
	std::optional<plan::OwnerAnswer> answer = plan::findOwner(*config_, *ip, port);
	if (!answer)
		return Failure{Fault::NotFound, ip->str() + " is not a shared address of " + options_.configPath};
	if (!answer->slice)
		return Failure{Fault::NotFound, "port " + std::to_string(port) + " of " + ip->str() +
			       " is outside its usable slices"};
	std::string inside;
	if (answer->inside) {
		inside = answer->inside->str();
		if (answer->insideLast && *answer->insideLast != *answer->inside)
			inside += "-" + answer->insideLast->str();
	}
	return std::pair{answer->server, inside};
}

Answer<std::vector<OwnerRow>> Service::owners() const
{
	if (!config_)
		return Failure{Fault::NotFound, "nothing is applied: " + lastError_};
	std::vector<OwnerRow> rows;
	Slices all = slicesOf(*config_, drains_);
	for (journal::SliceWalk walk = all.walk(); !walk.done(); walk.next()) {
		journal::SliceKey key = walk.key();
		journal::SliceState slice = walk.state();
		rows.push_back({Ipv4{key.address}.str(), key.slice, slice.owner, slice.previous,
				static_cast<uint64_t>(std::max<int64_t>(slice.until, 0))});
	}
	return rows;
}

Answer<LiveOwner> Service::ownerNow(std::string_view addressText, uint16_t port) const
{
	if (!config_)
		return Failure{Fault::NotFound, "nothing is applied: " + lastError_};
	std::optional<Ipv4> ip = Ipv4::parse(addressText);
	if (!ip)
		return Failure{Fault::InvalidArgument, quoteInput(addressText) + " is not an IPv4 address"};
	LiveOwner live;
	live.now = journal::answerFor(*config_, *ip, port);
	if (!live.now.shared)
		return Failure{Fault::NotFound, ip->str() + " is not a shared address of " + options_.configPath};
	if (live.now.slice && !live.now.previous.empty()) {
		for (const SliceDrain &d : drains_)
			if (d.address == *ip && d.slice == *live.now.slice)
				live.now.drainUntil = d.until;
		// What the previous owner keeps: the flows it opened as owner, so its plan as owner.
		config::Config before = *config_;
		config::Address *a = before.findAddress(*ip);
		a->owners[*live.now.slice] = live.now.previous;
		a->previous.erase(*live.now.slice);
		live.draining = journal::answerFor(before, *ip, port);
	}
	return live;
}

Answer<journal::AnswerAt> Service::ownerAt(std::string_view addressText, uint16_t port, uint64_t asked,
					   std::vector<journal::AnswerAt> *withinSecond) const
{
	std::optional<Ipv4> ip = Ipv4::parse(addressText);
	if (!ip)
		return Failure{Fault::InvalidArgument, quoteInput(addressText) + " is not an IPv4 address"};
	// A moment to come has no answer yet; one a few seconds ahead is a
	// clock (the complainant's, or ours) a little off: answered as now.
	int64_t current = now();
	auto timeText = [](uint64_t seconds) {
		return seconds <= 253402300799 ? journal::formatSeconds(static_cast<int64_t>(seconds)) // 9999-12-31T23:59:59Z
					       : "Unix time " + std::to_string(seconds);
	};
	if (current < 0 || asked > static_cast<uint64_t>(current) + kClockSkewSeconds)
		return Failure{Fault::NotFound, timeText(asked) + " is in the future (now is " +
			       journal::formatSeconds(current) + ")"};
	int64_t when = std::min(static_cast<int64_t>(asked), current);
	journal::Scan scan = journal_.scan();
	auto load = [this](const std::string &hash) { return keptFile(hash); };
	std::optional<int64_t> begins;
	Result<std::optional<journal::AnswerAt>> at = journal::ownerAt(scan, load, *ip, port, when, &begins, withinSecond);
	if (!at)
		return Failure{Fault::NotFound, at.error().wrap("reading the ownership journal").message()};
	if (!*at && begins)
		return Failure{Fault::NotFound, "the ownership journal " + journal_.path() + " begins at " +
			       journal::formatSeconds(*begins) + ": " + journal::formatSeconds(when) + " is before it"};
	if (!*at)
		return Failure{Fault::NotFound, "the ownership journal " + journal_.path() + " holds no applied file"};
	if (!(*at)->answer.shared)
		return Failure{Fault::NotFound, ip->str() + " was not a shared address at " + journal::formatSeconds(when)};
	if (!(*at)->answer.slice)
		return Failure{Fault::NotFound, "port " + std::to_string(port) + " of " + ip->str() +
			       " was outside its usable slices at " + journal::formatSeconds(when)};
	return **at;
}

Answer<std::vector<journal::Change>> Service::history(int64_t sinceUs) const
{
	journal::Scan scan = journal_.scan();
	auto load = [this](const std::string &hash) { return keptFile(hash); };
	Result<std::vector<journal::Change>> lines = journal::history(scan, load, sinceUs);
	if (!lines)
		return Failure{Fault::NotFound, lines.error().wrap("reading the ownership journal").message()};
	return *lines;
}

Answer<std::vector<std::string>> Service::audit()
{
	if (!plan_)
		return Failure{Fault::NotFound, "nothing is applied: " + lastError_};
	Result<std::vector<std::string>> differences = backend_.audit(*plan_, generation_);
	if (!differences)
		return Failure{Fault::ApplyFailed, differences.error().wrap("reading the live table").message()};
	return *differences;
}

Answer<std::vector<StatRow>> Service::stats()
{
	if (!plan_)
		return Failure{Fault::NotFound, "nothing is applied: " + lastError_};
	Result<std::vector<StatRow>> rows = backend_.stats(*plan_);
	if (!rows)
		return Failure{Fault::ApplyFailed, rows.error().wrap("reading counters").message()};
	std::vector<StatRow> out = std::move(*rows);
	out.push_back({"daemon", server_, "generation", generation_});
	out.push_back({"daemon", server_, "apply_failures", applyFailures_});
	out.push_back({"daemon", PORTSLICE_VERSION, "version", 1});
	out.push_back({"daemon", server_, "last_apply_timestamp_seconds",
		       static_cast<uint64_t>(std::max<int64_t>(lastApplied_, 0))});
	return out;
}

void Service::repairDrift(std::string_view why)
{
	if (!plan_ || state_ == State::Failed)
		return;
	Result<std::string> drift = backend_.drift(*plan_, generation_);
	if (!drift) {
		listener_.logEvent(4, "checking for drift (" + std::string(why) + "): " + drift.error().message(), {});
		return;
	}
	if (!drift->empty())
		restore(*drift + " (" + std::string(why) + ")");
	else
		recovered();
}

void Service::leaveDrift(std::string_view what, bool full)
{
	if (!plan_ || state_ == State::Failed)
		return;
	std::vector<std::string> differences;
	if (full) {
		Result<std::vector<std::string>> audited = backend_.audit(*plan_, generation_);
		if (!audited) {
			listener_.logEvent(4, "comparing the table with the plan: " + audited.error().message(), {});
			return;
		}
		differences = std::move(*audited);
	} else {
		Result<std::string> drift = backend_.drift(*plan_, generation_);
		if (!drift) {
			listener_.logEvent(4, "checking for drift (periodic check): " + drift.error().message(), {});
			return;
		}
		if (drift->empty())
			return; // a change inside the table is for the events' full comparison to find equal
		differences.push_back(std::move(*drift));
	}
	if (differences.empty()) {
		if (drifted_)
			listener_.log("table inet portslice holds generation " + std::to_string(generation_) + " again");
		recovered();
		return;
	}
	std::string message = "table inet portslice " +
			      (what.empty() ? std::string("differs from the plan") : "changed by " + std::string(what)) +
			      ", not repaired (--no-repair): " + differences.front() +
			      (differences.size() > 1 ? " and " + std::to_string(differences.size() - 1) + " more" : "") +
			      "; see portslicectl audit";
	if (drifted_ && state_ == State::Degraded && (what.empty() || message == lastError_))
		return; // said already
	std::vector<std::string> changed;
	if (message != lastError_) {
		lastError_ = message;
		changed.push_back("LastError");
	}
	if (state_ == State::Applied) {
		state_ = State::Degraded;
		changed.push_back("State");
	}
	drifted_ = true;
	listener_.logEvent(4, message, {});
	if (!changed.empty())
		listener_.propertiesChanged(changed);
}

void Service::restore(std::string_view what)
{
	if (!plan_ || state_ == State::Failed)
		return;
	listener_.logEvent(4, "drift: " + std::string(what) + "; restoring generation " + std::to_string(generation_), {});
	Status restored = backend_.apply(*plan_, nullptr, generation_);
	if (!restored) {
		drifted_ = true;
		fail({Fault::ApplyFailed, restored.error().wrap("restoring the table after drift").message()}, true);
		return;
	}
	listener_.log("restored generation " + std::to_string(generation_));
	recovered();
}

void Service::restoreBy(std::string_view what, std::string_view how, const std::function<Status()> &undo)
{
	if (!plan_ || state_ == State::Failed)
		return;
	using Clock = std::chrono::steady_clock;
	Clock::time_point t0 = Clock::now();
	Status undone = undo();
	if (!undone) {
		listener_.log("drift: " + std::string(what) + "; " + std::string(how) + " failed (" +
			      undone.error().message() + "), restoring in full");
		restore(what);
		return;
	}
	double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
	listener_.log("drift: " + std::string(what) + "; restored generation " + std::to_string(generation_) + " by " +
		      std::string(how) + " (" + std::to_string(ms) + " ms)");
	recovered();
}

void Service::recovered()
{
	if (!drifted_)
		return;
	drifted_ = false;
	if (state_ == State::Degraded) {
		state_ = State::Applied;
		lastError_.clear();
		listener_.propertiesChanged({"State", "LastError"});
	}
}

} // namespace portslice::service
