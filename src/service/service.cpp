// SPDX-License-Identifier: MIT
// The service state machine: load, overlay, validate, plan, persist, apply, announce; nothing changes on failure.
#include "service/service.h"

#include "common/version.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <set>

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
	: options_(std::move(options)), backend_(backend), listener_(listener), store_(options_.stateDir)
{
}

Failure Service::fail(Failure failure, bool degrade)
{
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

Answer<uint64_t> Service::start()
{
	Result<Persisted> persisted = store_.load();
	if (!persisted)
		return fail({Fault::InvalidConfig, persisted.error().message()}, true);
	overlay_ = persisted->overlay;
	drains_ = persisted->drains;
	generation_ = std::max(persisted->generation, backend_.appliedGeneration().value_or(0));
	if (!overlay_.empty())
		listener_.log("re-applying " + std::to_string(overlay_.size()) + " slice owner change(s) from " +
			      store_.path());
	return reload();
}

Answer<uint64_t> Service::reload()
{
	config::LoadResult loaded = config::loadFile(options_.configPath);
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
	Answer<uint64_t> answer = commit(std::move(laid.config), std::move(laid.kept), std::move(drained.kept), persist,
					 Fault::InvalidConfig);
	if (answer.ok())
		fileSlices_ = std::move(fileSlices);
	return answer;
}

std::optional<Failure> Service::checkMove(std::string_view addressText, uint32_t slice, std::string_view serverName,
					  const std::unordered_map<uint32_t, uint32_t> *index, uint32_t *addressIndex,
					  Ipv4 *ipOut) const
{
	std::optional<Ipv4> ip = Ipv4::parse(addressText);
	if (!ip)
		return Failure{Fault::InvalidArgument, "\"" + std::string(addressText.substr(0, 200)) +
			       "\" is not an IPv4 address; give a shared address such as 198.51.100.1"};
	const config::Address *address = nullptr;
	if (index) {
		if (auto it = index->find(ip->value); it != index->end())
			address = &config_->addresses[it->second];
	} else {
		address = config_->findAddress(*ip);
	}
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
		return Failure{Fault::InvalidArgument, "\"" + std::string(serverName.substr(0, 200)) +
			       "\" is not a server of the fleet (it has: " + joinNames(known) + ")"};
	}
	*addressIndex = static_cast<uint32_t>(address - config_->addresses.data());
	*ipOut = *ip;
	return std::nullopt;
}

Answer<uint64_t> Service::setSliceOwner(std::string_view addressText, uint32_t slice, std::string_view serverName)
{
	return setSliceOwnerDraining(addressText, slice, serverName, options_.drain);
}

Answer<uint64_t> Service::setSliceOwners(const std::vector<OwnerMove> &moves, uint32_t drainSeconds)
{
	if (!config_)
		return fail({Fault::InvalidConfig, "no configuration is applied (" + lastError_ +
			     "); fix " + options_.configPath + " and reload first"}, false);
	if (moves.empty())
		return generation_;
	if (moves.size() == 1)
		return setSliceOwnerDraining(moves[0].address, moves[0].slice, moves[0].server,
					     std::chrono::seconds(drainSeconds));

	std::unordered_map<uint32_t, uint32_t> index;
	index.reserve(config_->addresses.size());
	for (size_t i = 0; i < config_->addresses.size(); i++)
		index.emplace(config_->addresses[i].address.value, static_cast<uint32_t>(i));
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
	bool changed = false;
	int64_t t = now();
	for (size_t m = 0; m < moves.size(); m++) {
		const OwnerMove &move = moves[m];
		uint32_t at = 0;
		Ipv4 ip;
		if (std::optional<Failure> bad = checkMove(move.address, move.slice, move.server, &index, &at, &ip)) {
			bad->message = "move " + std::to_string(m + 1) + " of " + std::to_string(moves.size()) + ": " +
				       bad->message + "; nothing was moved";
			return fail(*bad, false);
		}
		Key key{ip, move.slice};
		if (!seen.insert(key).second)
			return fail({Fault::InvalidArgument, "move " + std::to_string(m + 1) + " of " +
				     std::to_string(moves.size()) + ": slice " + std::to_string(move.slice) + " of " +
				     ip.str() + " is moved twice in one call; nothing was moved"}, false);
		config::Address &address = next.addresses[at];
		auto current = address.owners.find(move.slice);
		bool same = current != address.owners.end() && current->second == move.server;
		bool drainEnds = drains.erase(key) > 0;
		if (same && !drainEnds)
			continue;
		changed = true;
		std::optional<std::string> previous;
		auto inFile = fileSlices_.find(ip.value);
		if (!same && current != address.owners.end() && drainSeconds > 0) {
			drains[key] = SliceDrain{ip, move.slice, current->second, t + int64_t{drainSeconds}};
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
	}
	if (!changed)
		return generation_; // already so: nothing to apply, nothing to persist
	std::vector<config::Diagnostic> errors = config::validate(next);
	if (config::hasErrors(errors))
		return fail({Fault::InvalidArgument, errorLines(errors)}, false);
	Overlay nextOverlay;
	nextOverlay.reserve(overlay.size());
	for (auto &[key, server] : overlay)
		nextOverlay.push_back(OwnerOverride{key.first, key.second, std::move(server)});
	Drains nextDrains;
	nextDrains.reserve(drains.size());
	for (auto &[key, drain] : drains)
		nextDrains.push_back(std::move(drain));
	listener_.log("moving " + std::to_string(moves.size()) + " slices in one generation" +
		      (drainSeconds ? " (old owners drain " + std::to_string(drainSeconds) + " s)" : ""));
	return commit(std::move(next), std::move(nextOverlay), std::move(nextDrains), true, Fault::InvalidArgument,
		      true);
}

Answer<uint64_t> Service::setSliceOwnerDraining(std::string_view addressText, uint32_t slice,
						 std::string_view serverName, std::chrono::seconds drain)
{
	if (!config_)
		return fail({Fault::InvalidConfig, "no configuration is applied (" + lastError_ +
			     "); fix " + options_.configPath + " and reload first"}, false);
	uint32_t index = 0;
	Ipv4 checked;
	if (std::optional<Failure> bad = checkMove(addressText, slice, serverName, nullptr, &index, &checked))
		return fail(*bad, false);
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
		return fail({Fault::InvalidArgument, errorLines(errors)}, false);
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
	if (Status saved = store_.save({overlay, generation_ + 1, drains}); !saved) {
		plan::undoMove(*plan_, std::move(*move));
		return fail({Fault::ApplyFailed, saved.error().wrap("keeping the slice owners").message() +
			     "; nothing was applied"}, false);
	}
	Clock::time_point t2 = Clock::now();
	if (Status applied = backend_.applyMove(*plan_, *move, generation_ + 1); !applied) {
		plan::undoMove(*plan_, std::move(*move));
		if (Status back = store_.save({overlay_, generation_, drains_}); !back)
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
	overlay_ = std::move(overlay);
	drains_ = std::move(drains);
	++generation_;
	std::vector<std::string> properties{"Generation"};
	if (!lastError_.empty())
		properties.push_back("LastError");
	lastError_.clear();
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
	listener_.applied(generation_);
	listener_.propertiesChanged(properties);
	return generation_;
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
	if (std::none_of(drains_.begin(), drains_.end(), [&](const SliceDrain &d) { return d.until <= t; }))
		return;
	// The applied config without the ended drains: those slices get back the
	// previous owner the file names, if any.
	config::Config next = *config_;
	Drains kept;
	for (const SliceDrain &d : drains_) {
		if (d.until > t) {
			kept.push_back(d);
			continue;
		}
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
	(void)commit(std::move(next), overlay_, std::move(kept), true, Fault::ApplyFailed, true);
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
	if (!planned.ok())
		return fail({planFault, errorLines(planned.diagnostics)}, planFault != Fault::InvalidArgument);
	for (const config::Diagnostic &d : planned.diagnostics)
		if (d.severity == config::Diagnostic::Severity::Warning)
			listener_.log(d.str());

	// A slice that changed owner changes the plan; otherwise compare (the
	// hash renders the whole plan, so it is not done when it is not needed).
	bool same = !changed && plan_ && state_ != State::Failed && planned.plan->hash() == plan_->hash();
	// Persist before the kernel changes: a crash in between re-applies the
	// new state on start, never loses a change a caller was told about.
	persist = persist || !same;
	if (persist) {
		if (Status saved = store_.save({overlay, same ? generation_ : generation_ + 1, drains}); !saved)
			return fail({Fault::ApplyFailed, saved.error().wrap("keeping the slice owners").message() +
				     "; nothing was applied"}, false);
	}
	Clock::time_point t2 = Clock::now();
	if (!same) {
		Status applied = backend_.apply(*planned.plan, plan_ ? &*plan_ : nullptr, generation_ + 1);
		if (!applied) {
			if (persist) {
				if (Status back = store_.save({overlay_, generation_, drains_}); !back)
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
	std::vector<std::string> properties;
	if (!same) {
		++generation_;
		properties.push_back("Generation");
	}
	if (state_ != State::Applied)
		properties.push_back("State");
	if (!lastError_.empty())
		properties.push_back("LastError");
	if (server_ != planned.plan->server)
		properties.push_back("Server");
	server_ = planned.plan->server;
	state_ = State::Applied;
	lastError_.clear();
	repairFailed_ = false;
	plan_ = std::move(planned.plan);
	config_ = std::move(config);
	overlay_ = std::move(overlay);
	drains_ = std::move(drains);
	if (!same) {
		listener_.logEvent(6, "applied generation " + std::to_string(generation_) + " (server " + server_ + ", " +
					      std::to_string(plan_->sources.size()) + " sources, " +
					      std::to_string(plan_->addresses.size()) + " addresses; ms: plan " + ms(t0, t1) +
					      ", persist " + ms(t1, t2) + ", apply " + ms(t2, t3) + ")",
				   {{"GENERATION", std::to_string(generation_)}, {"PLAN_MS", ms(t0, t1)},
				    {"PERSIST_MS", ms(t1, t2)}, {"APPLY_MS", ms(t2, t3)}});
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
	return plan::toJson(*plan_);
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
		return Failure{Fault::InvalidArgument, "\"" + std::string(addressText) + "\" is not an IPv4 address"};
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

void Service::restore(std::string_view what)
{
	if (!plan_ || state_ == State::Failed)
		return;
	listener_.logEvent(4, "drift: " + std::string(what) + "; restoring generation " + std::to_string(generation_), {});
	Status restored = backend_.apply(*plan_, nullptr, generation_);
	if (!restored) {
		repairFailed_ = true;
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
	if (!repairFailed_)
		return;
	repairFailed_ = false;
	if (state_ == State::Degraded) {
		state_ = State::Applied;
		lastError_.clear();
		listener_.propertiesChanged({"State", "LastError"});
	}
}

} // namespace portslice::service
