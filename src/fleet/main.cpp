// SPDX-License-Identifier: MIT
// portslice-fleetd: keeps this server's membership in etcd, leads when elected, and hands every ownership change to the local portsliced.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <filesystem>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include <curl/curl.h>
#include <nlohmann/json.hpp>
#include <sdbus-c++/sdbus-c++.h>

#include "common/cli.h"
#include "common/version.h"
#include "config/config.h"
#include "fleet/etcd.h"
#include "fleet/ownership.h"
#include "fleet/status.h"
#include "fleet/view.h"


namespace portslice::fleet {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using nlohmann::json;

std::atomic<bool> gStop{false};

void onSignal(int)
{
	gStop = true;
}

int64_t unixNow()
{
	return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
		.count();
}

void log(const std::string &line)
{
	std::cerr << line << std::endl;
}

struct Options {
	std::string config = "/etc/portslice/portslice.toml";
	std::string statusFile = kDefaultStatusFile;
	uint32_t drainSeconds = 60;
};

// What the threads share, under `mutex`.
struct Shared {
	std::mutex mutex;
	std::condition_variable changed;
	uint64_t version = 0; // grows with every change of `view`
	View view;
	bool listed = false;  // the view was read from etcd at least once
	LinkStatus status;
	// The daemon as the applier last found it: it answers and takes the
	// fleet's owners. Until then this server does not join; after a lease
	// without, it leaves (its slices go to the others).
	bool daemonOk = false;
	Clock::time_point daemonBadSince = Clock::now();
	uint64_t daemonChanges = 0; // grows with every change of daemonOk
};

// The daemon's org.portslice.Egress1, called by name: fleetd uses a few
// members and is not rebuilt when the interface gains others.
class Daemon {
public:
	explicit Daemon(sdbus::IConnection &connection)
		: proxy_(sdbus::createProxy(connection, "org.portslice.Egress1", "/org/portslice/Egress1"))
	{
	}

	uint64_t generation()
	{
		return proxy_->getProperty("Generation").onInterface(kInterface).get<uint64_t>();
	}
	// Owners(): (address, slice, owner, previous, drain deadline) of every slice.
	using OwnerRow = sdbus::Struct<std::string, uint32_t, std::string, std::string, uint64_t>;
	std::vector<OwnerRow> owners()
	{
		std::vector<OwnerRow> rows;
		proxy_->callMethod("Owners").onInterface(kInterface).storeResultsTo(rows);
		return rows;
	}
	uint64_t setSliceOwners(const std::vector<sdbus::Struct<std::string, uint32_t, std::string>> &moves,
				uint32_t drainSeconds)
	{
		uint64_t generation = 0;
		proxy_->callMethod("SetSliceOwners")
			.onInterface(kInterface)
			.withArguments(moves, drainSeconds)
			.storeResultsTo(generation);
		return generation;
	}

	// The same with a drain per move (an extra member of the interface, docs/operations.md).
	uint64_t setSliceOwnersDrains(const std::vector<sdbus::Struct<std::string, uint32_t, std::string, uint32_t>> &moves)
	{
		uint64_t generation = 0;
		proxy_->callMethod("SetSliceOwnersDrains").onInterface(kInterface).withArguments(moves).storeResultsTo(generation);
		return generation;
	}

private:
	static constexpr const char *kInterface = "org.portslice.Egress1";
	std::unique_ptr<sdbus::IProxy> proxy_;
};

class Fleetd {
public:
	Fleetd(Options options, config::Config config)
		: options_(std::move(options)), config_(std::move(config)), fleet_(*config_.fleet),
		  self_(config_.serverName)
	{
		for (size_t i = 0; i < config_.addresses.size(); i++)
			addressIndex_.emplace(config_.addresses[i].address.value, i);
		for (size_t i = 0; i < config_.servers.size(); i++)
			serverIndex_.emplace(config_.servers[i].name, static_cast<int32_t>(i));
		std::lock_guard lock(shared_.mutex);
		shared_.view.table = &config_;
		shared_.status.server = self_;
		shared_.status.pid = getpid();
		shared_.status.leaseSeconds = fleet_.leaseSeconds;
		shared_.status.error = "not connected to etcd yet";
	}

	int run()
	{
		writeStatus();
		std::thread watcher([this] { watchLoop(); });
		std::thread session([this] { sessionLoop(); });
		applyLoop();
		gStop = true;
		shared_.changed.notify_all();
		watcher.join();
		session.join();
		return 0;
	}

private:
	EtcdOptions etcdOptions() const
	{
		EtcdOptions o;
		o.endpoints = fleet_.etcd;
		o.caFile = fleet_.caFile;
		o.certFile = fleet_.certFile;
		o.keyFile = fleet_.keyFile;
		// A request must end well within a lease, so that a keep-alive
		// can still go to the next endpoint in time.
		auto lease = milliseconds(fleet_.leaseSeconds * 1000);
		o.requestTimeout = std::min(milliseconds(1000), lease / 3);
		o.connectTimeout = std::min(milliseconds(300), o.requestTimeout);
		return o;
	}

	// Sleep for `d` or until stopped; false when stopped.
	bool pause(milliseconds d)
	{
		std::unique_lock lock(shared_.mutex);
		return !shared_.changed.wait_for(lock, d, [] { return gStop.load(); });
	}

	void etcdUp(const std::string &endpoint)
	{
		std::lock_guard lock(shared_.mutex);
		shared_.status.etcdReachable = true;
		shared_.status.endpoint = endpoint;
		shared_.status.error.clear();
		shared_.status.lastContact = unixNow();
	}

	void etcdDown(const std::string &why)
	{
		bool was;
		{
			std::lock_guard lock(shared_.mutex);
			was = shared_.status.etcdReachable || shared_.status.error != why;
			shared_.status.etcdReachable = false;
			shared_.status.error = why;
		}
		if (was)
			log("etcd: " + why);
	}

	// Called by the session thread and the applier: one write at a time, so
	// that an older snapshot never replaces a newer one, and every failure
	// that differs from the last is logged (and a recovery too).
	void writeStatus()
	{
		std::lock_guard writing(statusMutex_);
		LinkStatus s;
		{
			std::lock_guard lock(shared_.mutex);
			s = shared_.status;
			s.updated = unixNow();
			const View &v = shared_.view;
			s.leader = v.leader;
			s.revision = v.revision;
			s.liveServers.clear();
			s.members.clear();
			if (v.live)
				s.liveServers.assign(v.live->servers.begin(), v.live->servers.end());
			for (const auto &[name, m] : v.members)
				s.members.push_back(name);
			s.live = v.live && v.live->servers.count(self_);
		}
		std::error_code ec;
		std::filesystem::create_directories(std::filesystem::path(options_.statusFile).parent_path(), ec);
		Status w = writeStatusFile(options_.statusFile, s);
		std::string why = w ? std::string() : w.error().message();
		if (why != statusError_)
			log(why.empty() ? "status: " + options_.statusFile + " written again" : "status: " + why);
		statusError_ = why;
	}

	// The watcher: list the prefix, then watch it from the next revision;
	// after a compaction list again; after an error resume from the last
	// revision seen, with a backoff.
	void watchLoop()
	{
		Etcd etcd(etcdOptions());
		std::string from = fleet_.prefix + "/";
		std::string to = prefixEnd(from);
		int64_t revision = 0; // the last revision in the view; 0: list first
		milliseconds backoff(100);
		while (!gStop) {
			if (revision == 0) {
				Result<RangeAnswer> listed = etcd.range(from, to);
				if (!listed) {
					etcdDown(listed.error().message());
					pause(backoff);
					backoff = std::min(backoff * 2, milliseconds(2000));
					continue;
				}
				etcdUp(etcd.endpoint());
				View view;
				view.table = &config_;
				for (const KeyValue &kv : listed->kvs) {
					std::string why = view.put(fleet_.prefix, kv.key, kv.value, kv.modRevision, kv.lease);
					if (!why.empty())
						log("ignoring etcd key " + kv.key + ": " + why);
				}
				view.revision = listed->revision;
				revision = listed->revision;
				{
					std::lock_guard lock(shared_.mutex);
					shared_.view = std::move(view);
					shared_.listed = true;
					shared_.version++;
				}
				shared_.changed.notify_all();
				log("etcd: listed " + std::to_string(listed->kvs.size()) + " keys of " + fleet_.prefix +
				    " at revision " + std::to_string(revision));
			}
			auto onEvents = [&](const std::vector<WatchEvent> &events, int64_t atRevision) {
				{
					std::lock_guard lock(shared_.mutex);
					for (const WatchEvent &e : events) {
						if (e.deleted) {
							shared_.view.erase(fleet_.prefix, e.kv.key);
						} else {
							std::string why = shared_.view.put(fleet_.prefix, e.kv.key, e.kv.value,
											   e.kv.modRevision, e.kv.lease);
							if (!why.empty())
								log("ignoring etcd key " + e.kv.key + ": " + why);
						}
						revision = std::max(revision, e.kv.modRevision);
					}
					revision = std::max(revision, atRevision);
					shared_.view.revision = revision;
					shared_.version++;
					shared_.status.lastContact = unixNow();
				}
				shared_.changed.notify_all();
			};
			Result<int64_t> ended = etcd.watch(from, to, revision + 1, onEvents, gStop);
			if (gStop)
				break;
			if (ended && *ended > 0) {
				log("etcd: revision " + std::to_string(revision + 1) + " was compacted (to " +
				    std::to_string(*ended) + "): listing " + fleet_.prefix + " again");
				revision = 0;
				continue;
			}
			if (!ended)
				etcdDown(ended.error().message());
			pause(backoff);
			backoff = std::min(backoff * 2, milliseconds(2000));
			if (ended)
				backoff = milliseconds(100);
		}
	}

	// Membership and leadership: a lease kept alive, the member key bound to
	// it, the leader key won with a create-if-absent transaction, and as
	// leader the `live` key kept up to date.
	void sessionLoop()
	{
		Etcd etcd(etcdOptions());
		int64_t lease = 0, ttl = fleet_.leaseSeconds;
		Clock::time_point lastKeepAlive{};
		Clock::time_point leaderSince{};
		bool leading = false;
		uint64_t seen = 0;
		milliseconds backoff(100);
		while (!gStop) {
			bool daemonOk;
			Clock::time_point daemonBadSince;
			uint64_t daemonSeen;
			{
				std::lock_guard lock(shared_.mutex);
				daemonOk = shared_.daemonOk;
				daemonBadSince = shared_.daemonBadSince;
				daemonSeen = shared_.daemonChanges;
			}
			auto leaseLength = milliseconds(fleet_.leaseSeconds * 1000);
			if (lease && !daemonOk && Clock::now() - daemonBadSince >= leaseLength) {
				// live is "the servers that own their slices now": a server whose
				// daemon does not answer or refuses the fleet's owners is not one.
				// Without its lease its member key (and the leader key, if it led)
				// go, and the leader hands its slices to the others.
				log("etcd: leaving the fleet: portsliced has not taken the fleet's owners for " +
				    std::to_string(fleet_.leaseSeconds) + " s; revoking lease " + std::to_string(lease));
				if (Status revoked = etcd.revoke(lease); !revoked)
					log("etcd: revoking lease " + std::to_string(lease) + ": " + revoked.error().message() +
					    " (it expires by itself)");
				lease = 0;
				leading = false;
				{
					std::lock_guard lock(shared_.mutex);
					shared_.status.lease = 0;
				}
				writeStatus();
				continue;
			}
			if (!lease && !daemonOk) {
				// Join only once the daemon has answered: a member takes slices.
				// The status file stays fresh meanwhile (status says why).
				writeStatus();
				std::unique_lock lock(shared_.mutex);
				shared_.changed.wait_for(lock, milliseconds(1000), [&] {
					return gStop.load() || shared_.daemonChanges != daemonSeen;
				});
				continue;
			}
			if (!lease) {
				Result<int64_t> granted = etcd.grant(fleet_.leaseSeconds, &ttl);
				if (!granted) {
					etcdDown(granted.error().message());
					writeStatus();
					pause(backoff);
					backoff = std::min(backoff * 2, milliseconds(2000));
					continue;
				}
				lease = *granted;
				if (ttl != fleet_.leaseSeconds)
					log("etcd granted a lease of " + std::to_string(ttl) + " s (lease_seconds is " +
					    std::to_string(fleet_.leaseSeconds) + ")");
				Member me;
				me.address = config_.findServer(self_) ? config_.findServer(self_)->address.str() : "";
				me.since = unixNow();
				me.version = PORTSLICE_VERSION;
				Result<int64_t> put = etcd.put(memberKey(fleet_.prefix, self_), encodeMember(me), lease);
				if (!put) {
					etcdDown(put.error().message());
					lease = 0;
					pause(backoff);
					backoff = std::min(backoff * 2, milliseconds(2000));
					continue;
				}
				etcdUp(etcd.endpoint());
				lastKeepAlive = Clock::now();
				log("etcd: member " + self_ + " with lease " + std::to_string(lease) + " (" +
				    std::to_string(ttl) + " s) via " + etcd.endpoint());
				{
					std::lock_guard lock(shared_.mutex);
					shared_.status.lease = lease;
				}
			}
			milliseconds interval = std::clamp(milliseconds(ttl * 1000 / 3), milliseconds(200), milliseconds(5000));
			if (Clock::now() - lastKeepAlive >= interval) {
				Result<int64_t> left = etcd.keepAlive(lease);
				bool gone = !left && left.error().message().find("lease not found") != std::string::npos;
				if (!left && !gone) {
					// Keep the lease: etcd may come back before it expires
					// (a restarted etcd renews every lease), and say so when
					// it does not.
					etcdDown(left.error().message());
				} else if (gone || *left <= 0) {
					log("etcd: lease " + std::to_string(lease) + " expired; joining again");
					lease = 0;
					leading = false;
					{
						std::lock_guard lock(shared_.mutex);
						shared_.status.lease = 0;
					}
					continue;
				} else {
					etcdUp(etcd.endpoint());
					lastKeepAlive = Clock::now();
					backoff = milliseconds(100);
				}
				writeStatus();
			}

			// Leadership and `live`, on what the watcher last saw.
			View view;
			bool listed;
			{
				std::lock_guard lock(shared_.mutex);
				view = shared_.view;
				listed = shared_.listed;
				seen = shared_.version;
			}
			if (listed && lease && daemonOk && view.leader.empty()) {
				json compare = json::array({{{"target", "CREATE"}, {"key", base64Encode(leaderKey(fleet_.prefix))},
							     {"create_revision", "0"}}});
				json success = json::array({{{"request_put", {{"key", base64Encode(leaderKey(fleet_.prefix))},
										  {"value", base64Encode(self_)},
										  {"lease", std::to_string(lease)}}}}});
				Result<TxnAnswer> won = etcd.txn(compare, success);
				if (won && won->succeeded)
					log("etcd: elected leader of " + fleet_.prefix + " at revision " +
					    std::to_string(won->revision));
				else if (!won)
					etcdDown(won.error().message());
			}
			bool nowLeading = view.leader == self_ && lease;
			if (nowLeading && !leading)
				leaderSince = Clock::now();
			leading = nowLeading;
			{
				std::lock_guard lock(shared_.mutex);
				shared_.status.leader = view.leader;
			}
			if (leading && listed)
				lead(etcd, view, leaderSince, lease);

			// Until the next keep-alive, or a change the leader must act on.
			std::unique_lock lock(shared_.mutex);
			auto next = lastKeepAlive + interval;
			if (!shared_.status.etcdReachable)
				next = Clock::now() + backoff;
			shared_.changed.wait_until(lock, next, [&] {
				return gStop.load() || shared_.version != seen || shared_.daemonChanges != daemonSeen;
			});
			// At most a third of the lease between tries: when etcd comes
			// back, the keep-alive must reach it before the lease ends.
			if (!shared_.status.etcdReachable)
				backoff = std::min(backoff * 2, interval);
		}
	}

	// The leader's one duty: `live` = the members still alive, plus those
	// back for return_home_seconds. `since` and now are whole seconds, so a
	// difference of R can be as little as R - 1 s of life; more than R
	// guarantees R. The first `live` of a fleet waits one lease after the
	// election, so that servers starting together all enter it.
	void lead(Etcd &etcd, const View &view, Clock::time_point leaderSince, int64_t lease)
	{
		(void)lease;
		int64_t now = unixNow();
		std::set<std::string> next;
		for (const auto &[name, member] : view.members) {
			if (!config_.findServer(name))
				continue; // not a server of this fleet table
			bool wasLive = view.live && view.live->servers.count(name);
			if (!view.live || wasLive || now - member.since > int64_t{fleet_.returnHomeSeconds})
				next.insert(name);
		}
		if (!view.live && Clock::now() - leaderSince < milliseconds(fleet_.leaseSeconds * 1000))
			return;
		if (view.live && view.live->servers == next)
			return;
		Live live{next, now};
		json compare = json::array(
			{{{"target", "VALUE"}, {"key", base64Encode(leaderKey(fleet_.prefix))}, {"value", base64Encode(self_)}},
			 {{"target", "MOD"}, {"key", base64Encode(liveKey(fleet_.prefix))},
			  {"mod_revision", std::to_string(view.liveModRevision)}}});
		json success = json::array({{{"request_put", {{"key", base64Encode(liveKey(fleet_.prefix))},
							       {"value", base64Encode(encodeLive(live))}}}}});
		Result<TxnAnswer> wrote = etcd.txn(compare, success);
		if (!wrote) {
			etcdDown(wrote.error().message());
			return;
		}
		std::string list;
		for (const std::string &s : next)
			list += (list.empty() ? "" : ", ") + s;
		if (wrote->succeeded)
			log("leader: live = [" + list + "] at revision " + std::to_string(wrote->revision));
	}

	// The daemon's owners, from its Owners() (typed, every slice; Plan()'s
	// JSON passes the bus's 32 MiB message limit at 10,000 addresses): per
	// address of the file, per slice, a server index or -1.
	bool readDaemon(Daemon &daemon)
	{
		std::vector<Daemon::OwnerRow> rows = daemon.owners();
		drains_.clear();
		daemonOwners_.assign(config_.addresses.size(), {});
		for (size_t i = 0; i < config_.addresses.size(); i++)
			daemonOwners_[i].assign(config_.addresses[i].sliceCount(), -1);
		for (const Daemon::OwnerRow &row : rows) {
			std::optional<Ipv4> ip = Ipv4::parse(std::get<0>(row));
			if (!ip)
				return false;
			auto at = addressIndex_.find(ip->value);
			if (at == addressIndex_.end())
				continue; // the daemon applies another file: its own business
			std::vector<int32_t> &owners = daemonOwners_[at->second];
			uint32_t slice = std::get<1>(row);
			if (slice >= owners.size())
				continue;
			auto s = serverIndex_.find(std::get<2>(row));
			owners[slice] = s == serverIndex_.end() ? -1 : s->second;
			auto p = serverIndex_.find(std::get<3>(row));
			if (p != serverIndex_.end() && std::get<4>(row) > 0)
				drains_[{at->second, slice}] = {p->second, static_cast<int64_t>(std::get<4>(row))};
		}
		return true;
	}

	void applyFailed(const std::string &why)
	{
		bool fresh;
		{
			std::lock_guard lock(shared_.mutex);
			fresh = shared_.status.applyError != why;
			shared_.status.applyError = why;
		}
		if (fresh)
			log("portsliced: " + why);
		writeStatus();
	}

	// The daemon's health as the session loop reads it; `why` is "" when it is well.
	void daemonState(bool ok, const std::string &why)
	{
		bool changed;
		{
			std::lock_guard lock(shared_.mutex);
			changed = shared_.daemonOk != ok;
			if (changed) {
				shared_.daemonOk = ok;
				shared_.daemonBadSince = Clock::now();
				shared_.daemonChanges++;
			}
		}
		if (changed)
			log(ok ? std::string("portsliced: answers and takes the fleet's owners")
			       : "portsliced: " + why + " (this server leaves live after " +
					 std::to_string(fleet_.leaseSeconds) + " s of this)");
		if (changed)
			shared_.changed.notify_all();
	}

	// One slice to hand over: slice `slice` of config_.addresses[address] to
	// config_.servers[to], its old owner draining `drain` s.
	struct Move {
		size_t address;
		uint32_t slice;
		int32_t to;
		uint32_t drain;
	};

	// How long the daemon's owner `have` of a slice drains when it moves: a
	// dead one has nothing to drain; a live one drains until the owners/ key's
	// `until` when the key names it as `previous` (0 when that is past), else
	// for --drain-seconds (a key without a deadline, "until": 0, or a move the
	// key's writer did not foresee: the fleet's own failover and return home).
	uint32_t drainOf(const View &view, const Ownership &ownership, size_t a, uint32_t s, int32_t have,
			 int64_t now) const
	{
		if (have < 0 || !ownership.live(have))
			return 0;
		auto key = view.owners.find({config_.addresses[a].address.value, s});
		if (key != view.owners.end() && key->second.until > 0 &&
		    key->second.previous == config_.servers[static_cast<size_t>(have)].name)
			return static_cast<uint32_t>(std::clamp<int64_t>(key->second.until - now, 0, 86400));
		return options_.drainSeconds;
	}

	// Hand `moves` to the daemon in one call, one generation: SetSliceOwners
	// when they all drain alike (the usual case), else SetSliceOwnersDrains.
	// A daemon older than SetSliceOwnersDrains gets one SetSliceOwners per
	// drain length instead.
	void handOver(Daemon &daemon, const std::vector<Move> &moves, int64_t revision, int64_t now)
	{
		auto nameOf = [&](int32_t server) { return config_.servers[static_cast<size_t>(server)].name; };
		std::map<uint32_t, std::vector<const Move *>> byDrain;
		for (const Move &m : moves)
			byDrain[m.drain].push_back(&m);
		auto done = [&](const std::vector<const Move *> &made, uint64_t generation, double ms) {
			for (const Move *m : made) {
				int32_t was = daemonOwners_[m->address][m->slice];
				daemonOwners_[m->address][m->slice] = m->to;
				if (m->drain > 0 && was >= 0 && was != m->to)
					drains_[{m->address, m->slice}] = {was, now + m->drain};
				else
					drains_.erase({m->address, m->slice});
			}
			daemonGeneration_ = generation;
			std::string lengths;
			for (const auto &[drain, group] : byDrain)
				if (std::any_of(made.begin(), made.end(), [&](const Move *m) { return m->drain == drain; }))
					lengths += (lengths.empty() ? "" : ", ") + std::to_string(drain);
			log("portsliced: " + std::to_string(made.size()) + " slice(s) moved (drain " + lengths +
			    " s) in generation " + std::to_string(generation) + " for revision " + std::to_string(revision) +
			    " in " + std::to_string(ms) + " ms");
		};
		auto t0 = Clock::now();
		auto since = [&] { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); };
		if (byDrain.size() > 1 && drainsMember_) {
			std::vector<sdbus::Struct<std::string, uint32_t, std::string, uint32_t>> list;
			list.reserve(moves.size());
			for (const Move &m : moves)
				list.emplace_back(config_.addresses[m.address].address.str(), m.slice, nameOf(m.to), m.drain);
			try {
				uint64_t g = daemon.setSliceOwnersDrains(list);
				std::vector<const Move *> all;
				for (const Move &m : moves)
					all.push_back(&m);
				done(all, g, since());
				return;
			} catch (const sdbus::Error &e) {
				if (e.getName() != "org.freedesktop.DBus.Error.UnknownMethod")
					throw;
				drainsMember_ = false;
				log("portsliced: has no SetSliceOwnersDrains (" + e.getMessage() +
				    "): a change whose moves drain differently takes one SetSliceOwners per drain length");
			}
		}
		for (const auto &[drain, group] : byDrain) {
			t0 = Clock::now();
			std::vector<sdbus::Struct<std::string, uint32_t, std::string>> list;
			list.reserve(group.size());
			for (const Move *m : group)
				list.emplace_back(config_.addresses[m->address].address.str(), m->slice, nameOf(m->to));
			uint64_t g = daemon.setSliceOwners(list, drain);
			done(group, g, since());
		}
	}

	// The applier: each new view becomes the daemon's ownership, in one
	// call, one generation (handOver). Between views it asks the daemon its
	// generation every lease/3 at most, so that a daemon gone is noticed
	// within a lease.
	void applyLoop()
	{
		std::unique_ptr<sdbus::IConnection> connection;
		std::unique_ptr<Daemon> proxy;
		bool known = false; // daemonOwners_ holds the daemon's owners as of daemonGeneration_
		uint64_t seen = 0;
		milliseconds probe = std::clamp(milliseconds(fleet_.leaseSeconds * 1000 / 3), milliseconds(200),
						milliseconds(1000));
		milliseconds backoff(200);
		bool retry = false;
		// The owners/ keys of the view the daemon refused (an org.portslice
		// error, not a transport one): the same keys are not offered again as
		// a reason to rejoin, until they change or the daemon changes
		// (a reload, a local set-owner: its generation moves without us).
		std::optional<OwnerKeys> refused;
		while (!gStop) {
			View view;
			bool fresh;
			{
				std::unique_lock lock(shared_.mutex);
				shared_.changed.wait_for(lock, retry ? std::min(backoff, probe) : probe,
							 [&] { return gStop.load() || shared_.version != seen; });
				if (gStop)
					break;
				fresh = shared_.version != seen || retry;
				seen = shared_.version;
				view = shared_.view;
			}
			try {
				if (!proxy) {
					connection = sdbus::createSystemBusConnection();
					proxy = std::make_unique<Daemon>(*connection);
					known = false;
				}
				uint64_t generation = proxy->generation();
				if (refused && ((known && generation != daemonGeneration_) || *refused != view.owners)) {
					refused.reset(); // the daemon or the keys changed: it may take them now
					fresh = true;
				}
				if (!fresh || !view.live) {
					if (!refused)
						daemonState(true, {});
					retry = false;
					continue; // nothing new, or no fleet decision yet: the daemon keeps what it has
				}
				if (!known || generation != daemonGeneration_) {
					if (!readDaemon(*proxy)) {
						applyFailed("its Owners() names an address that is not IPv4");
						retry = true;
						continue;
					}
					daemonGeneration_ = generation;
					known = true;
					drainsMember_ = true; // a daemon restarted or upgraded may have it now
				}
				Ownership ownership(config_, view.live->servers, view.owners);
				int64_t now = unixNow();
				std::vector<Move> moves;
				for (size_t a = 0; a < config_.addresses.size(); a++) {
					const config::Address &address = config_.addresses[a];
					for (uint32_t s = 0; s < address.sliceCount(); s++) {
						int32_t want = ownership.owner(a, s);
						int32_t have = daemonOwners_[a][s];
						if (want < 0 || want == have)
							continue;
						moves.push_back({a, s, want, drainOf(view, ownership, a, s, have, now)});
					}
				}
				// A drain whose old owner has left live ends: a dead server has
				// no flows to finish (the same owner again, drain 0, ends it).
				for (auto it = drains_.begin(); it != drains_.end();) {
					const auto &[where, drain] = *it;
					const auto &[a, s] = where;
					int32_t owner = daemonOwners_[a][s];
					if (drain.second <= now) {
						it = drains_.erase(it); // over by itself
						continue;
					}
					if (!ownership.live(drain.first) && owner >= 0 && ownership.owner(a, s) == owner)
						moves.push_back({a, s, owner, 0});
					++it;
				}
				if (!moves.empty())
					handOver(*proxy, moves, view.revision, now);
				{
					std::lock_guard lock(shared_.mutex);
					shared_.status.appliedRevision = view.revision;
					shared_.status.appliedGeneration = daemonGeneration_;
					if (!refused)
						shared_.status.applyError.clear();
				}
				if (!refused)
					daemonState(true, {});
				writeStatus();
				retry = false;
				backoff = milliseconds(200);
			} catch (const sdbus::Error &e) {
				std::string why = e.getName() + ": " + e.getMessage();
				applyFailed(why);
				if (e.getName().starts_with("org.portslice.") &&
				    e.getName() != "org.portslice.Error.ApplyFailed") {
					// It answers but refuses the fleet's owners: it does not own
					// its slices as the fleet says, so it is not live. (A kernel
					// that failed to apply may take them on the next try: that is
					// retried below, and leaves live the same way if it lasts.)
					// The same owners again would be refused again: wait for a
					// change (the connection and what it read stay good).
					refused = view.owners;
					daemonState(false, "refuses the fleet's owners: " + why);
					retry = false;
					continue;
				}
				bool answered = e.getName().starts_with("org.portslice."); // ApplyFailed
				daemonState(false, (answered ? "did not apply the fleet's owners: " : "does not answer: ") + why);
				proxy.reset();
				connection.reset();
				known = false;
				retry = true;
				backoff = std::min(backoff * 2, milliseconds(5000));
			}
		}
	}

	Options options_;
	config::Config config_;
	config::Fleet fleet_;
	std::string self_;
	std::unordered_map<uint32_t, size_t> addressIndex_;
	std::unordered_map<std::string, int32_t> serverIndex_;
	std::vector<std::vector<int32_t>> daemonOwners_;
	// The daemon's drains: (address, slice) -> (previous owner, Unix deadline).
	std::map<std::pair<size_t, uint32_t>, std::pair<int32_t, int64_t>> drains_;
	uint64_t daemonGeneration_ = 0;
	bool drainsMember_ = true; // the daemon has SetSliceOwnersDrains, as far as fleetd knows
	Shared shared_;
	std::mutex statusMutex_;   // held across a whole writeStatus
	std::string statusError_;  // the last write's failure, "" when it worked
};

} // namespace
} // namespace portslice::fleet

int main(int argc, char **argv)
{
	using namespace portslice;
	CLI::App app{"Fleet mode: keep this server's member key in etcd (a lease kept alive), take part "
		     "in the leader election, and hand every ownership change watched in etcd to the local portsliced "
		     "(SetSliceOwners, one generation per change).",
		     "portslice-fleetd"};
	cli::setUp(app);
	fleet::Options options;
	app.add_option("--config", options.config,
		       "the fleet table with its [fleet] section (default: " + options.config + ")")
		->type_name("FILE");
	app.add_option("--status-file", options.statusFile,
		       "where the fleet link is kept for portslicectl status (default: " + options.statusFile + ")")
		->type_name("FILE");
	app.add_option("--drain-seconds", options.drainSeconds,
		       "seconds a live old owner drains a slice moved away from it, 0 to 86400 (default: 60)")
		->type_name("N")
		->check(CLI::Range(0u, 86400u).description(""));
	if (std::optional<int> code = cli::parse(app, argc, argv))
		return *code;
	config::LoadResult loaded = config::loadFile(options.config);
	for (const config::Diagnostic &d : loaded.diagnostics)
		std::cerr << d.str() << std::endl;
	if (!loaded.ok())
		return 1;
	if (!loaded.config->fleet) {
		std::cerr << options.config << ": no [fleet] section: fleet mode needs its etcd endpoints and prefix "
			  << "(see portslice-fleetd(8))" << std::endl;
		return 1;
	}
	std::signal(SIGTERM, fleet::onSignal);
	std::signal(SIGINT, fleet::onSignal);
	std::signal(SIGPIPE, SIG_IGN);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	fleet::Fleetd fleetd(options, std::move(*loaded.config));
	int rc = fleetd.run();
	curl_global_cleanup();
	return rc;
}
