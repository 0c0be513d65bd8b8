// SPDX-License-Identifier: MIT
// portsliced on a private system-type bus with the project's policy, in a network namespace, on the real kernel.
#include "dbus_lab.h"

#include <atomic>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <tuple>

#include <sdbus-c++/sdbus-c++.h>

#include "config/config.h"
#include "dbus/egress1_proxy.h"
#include "service/state_store.h"
#include "plan/plan.h"

namespace portslice::dbuslab {
namespace {

// The generated proxy on the private bus, recording the signals it sees.
class Egress1 final : public sdbus::ProxyInterfaces<org::portslice::Egress1_proxy> {
public:
	Egress1(sdbus::IConnection &connection)
		: ProxyInterfaces(connection, "org.portslice.Egress1", "/org/portslice/Egress1")
	{
		registerProxy();
	}
	~Egress1() { unregisterProxy(); }

	std::vector<uint64_t> applied() const
	{
		std::lock_guard lock(mutex_);
		return applied_;
	}
	std::vector<std::string> failed() const
	{
		std::lock_guard lock(mutex_);
		return failed_;
	}

private:
	void onApplied(const uint64_t &generation) override
	{
		std::lock_guard lock(mutex_);
		applied_.push_back(generation);
	}
	void onApplyFailed(const std::string &error) override
	{
		std::lock_guard lock(mutex_);
		failed_.push_back(error);
	}
	void onSliceOwnerChanged(const std::string &, const uint32_t &, const std::string &, const std::string &,
				 const uint64_t &) override
	{
	}

	mutable std::mutex mutex_;
	std::vector<uint64_t> applied_;
	std::vector<std::string> failed_;
};

// The PropertiesChanged signals of the service object: the State values sent.
class PropertyWatch final : public sdbus::ProxyInterfaces<sdbus::Properties_proxy> {
public:
	PropertyWatch(sdbus::IConnection &connection)
		: ProxyInterfaces(connection, "org.portslice.Egress1", "/org/portslice/Egress1")
	{
		registerProxy();
	}
	~PropertyWatch() { unregisterProxy(); }

	std::vector<std::string> states() const
	{
		std::lock_guard lock(mutex_);
		return states_;
	}

private:
	void onPropertiesChanged(const std::string &, const std::map<std::string, sdbus::Variant> &changed,
				 const std::vector<std::string> &) override
	{
		std::lock_guard lock(mutex_);
		auto state = changed.find("State");
		if (state != changed.end())
			states_.push_back(state->second.get<std::string>());
	}

	mutable std::mutex mutex_;
	std::vector<std::string> states_;
};

class ServiceLab : public DbusLab {
protected:
	void connect()
	{
		connection_ = sdbus::createSessionBusConnectionWithAddress(busAddress_);
		connection_->enterEventLoopAsync();
		proxy_ = std::make_unique<Egress1>(*connection_);
	}
	void TearDown() override
	{
		proxy_.reset();
		if (connection_)
			connection_->leaveEventLoop();
		connection_.reset();
		DbusLab::TearDown();
	}

	// The error name a call fails with, or "" when it succeeds.
	template<class F>
	std::string errorOf(F &&f)
	{
		try {
			f();
			return "";
		} catch (const sdbus::Error &e) {
			lastMessage_ = e.getMessage();
			return e.getName();
		}
	}

	// What the plan of `config` with the persisted overlay is, computed here.
	std::string expectedPlanJson()
	{
		config::LoadResult loaded = config::loadFile(configPath());
		EXPECT_TRUE(loaded.ok());
		Result<service::Persisted> persisted = service::StateStore(stateDir()).load();
		EXPECT_TRUE(persisted.ok());
		service::OverlayResult laid = service::applyOverlay(*loaded.config, persisted->overlay);
		plan::PlanResult planned = plan::makePlan(laid.config);
		EXPECT_TRUE(planned.ok());
		return plan::toJson(*planned.plan);
	}

	// Plan() with its "generation" checked against the property and taken out,
	// to compare with the plan computed offline.
	std::string planOf(Egress1 &proxy)
	{
		std::string json = proxy.Plan();
		std::string key = "\"generation\": " + std::to_string(proxy.Generation()) + ",";
		size_t at = json.find(key);
		EXPECT_NE(at, std::string::npos) << json;
		if (at == std::string::npos)
			return json;
		size_t next = json.find('"', at + key.size());
		json.erase(at, next - at);
		return json;
	}

	bool waitFor(const std::function<bool()> &done, std::chrono::milliseconds limit)
	{
		auto end = std::chrono::steady_clock::now() + limit;
		while (std::chrono::steady_clock::now() < end) {
			if (done())
				return true;
			std::this_thread::sleep_for(std::chrono::milliseconds(20));
		}
		return done();
	}

	// The lab's clients as addresses of the namespace, and a route to the
	// peer 203.0.113.10 out of the uplink.
	::testing::AssertionResult routeClients(const std::vector<std::string> &clients)
	{
		std::string command;
		for (const std::string &c : clients)
			command += "ip addr add " + c + "/32 dev lo && ";
		Outcome routed = inNs(command + "ip route add 203.0.113.0/24 dev up0 && "
					  "ip neigh add 203.0.113.10 lladdr 02:00:00:00:00:99 dev up0");
		if (!routed.ok())
			return ::testing::AssertionFailure() << routed.output;
		return ::testing::AssertionSuccess();
	}

	// `stats --prometheus`, after a newline so that "\nNAME" finds a whole name.
	std::string prometheus()
	{
		Outcome m = ctl("stats --prometheus");
		EXPECT_TRUE(m.ok()) << m.output;
		return "\n" + m.output;
	}
	// The value of one row of `stats` (text): KIND NAME COUNTER VALUE; -1 when it has none.
	double statsValue(const std::string &kind, const std::string &name, const std::string &counter)
	{
		Outcome text = ctl("stats");
		EXPECT_TRUE(text.ok()) << text.output;
		std::istringstream lines(text.output);
		std::string k, n, c;
		double value = -1, shown = -1;
		std::getline(lines, k); // the header
		while (lines >> k >> n >> c >> value)
			if (k == kind && n == name && c == counter)
				shown = value;
		return shown;
	}

	std::unique_ptr<sdbus::IConnection> connection_;
	std::unique_ptr<Egress1> proxy_;
	std::string lastMessage_;
};

TEST_F(ServiceLab, IntrospectionShowsExactlyTheSpecMembers)
{
	startDaemon();
	Outcome r = busctl("introspect org.portslice.Egress1 /org/portslice/Egress1 org.portslice.Egress1");
	ASSERT_TRUE(r.ok()) << r.output;
	std::set<std::string> members;
	std::istringstream lines(r.output);
	for (std::string line; std::getline(lines, line);) {
		if (line.empty() || line[0] != '.')
			continue;
		std::istringstream words(line);
		std::string name, type, signature, result;
		words >> name >> type >> signature >> result;
		members.insert(name + " " + type + " " + signature + (type == "method" ? " " + result : ""));
	}
	std::set<std::string> spec = {
		".Server property s",   ".Generation property t", ".State property s", ".LastError property s",
		".Reload method - t",   ".SetSliceOwner method sus t", ".Plan method - s", ".Dump method - s",
		".Owner method sq ss",  ".Stats method - a(ssst)", ".Applied signal t", ".ApplyFailed signal s",
		".SetSliceOwners method a(sus)u t",
		".Owners method - a(susst)", ".OwnerAt method sqt sstt", ".SliceOwnerChanged signal susst",
		// Beyond the core members, for portslicectl owner, history and audit (docs/operations.md, "D-Bus").
		".OwnerDetails method sqt a{ss}", ".History method t a(ttsusssss)", ".Audit method - as",
		// and for portslice-fleetd: SetSliceOwners with a drain per move.
		".SetSliceOwnersDrains method a(susu) t",
	};
	EXPECT_EQ(members, spec) << r.output;
}

TEST_F(ServiceLab, PropertiesAndMethodsReturnWhatThePlanSays)
{
	startDaemon();
	connect();
	EXPECT_EQ(proxy_->Server(), "s1");
	EXPECT_EQ(proxy_->State(), "applied");
	EXPECT_EQ(proxy_->Generation(), 1u);
	EXPECT_EQ(proxy_->LastError(), "");
	EXPECT_EQ(planOf(*proxy_), expectedPlanJson());
	// The audit trail: Dump() is what the kernel lists.
	EXPECT_EQ(proxy_->Dump(), table());
	EXPECT_EQ(std::get<0>(proxy_->Owner("198.51.100.1", 1024)), "s1");
	EXPECT_EQ(std::get<0>(proxy_->Owner("198.51.100.1", 3072)), "s2");
	EXPECT_EQ(std::get<0>(proxy_->Owner("198.51.100.1", 9000)), "s3");
	EXPECT_EQ(errorOf([&] { proxy_->Owner("198.51.100.1", 80); }), "org.portslice.Error.NotFound");
	EXPECT_EQ(errorOf([&] { proxy_->Owner("203.0.113.1", 2000); }), "org.portslice.Error.NotFound");
	auto rows = proxy_->Stats();
	std::set<std::string> kinds;
	for (const auto &row : rows)
		kinds.insert(row.get<0>() + "/" + row.get<1>());
	EXPECT_TRUE(kinds.contains("source/warp-gb")) << rows.size();
	EXPECT_TRUE(kinds.contains("address/198.51.100.1")) << rows.size();
}

TEST_F(ServiceLab, AnUnprivilegedCallerIsDeniedEverything)
{
	startDaemon();
	for (const char *member : {"Reload", "Plan", "Stats"}) {
		Outcome r = call(member, "", "nobody");
		EXPECT_FALSE(r.ok()) << member;
		EXPECT_NE(r.output.find("ccess denied"), std::string::npos) << member << ": " << r.output;
	}
	Outcome set = call("SetSliceOwner", "sus 198.51.100.1 1 s1", "nobody");
	EXPECT_NE(set.output.find("ccess denied"), std::string::npos) << set.output;
	Outcome prop = property("Generation", "nobody");
	EXPECT_NE(prop.output.find("ccess denied"), std::string::npos) << prop.output;
	EXPECT_EQ(generation(), 1u);

	Outcome status = ctl("status", "nobody");
	EXPECT_EQ(status.status, 4) << status.output;
	EXPECT_NE(status.output.find("access denied"), std::string::npos) << status.output;
}

TEST_F(ServiceLab, AMemberOfGroupPortsliceReadsButCannotChange)
{
	startDaemon();
	EXPECT_EQ(property("State", "portslice").output, "s \"applied\"\n");
	EXPECT_TRUE(call("Plan", "", "portslice").ok());
	EXPECT_TRUE(call("Dump", "", "portslice").ok());
	EXPECT_TRUE(call("Stats", "", "portslice").ok());
	Outcome owner = call("Owner", "sq 198.51.100.1 1024", "portslice");
	EXPECT_TRUE(owner.ok()) << owner.output;
	EXPECT_EQ(owner.output.substr(0, 8), "ss \"s1\" ") << owner.output;
	EXPECT_TRUE(busctl("introspect org.portslice.Egress1 /org/portslice/Egress1", "portslice").ok());
	for (const std::string &mutation :
	     {std::string("Reload"), std::string("SetSliceOwner sus 198.51.100.1 1 s1"),
	      std::string("SetSliceOwners 'a(sus)u' 1 198.51.100.1 1 s1 0"),
	      std::string("SetSliceOwnersDrains 'a(susu)' 1 198.51.100.1 1 s1 0")}) {
		std::string member = mutation.substr(0, mutation.find(' '));
		std::string args = mutation.find(' ') == std::string::npos ? "" : mutation.substr(mutation.find(' ') + 1);
		Outcome r = call(member, args, "portslice");
		EXPECT_NE(r.output.find("ccess denied"), std::string::npos) << mutation << ": " << r.output;
	}
	EXPECT_EQ(generation(), 1u);
}

TEST_F(ServiceLab, InvalidArgumentsLeaveGenerationAndTableUnchanged)
{
	startDaemon();
	connect();
	std::string before = table();
	ASSERT_NE(before.find("table inet portslice"), std::string::npos) << before;
	struct Case {
		const char *address;
		uint32_t slice;
		const char *server;
	};
	for (const Case &c : {Case{"198.51.100.99", 1, "s1"}, Case{"198.51.100.1", 4, "s1"},
			      Case{"198.51.100.1", 1, "nosuch"}, Case{"garbage", 1, "s1"}}) {
		EXPECT_EQ(errorOf([&] { proxy_->SetSliceOwner(c.address, c.slice, c.server); }),
			  "org.portslice.Error.InvalidArgument")
			<< c.address << " " << c.slice << " " << c.server;
		EXPECT_FALSE(lastMessage_.empty());
	}
	EXPECT_EQ(proxy_->Generation(), 1u);
	EXPECT_EQ(proxy_->State(), "applied");
	EXPECT_EQ(table(), before);
}

TEST_F(ServiceLab, SetSliceOwnerMovesASliceInOneGenerationAndSurvivesARestart)
{
	startDaemon();
	connect();
	EXPECT_EQ(proxy_->SetSliceOwner("198.51.100.1", 1, "s1"), 2u);
	EXPECT_TRUE(waitFor([&] { return proxy_->applied() == std::vector<uint64_t>{2}; },
			    std::chrono::milliseconds(2000)));
	EXPECT_EQ(std::get<0>(proxy_->Owner("198.51.100.1", 3072)), "s1");
	std::string moved = table();
	EXPECT_EQ(normalized(proxy_->Dump()), normalized(moved));
	EXPECT_EQ(planOf(*proxy_), expectedPlanJson());
	// The delta is no drift: the periodic check (every second) leaves it alone.
	std::this_thread::sleep_for(std::chrono::milliseconds(1300));
	EXPECT_EQ(readFile(logPath()).find("drift"), std::string::npos) << readFile(logPath());
	EXPECT_EQ(table(), moved);

	// SIGTERM leaves the table; a new daemon comes back with the move.
	proxy_.reset();
	connection_->leaveEventLoop();
	connection_.reset();
	stopDaemon(SIGTERM);
	EXPECT_EQ(table(), moved);
	startDaemon();
	connect();
	EXPECT_EQ(std::get<0>(proxy_->Owner("198.51.100.1", 3072)), "s1");
	EXPECT_EQ(planOf(*proxy_), expectedPlanJson());
	EXPECT_EQ(normalized(proxy_->Dump()), normalized(table()));
}

TEST_F(ServiceLab, KillNineDuringFiftyMutationsLeavesNothingHalfApplied)
{
	startDaemon();
	connect();
	std::mt19937 random(static_cast<uint32_t>(::getpid()));
	std::uniform_int_distribution<int> killAt(5, 45);
	int victim = killAt(random);
	const char *servers[] = {"s1", "s2", "s3"};
	const char *addresses[] = {"198.51.100.1", "198.51.100.2"};
	int failedCalls = 0;
	for (int i = 0; i < 50; ++i) {
		if (i == victim) {
			// Kill while the next call is in flight.
			std::thread killer([this] {
				std::this_thread::sleep_for(std::chrono::microseconds(300));
				::kill(daemonPid_, SIGKILL);
			});
			try {
				proxy_->SetSliceOwner(addresses[i % 2], static_cast<uint32_t>(random() % 3),
						      servers[random() % 3]);
			} catch (const sdbus::Error &) {
				++failedCalls;
			}
			killer.join();
			::waitpid(daemonPid_, nullptr, 0);
			daemonPid_ = -1;
			break;
		}
		try {
			proxy_->SetSliceOwner(addresses[i % 2], static_cast<uint32_t>(random() % 3),
					      servers[random() % 3]);
		} catch (const sdbus::Error &e) {
			ADD_FAILURE() << "call " << i << ": " << e.getMessage();
		}
	}
	proxy_.reset();
	connection_->leaveEventLoop();
	connection_.reset();
	startDaemon();
	connect();
	EXPECT_EQ(proxy_->State(), "applied");
	EXPECT_EQ(planOf(*proxy_), expectedPlanJson());
	EXPECT_EQ(normalized(proxy_->Dump()), normalized(table()));
}

TEST_F(ServiceLab, ATableDeletedOrEditedByHandIsRestoredWithinTwoSeconds)
{
	startDaemon();
	std::string applied = table();
	ASSERT_NE(applied.find("table inet portslice"), std::string::npos);
	Outcome deleted = inNs("nft delete table inet portslice");
	ASSERT_TRUE(deleted.ok()) << deleted.output;
	auto start = std::chrono::steady_clock::now();
	bool restored = false;
	while (std::chrono::steady_clock::now() - start < std::chrono::seconds(2)) {
		if (table() == applied) {
			restored = true;
			break;
		}
		std::this_thread::sleep_for(std::chrono::milliseconds(20));
	}
	EXPECT_TRUE(restored) << table();
	// Noticed through the nftables event, not the periodic check: the log names who did it.
	EXPECT_NE(readFile(logPath()).find("changed by a commit by nft pid"), std::string::npos) << readFile(logPath());

	// An edit inside the table is a change too: flush one chain.
	Outcome chains = inNs("nft -s list table inet portslice | awk '$1 == \"chain\" {print $2; exit}'");
	ASSERT_TRUE(chains.ok() && !chains.output.empty()) << chains.output;
	std::string chain = chains.output.substr(0, chains.output.find('\n'));
	ASSERT_TRUE(inNs("nft flush chain inet portslice " + chain).ok());
	start = std::chrono::steady_clock::now();
	restored = false;
	while (std::chrono::steady_clock::now() - start < std::chrono::seconds(2)) {
		if (table() == applied) {
			restored = true;
			break;
		}
		std::this_thread::sleep_for(std::chrono::milliseconds(20));
	}
	EXPECT_TRUE(restored) << table();
	EXPECT_EQ(generation(), 1u);
}

// Element changes by hand are undone as they were made, not by replacing
// the table: the element deleted is added back, the one added deleted, a
// flushed map refilled, each in a transaction of its own elements.
TEST_F(ServiceLab, AnElementDeletedOrAddedOrAMapFlushedByHandIsPutBackAsADelta)
{
	startDaemon();
	std::string applied = table();
	ASSERT_NE(applied.find("198.51.100.2 . 1024-3071"), std::string::npos) << applied;
	auto restoredWithin2s = [&] {
		auto start = std::chrono::steady_clock::now();
		while (std::chrono::steady_clock::now() - start < std::chrono::seconds(2)) {
			if (table() == applied)
				return true;
			std::this_thread::sleep_for(std::chrono::milliseconds(20));
		}
		return false;
	};
	auto count = [](const std::string &text, const std::string &what) {
		size_t n = 0;
		for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1))
			n++;
		return n;
	};

	ASSERT_TRUE(inNs("nft delete element inet portslice my_ports '{ 198.51.100.2 . 1024-3071 }'").ok());
	EXPECT_TRUE(restoredWithin2s()) << table();
	ASSERT_TRUE(inNs("nft add element inet portslice my_ports '{ 198.51.100.2 . 5120-7167 }'").ok());
	EXPECT_TRUE(restoredWithin2s()) << table();
	// The stateless source's 16 blocks (two addresses, 8 inside addresses each).
	ASSERT_NE(applied.find("map sl_egress"), std::string::npos);
	ASSERT_TRUE(inNs("nft flush map inet portslice sl_egress").ok());
	EXPECT_TRUE(restoredWithin2s()) << table();

	std::string log = readFile(logPath());
	EXPECT_EQ(count(log, "by undoing its 1 element changes"), 2u) << log;
	EXPECT_EQ(count(log, "by undoing its 16 element changes"), 1u) << log;
	EXPECT_EQ(log.find("restoring generation"), std::string::npos) << "a full restore:\n" << log;
	EXPECT_EQ(generation(), 1u);
}

TEST_F(ServiceLab, ARejectedCallSetsNeitherLastErrorNorApplyFailedAndQuotesItsInputEscapedAndCut)
{
	startDaemon();
	connect();
	std::string before = table();
	// A server name that tries to forge a log line, and one of 5000 characters.
	std::string forged = "s9\nportsliced: applied generation 99 (forged)";
	EXPECT_EQ(errorOf([&] { proxy_->SetSliceOwner("198.51.100.1", 1, forged); }),
		  "org.portslice.Error.InvalidArgument");
	EXPECT_EQ(lastMessage_.find('\n'), std::string::npos) << lastMessage_;
	EXPECT_NE(lastMessage_.find("\"s9\\nportsliced: applied generation 99 (forged)\""), std::string::npos)
		<< lastMessage_;
	std::string huge(5000, 'x');
	EXPECT_EQ(errorOf([&] { proxy_->SetSliceOwner(huge, 1, "s2"); }), "org.portslice.Error.InvalidArgument");
	EXPECT_NE(lastMessage_.find("\"" + std::string(200, 'x') + "\"... (5000 bytes)"), std::string::npos);
	EXPECT_LT(lastMessage_.size(), 400u);
	EXPECT_EQ(errorOf([&] { proxy_->SetSliceOwner("198.51.100.1", 9, "s2"); }),
		  "org.portslice.Error.InvalidArgument");
	EXPECT_EQ(errorOf([&] { proxy_->Owner(forged, 1024); }), "org.portslice.Error.InvalidArgument");
	EXPECT_EQ(lastMessage_.find('\n'), std::string::npos) << lastMessage_;
	EXPECT_EQ(errorOf([&] { proxy_->Owner("203.0.113.1", 2000); }), "org.portslice.Error.NotFound");

	// A round trip to the daemon, so that any signal it sent has arrived.
	EXPECT_EQ(proxy_->Generation(), 1u);
	EXPECT_EQ(proxy_->LastError(), "");
	EXPECT_EQ(proxy_->State(), "applied");
	EXPECT_TRUE(proxy_->failed().empty()) << proxy_->failed()[0];
	EXPECT_EQ(table(), before);
	// The daemon's log holds no line the caller wrote.
	std::string log = readFile(logPath());
	EXPECT_EQ(log.find("\nportsliced: applied generation 99"), std::string::npos) << log;

	// A failed apply sets LastError; a rejected call afterwards leaves it.
	writeConfig(std::string(kLabFleet) + "\n[[sources]]\nname = \"x\"\nmatch = { saddr = \"100.64.7.0/33\" }\n"
					     "want = { country = \"GB\" }\n");
	EXPECT_EQ(errorOf([&] { proxy_->Reload(); }), "org.portslice.Error.InvalidConfig");
	std::string lastError = proxy_->LastError();
	EXPECT_NE(lastError, "");
	EXPECT_EQ(errorOf([&] { proxy_->SetSliceOwner("198.51.100.1", 1, "nobody"); }),
		  "org.portslice.Error.InvalidArgument");
	EXPECT_EQ(proxy_->LastError(), lastError);
	ASSERT_TRUE(waitFor([&] { return !proxy_->failed().empty(); }, std::chrono::milliseconds(2000)));
	std::this_thread::sleep_for(std::chrono::milliseconds(200));
	EXPECT_EQ(proxy_->failed().size(), 1u); // the reload's, not the rejected call's
}

TEST_F(ServiceLab, AReloadWithABrokenFileKeepsTheOldStateAndSignalsFileAndLine)
{
	startDaemon();
	connect();
	std::string before = table();
	writeConfig(std::string(kLabFleet) + "\n[[sources]]\nname = \"x\"\nmatch = { saddr = \"100.64.7.0/33\" }\n"
					     "want = { country = \"GB\" }\n");
	EXPECT_EQ(errorOf([&] { proxy_->Reload(); }), "org.portslice.Error.InvalidConfig");
	EXPECT_NE(lastMessage_.find(configPath() + ":"), std::string::npos) << lastMessage_;
	ASSERT_TRUE(waitFor([&] { return !proxy_->failed().empty(); }, std::chrono::milliseconds(2000)));
	EXPECT_NE(proxy_->failed()[0].find(configPath() + ":"), std::string::npos) << proxy_->failed()[0];
	EXPECT_EQ(proxy_->State(), "degraded");
	EXPECT_EQ(proxy_->Generation(), 1u);
	EXPECT_NE(proxy_->LastError().find(configPath() + ":"), std::string::npos);
	EXPECT_EQ(table(), before);

	// SIGHUP goes the same way; a fixed file then applies.
	writeConfig(std::string(kLabFleet).replace(std::string(kLabFleet).find("s1 = 0, s2 = 1, s3 = [2, 3]"), 27,
						   "s1 = [0, 1], s3 = [2, 3]"));
	::kill(daemonPid_, SIGHUP);
	ASSERT_TRUE(waitFor([&] { return proxy_->Generation() == 2u; }, std::chrono::milliseconds(3000)))
		<< readFile(logPath());
	EXPECT_EQ(proxy_->State(), "applied");
	EXPECT_EQ(proxy_->LastError(), "");
	EXPECT_EQ(normalized(proxy_->Dump()), normalized(table()));
}

// A --config that is a pipe (`--config <(...)`) is read once, at start: a
// reload (SIGHUP, Reload(), portslicectl reload) cannot read it again and
// says so, naming the path, as InvalidConfig; the applied table and
// generation stay, and LastError and ApplyFailed say it as for any file a
// reload rejects. The daemon goes on answering.
TEST_F(ServiceLab, AReloadOfAConfigPipeFailsNamingItAndKeepsTheAppliedState)
{
	std::vector<std::string> words = daemonWords();
	auto config = std::find(words.begin(), words.end(), configPath());
	ASSERT_NE(config, words.end());
	*config = "/dev/fd/3";
	words.insert(words.begin(), {"bash", "-c", "exec \"$@\" 3< <(cat " + quote(configPath()) + ")", "bash"});
	daemonPid_ = lab::spawnProcess(words, logPath(), {.env = {"DBUS_SYSTEM_BUS_ADDRESS=" + busAddress_}, .append = true});
	ASSERT_GT(daemonPid_, 0);
	ASSERT_TRUE(waitFor([&] { return busctl("call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus "
						"NameHasOwner s org.portslice.Egress1").output.find("true") !=
					 std::string::npos; },
			    std::chrono::seconds(5)))
		<< readFile(logPath());
	connect();
	ASSERT_EQ(proxy_->State(), "applied");
	std::string before = table();

	auto says = [&](const std::string &text) {
		return text.find("/dev/fd/3") != std::string::npos && text.find("not a regular file") != std::string::npos &&
		       text.find("pipe") != std::string::npos;
	};
	EXPECT_EQ(errorOf([&] { proxy_->Reload(); }), "org.portslice.Error.InvalidConfig");
	EXPECT_TRUE(says(lastMessage_)) << lastMessage_;
	ASSERT_TRUE(waitFor([&] { return !proxy_->failed().empty(); }, std::chrono::seconds(2)));
	EXPECT_TRUE(says(proxy_->failed()[0])) << proxy_->failed()[0];
	EXPECT_EQ(proxy_->State(), "degraded");
	EXPECT_TRUE(says(proxy_->LastError())) << proxy_->LastError();
	EXPECT_EQ(proxy_->Generation(), 1u);
	EXPECT_EQ(table(), before);

	// portslicectl reload prints it and exits 1; SIGHUP logs it.
	Outcome reloaded = ctl("reload");
	EXPECT_EQ(reloaded.status, 1) << reloaded.output;
	EXPECT_TRUE(says(reloaded.output)) << reloaded.output;
	::kill(daemonPid_, SIGHUP);
	EXPECT_TRUE(waitFor([&] { return proxy_->failed().size() == 3; }, std::chrono::seconds(3))) << readFile(logPath());
	EXPECT_EQ(proxy_->Generation(), 1u);
	EXPECT_EQ(table(), before);
	// Still answering, the move a call makes applied.
	EXPECT_EQ(proxy_->SetSliceOwner("198.51.100.1", 1, "s1"), 2u);
	EXPECT_EQ(proxy_->State(), "applied");
}

// --metrics-file keeps the textfile up to date: a failed reload is
// in it when `portslicectl reload` returns, not at the next 15 s rewrite.
TEST_F(ServiceLab, TheMetricsFileSaysDegradedAsSoonAsABrokenReloadReturns)
{
	startDaemon();
	std::string first = readFile(metricsPath());
	ASSERT_NE(first.find("portslice_state{state=\"applied\"} 1"), std::string::npos) << first;
	ASSERT_NE(first.find("portslice_apply_failures_total 0\n"), std::string::npos) << first;
	const std::string good = readFile(configPath());
	writeConfig(good + "\n[[sources]]\nname = \"x\"\nmatch = { saddr = \"100.64.7.0/33\" }\n");
	Outcome reloaded = ctl("reload");
	EXPECT_EQ(reloaded.status, 1) << reloaded.output;
	std::string failed = readFile(metricsPath());
	EXPECT_NE(failed.find("portslice_state{state=\"degraded\"} 1"), std::string::npos) << failed;
	EXPECT_NE(failed.find("portslice_state{state=\"applied\"} 0"), std::string::npos) << failed;
	EXPECT_NE(failed.find("portslice_apply_failures_total 1\n"), std::string::npos) << failed;
	EXPECT_NE(failed.find("portslice_generation 1\n"), std::string::npos) << failed;

	// The fixed file: applied again, a new generation, the failure still counted.
	writeConfig(good);
	reloaded = ctl("reload");
	EXPECT_TRUE(reloaded.ok()) << reloaded.output;
	std::string fixed = readFile(metricsPath());
	EXPECT_NE(fixed.find("portslice_state{state=\"applied\"} 1"), std::string::npos) << fixed;
	EXPECT_NE(fixed.find("portslice_apply_failures_total 1\n"), std::string::npos) << fixed;
}

TEST_F(ServiceLab, PortslicectlSpeaksToTheDaemonAndSaysWhenItIsNotRunning)
{
	Outcome down = ctl("status");
	EXPECT_EQ(down.status, 3) << down.output;
	EXPECT_NE(down.output.find("not running"), std::string::npos) << down.output;

	startDaemon();
	Outcome status = ctl("status");
	EXPECT_TRUE(status.ok()) << status.output;
	EXPECT_NE(status.output.find("state:      applied"), std::string::npos) << status.output;
	EXPECT_NE(status.output.find("server:     s1"), std::string::npos) << status.output;
	Outcome statusJson = ctl("status --json");
	EXPECT_TRUE(statusJson.ok()) << statusJson.output;
	EXPECT_NE(statusJson.output.find("\"state\": \"applied\""), std::string::npos) << statusJson.output;
	EXPECT_NE(statusJson.output.find("\"generation\": 1,"), std::string::npos) << statusJson.output;
	EXPECT_NE(statusJson.output.find("\"last_error\": null"), std::string::npos) << statusJson.output;
	EXPECT_TRUE(statusJson.output.ends_with("}\n") && !statusJson.output.ends_with("\n\n")) << statusJson.output;

	Outcome moved = ctl("set-owner 198.51.100.2 1 s1");
	EXPECT_TRUE(moved.ok()) << moved.output;
	EXPECT_NE(moved.output.find("generation 2"), std::string::npos) << moved.output;
	Outcome bad = ctl("set-owner 198.51.100.2 9 s1");
	EXPECT_EQ(bad.status, 1) << bad.output;
	EXPECT_NE(bad.output.find("slices 0 to 3"), std::string::npos) << bad.output;

	Outcome reloaded = ctl("reload");
	EXPECT_TRUE(reloaded.ok()) << reloaded.output;

	Outcome prometheus = ctl("stats --prometheus");
	EXPECT_TRUE(prometheus.ok()) << prometheus.output;
	EXPECT_NE(prometheus.output.find("# TYPE portslice_source_packets_total counter"), std::string::npos)
		<< prometheus.output;
	EXPECT_NE(prometheus.output.find("portslice_source_packets_total{source=\"warp-gb\"}"), std::string::npos)
		<< prometheus.output;
	if (sh("promtool --version").ok()) {
		std::ofstream(metricsPath() + ".ctl") << prometheus.output;
		for (const std::string &file : {metricsPath() + ".ctl", metricsPath()}) {
			Outcome checked = sh("promtool check metrics < " + file);
			EXPECT_TRUE(checked.ok() && checked.output.empty()) << file << ": " << checked.output << readFile(file);
		}
	}
	EXPECT_NE(prometheus.output.find("portslice_state{state=\"applied\"} 1"), std::string::npos) << prometheus.output;
	// The daemon's --metrics-file: the same metrics, written without a caller.
	std::string file = readFile(metricsPath());
	EXPECT_NE(file.find("portslice_info{version=\""), std::string::npos) << file;
	EXPECT_NE(file.find("portslice_source_ports_in_use_ratio{source=\"warp-gb\",address=\"198.51.100."),
		  std::string::npos)
		<< file;
	Outcome json = ctl("stats --json");
	EXPECT_TRUE(json.ok()) << json.output;
	EXPECT_EQ(json.output.substr(0, 1), "{") << json.output;
	EXPECT_TRUE(json.output.ends_with("}\n") && !json.output.ends_with("\n\n")) << json.output;

	// Not under systemd, the log is standard error with sd-daemon priorities:
	// every line has one, applies are info, the caller of a change is noted.
	std::string log = readFile(logPath());
	EXPECT_NE(log.find("<6>applied generation 1 "), std::string::npos) << log;
	EXPECT_NE(log.find("<5>SetSliceOwner called by uid 0"), std::string::npos) << log;
	EXPECT_NE(log.find("<5>Reload called by uid 0"), std::string::npos) << log;
	std::istringstream lines(log);
	for (std::string line; std::getline(lines, line);)
		EXPECT_TRUE(line.size() > 3 && line[0] == '<' && line[2] == '>' && line[1] >= '0' && line[1] <= '7')
			<< "a log line without a priority: " << line;
}

// One real UDP datagram from inside address `from` (on lo of the server
// namespace) to 203.0.113.10: the table NATs it, conntrack keeps the flow.
std::string udpFlow(const std::string &from, int port)
{
	return "python3 -c \"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('" + from +
	       "', " + std::to_string(port) + ")); s.sendto(b'x', ('203.0.113.10', 5353))\"";
}

TEST_F(ServiceLab, LosingASliceRemovesItsConntrackEntriesAndStatsCountTheRest)
{
	startDaemon();
	connect();
	ASSERT_TRUE(routeClients({"100.64.1.5", "100.64.1.200"}));
	// 100.64.1.0/25 egresses with 198.51.100.1, 100.64.1.128/25 with 198.51.100.2 (see Plan()).
	for (const auto &[from, port] : {std::pair{"100.64.1.5", 40000}, std::pair{"100.64.1.5", 40001},
					 std::pair{"100.64.1.200", 40002}}) {
		Outcome sent = inNs(udpFlow(from, port));
		ASSERT_TRUE(sent.ok()) << sent.output;
	}
	Outcome flows = inNs("conntrack -L 2>/dev/null");
	ASSERT_NE(flows.output.find("dst=198.51.100.1"), std::string::npos) << flows.output << table();

	// Stats() answers from a conntrack walk at most 1 s old (the daemon's
	// metrics file may just have made one).
	std::this_thread::sleep_for(std::chrono::milliseconds(1100));
	std::map<std::string, uint64_t> stats;
	for (const auto &row : proxy_->Stats())
		stats[row.get<0>() + " " + row.get<1>() + " " + row.get<2>()] = row.get<3>();
	EXPECT_EQ(stats["zone 10 entries"], 3u);
	EXPECT_EQ(stats["slice 198.51.100.1/0 ports_in_use"], 2u);
	EXPECT_EQ(stats["slice 198.51.100.1/0 percent_in_use"], 0u); // 2 of 2048
	EXPECT_EQ(stats["slice 198.51.100.2/0 ports_in_use"], 1u);
	EXPECT_TRUE(stats.contains("xdp pass_own packets")) << "no XDP verdict counters in Stats()";
	EXPECT_TRUE(stats.contains("guard other drops"));

	// Slice 0 of 198.51.100.1 goes to s2: its flows are s2's now.
	EXPECT_EQ(proxy_->SetSliceOwner("198.51.100.1", 0, "s2"), 2u);
	Outcome left = inNs("conntrack -L 2>/dev/null");
	EXPECT_EQ(left.output.find("dst=198.51.100.1 "), std::string::npos) << left.output;
	EXPECT_NE(left.output.find("dst=198.51.100.2 "), std::string::npos) << left.output;
	std::map<std::string, uint64_t> after;
	for (const auto &row : proxy_->Stats())
		after[row.get<0>() + " " + row.get<1>() + " " + row.get<2>()] = row.get<3>();
	EXPECT_EQ(after["zone 10 entries"], 1u);
	EXPECT_FALSE(after.contains("slice 198.51.100.1/0 ports_in_use"));
}

// `count` new UDP flows from inside address `from` (on lo) to 203.0.113.10,
// one socket each; prints how many the kernel refused (sendto: EPERM, the
// packet dropped in netfilter) and how many left.
std::string udpFlows(const std::string &from, int firstPort, int count)
{
	return "python3 -c \"import socket, errno\nrefused = 0\nfor p in range(" + std::to_string(firstPort) + ", " +
	       std::to_string(firstPort + count) + "):\n s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n s.bind(('" +
	       from + "', p))\n try:\n  s.sendto(b'x', ('203.0.113.10', 5353))\n except PermissionError:\n  refused += 1\n"
	       "print('refused', refused, 'sent', " + std::to_string(count) + " - refused)\"";
}

// insert_failed of conntrack -S, summed over the CPUs.
uint64_t insertFailed(const Outcome &stats)
{
	uint64_t sum = 0;
	for (size_t at = stats.output.find("insert_failed="); at != std::string::npos;
	     at = stats.output.find("insert_failed=", at + 1))
		sum += std::stoull(stats.output.substr(at + 14));
	return sum;
}

// The value of one sample line "NAME{LABELS} VALUE" of the Prometheus text, or -1.
double sample(const std::string &text, const std::string &line)
{
	size_t at = text.find("\n" + line + " ");
	if (at == std::string::npos)
		return -1;
	return std::stod(text.substr(at + line.size() + 2));
}

// A NAT-only daemon (--no-xdp) still lists every metric of the contract:
// the forwarder's verdicts at 0 (it passed, forwarded and dropped nothing).
TEST_F(ServiceLab, ANatOnlyDaemonListsTheXdpVerdictsAtZero)
{
	daemonArgs_ = {"--no-xdp"};
	startDaemon();
	std::string text = prometheus();
	size_t verdicts = 0;
	for (size_t at = text.find("\nportslice_xdp_packets_total{verdict=\""); at != std::string::npos;
	     at = text.find("\nportslice_xdp_packets_total{verdict=\"", at + 1)) {
		std::string line = text.substr(at + 1, text.find('\n', at + 1) - at - 1);
		EXPECT_TRUE(line.ends_with("} 0")) << line;
		verdicts++;
	}
	EXPECT_GE(verdicts, 3u) << text;
	EXPECT_NE(text.find("\n# TYPE portslice_xdp_packets_total counter\n"), std::string::npos) << text;
}

// Two conntrack sources of 2 ports each on one address (tests/fixtures/tiny-range.toml):
// warp-a opens 12 flows to one peer (2 can have a port, 10 cannot), warp-b 2 (both fit).
const std::string kTinyFleet = portslice::test::fixture("tiny-range.toml");

TEST_F(ServiceLab, NatFailuresCountExactlyTheFlowsASourceWithAFullRangeLosesAndNoOtherSources)
{
	writeConfig(kTinyFleet);
	startDaemon();
	ASSERT_TRUE(routeClients({"100.64.1.5", "100.64.1.200"}));
	// The conntrack figures may be a second old; the counters are not.
	std::string before = prometheus();
	EXPECT_EQ(sample(before, "portslice_source_nat_failures_total{source=\"warp-a\"}"), 0) << before;
	EXPECT_EQ(sample(before, "portslice_source_nat_failures_total{source=\"warp-b\"}"), 0) << before;
	// A stateless source takes no port from a search: nothing can fail there.
	EXPECT_EQ(before.find("nat_failures_total{source=\"plain\"}"), std::string::npos) << before;

	uint64_t failedBefore = insertFailed(inNs("conntrack -S"));
	Outcome a = inNs(udpFlows("100.64.1.5", 40000, 12));
	Outcome b = inNs(udpFlows("100.64.1.200", 41000, 2));
	ASSERT_TRUE(a.ok() && b.ok()) << a.output << b.output;
	// The kernel's own account: 10 refused (sendto failed, insert_failed
	// rose by as many), warp-a's 2 ports in use, warp-b's flows all left.
	EXPECT_EQ(a.output, "refused 10 sent 2\n");
	EXPECT_EQ(b.output, "refused 0 sent 2\n");
	uint64_t refused = insertFailed(inNs("conntrack -S")) - failedBefore;
	EXPECT_EQ(refused, 10u) << inNs("conntrack -S").output;

	// The conntrack walk behind the ratios is at most a second old.
	std::this_thread::sleep_for(std::chrono::milliseconds(1100));
	std::string after = prometheus();
	EXPECT_EQ(sample(after, "portslice_source_nat_failures_total{source=\"warp-a\"}"), static_cast<double>(refused))
		<< after << table() << inNs("nft list table netdev portslice_egress").output;
	EXPECT_EQ(sample(after, "portslice_source_nat_failures_total{source=\"warp-b\"}"), 0) << after;
	// Each source's own 2 ports are in use: 1, not 4 of the slice's 8.
	for (const char *source : {"warp-a", "warp-b"})
		EXPECT_EQ(sample(after, std::string("portslice_source_ports_in_use_ratio{source=\"") + source +
						"\",address=\"198.51.100.1\"}"),
			  1)
			<< after;
	// The same from stats --json, as numbers: the source's own range and
	// the slice each apart, not "NAME ADDRESS" or "ADDRESS/SLICE" strings.
	Outcome json = ctl("stats --json | jq -c '[(.sources[] | select(.source == \"warp-a\") | "
			   ".nat_failures, .addresses[0].address, .addresses[0].ports_in_use, .addresses[0].ports), "
			   "(.addresses[0].slices[0] | .slice, .ports_in_use, .ports), "
			   "(.sources[] | select(.source == \"plain\") | has(\"nat_failures\"))]'");
	EXPECT_EQ(json.output, "[10,\"198.51.100.1\",2,2,0,4,8,false]\n") << json.output;
	if (sh("promtool --version").ok()) {
		std::ofstream(metricsPath() + ".failures") << after.substr(1);
		Outcome checked = sh("promtool check metrics < " + metricsPath() + ".failures");
		EXPECT_TRUE(checked.ok() && checked.output.empty()) << checked.output;
	}

	// Five more refused after a reload that replaces the table (a new shape:
	// an iifname source): the counter goes on from 10, it never starts again.
	writeConfig(std::string(kTinyFleet) + "\n[[sources]]\nname = \"by-iif\"\nmatch = { iifname = \"up1\" }\n"
					      "want = { country = \"GB\" }\n");
	Outcome reloaded = ctl("reload");
	ASSERT_TRUE(reloaded.ok()) << reloaded.output;
	ASSERT_NE(readFile(logPath()).find("table replaced"), std::string::npos) << readFile(logPath());
	(void)inNs("conntrack -F");
	// New flows to another peer port: warp-a's range (now 2 ports or fewer) is full again after its first ones.
	Outcome again = inNs("python3 -c \"import socket\nrefused = 0\nfor p in range(42000, 42012):\n"
			     " s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n s.bind(('100.64.1.5', p))\n try:\n"
			     "  s.sendto(b'x', ('203.0.113.10', 5354))\n except PermissionError:\n  refused += 1\n"
			     "print(refused)\"");
	ASSERT_TRUE(again.ok()) << again.output;
	uint64_t refusedAgain = std::stoull(again.output);
	EXPECT_GE(refusedAgain, 9u) << again.output;
	std::string last = prometheus();
	EXPECT_EQ(sample(last, "portslice_source_nat_failures_total{source=\"warp-a\"}"),
		  static_cast<double>(refused + refusedAgain))
		<< last;
	EXPECT_EQ(sample(last, "portslice_source_nat_failures_total{source=\"warp-b\"}"), 0) << last;
}

// A Prometheus counter only goes up in the life of the daemon: the packets
// counted before `nft delete table` stay counted after the drift repair
// replaced the table (whose kernel counters start at 0).
TEST_F(ServiceLab, CountersDoNotGoBackWhenTheTableIsReplaced)
{
	writeConfig(kTinyFleet);
	startDaemon();
	ASSERT_TRUE(routeClients({"100.64.1.200"}));
	const std::string packets = "portslice_source_packets_total{source=\"warp-b\"}";
	Outcome sent = inNs(udpFlows("100.64.1.200", 41000, 2));
	ASSERT_EQ(sent.output, "refused 0 sent 2\n");
	double counted = sample(prometheus(), packets);
	ASSERT_GE(counted, 2) << prometheus();

	std::string applied = table();
	ASSERT_TRUE(inNs("nft delete table inet portslice").ok());
	auto start = std::chrono::steady_clock::now();
	while (table() != applied && std::chrono::steady_clock::now() - start < std::chrono::seconds(2))
		std::this_thread::sleep_for(std::chrono::milliseconds(20));
	ASSERT_EQ(table(), applied);
	std::string after = prometheus();
	EXPECT_EQ(sample(after, packets), counted) << after;
	// And on: the new table's packets add to the old ones.
	ASSERT_EQ(inNs(udpFlows("100.64.1.200", 41000, 1)).output, "refused 0 sent 1\n"); // its flow of before
	after = prometheus();
	EXPECT_GE(sample(after, packets), counted + 1) << after;
	// stats (text) says the same as --prometheus.
	EXPECT_EQ(statsValue("source", "warp-b", "packets"), sample(prometheus(), packets)) << ctl("stats").output;
}

// The counters' series and totals outlive their table: with --no-repair and
// `nft delete table inet portslice`, stats still lists every source, address
// and guard series with what it had counted, and the NAT failures (the
// kernel's counters are gone; the daemon's totals are not).
TEST_F(ServiceLab, ADeletedTableKeepsEveryCounterSeriesWithItsTotal)
{
	daemonArgs_ = {"--no-repair"};
	writeConfig(kTinyFleet);
	startDaemon();
	ASSERT_TRUE(routeClients({"100.64.1.5", "100.64.1.200"}));
	ASSERT_EQ(inNs(udpFlows("100.64.1.5", 40000, 12)).output, "refused 10 sent 2\n");
	ASSERT_EQ(inNs(udpFlows("100.64.1.200", 41000, 2)).output, "refused 0 sent 2\n");
	const std::vector<std::string> series = {
		"portslice_source_packets_total{source=\"warp-a\"}", "portslice_source_bytes_total{source=\"warp-a\"}",
		"portslice_source_packets_total{source=\"warp-b\"}", "portslice_source_packets_total{source=\"plain\"}",
		"portslice_address_packets_total{address=\"198.51.100.1\"}",
		"portslice_guard_drops_total{source=\"warp-a\"}", "portslice_guard_other_drops_total",
		"portslice_source_nat_failures_total{source=\"warp-a\"}",
		"portslice_source_nat_failures_total{source=\"warp-b\"}"};
	std::string before = prometheus();
	ASSERT_GE(sample(before, "portslice_source_packets_total{source=\"warp-b\"}"), 2) << before;
	ASSERT_EQ(sample(before, "portslice_source_nat_failures_total{source=\"warp-a\"}"), 10) << before;

	ASSERT_TRUE(inNs("nft delete table inet portslice").ok());
	ASSERT_NE(inNs("nft list table inet portslice").status, 0);
	std::string after = prometheus();
	for (const std::string &s : series) {
		EXPECT_GE(sample(before, s), 0) << s << before;
		EXPECT_EQ(sample(after, s), sample(before, s)) << s << after;
	}
	// stats (text): the source's packets row, with the same total.
	EXPECT_EQ(statsValue("source", "warp-b", "packets"),
		  sample(before, "portslice_source_packets_total{source=\"warp-b\"}"))
		<< ctl("stats").output;
}

TEST_F(ServiceLab, ADetachedForwarderIsReattachedWithinTwoSeconds)
{
	startDaemon();
	auto attached = [&] { return inNs("ip -d link show up0").output.find("prog/xdp") != std::string::npos; };
	ASSERT_TRUE(attached()) << inNs("ip -d link show up0").output;
	// The link is pinned; unpinning it is how the forwarder comes off by hand.
	Outcome removed = sh("rm -f " + quote(pinDir() + "/link"));
	ASSERT_TRUE(removed.ok()) << removed.output;
	ASSERT_FALSE(attached()) << "unpinning the link did not detach the program";
	auto start = std::chrono::steady_clock::now();
	bool back = false;
	while (!back && std::chrono::steady_clock::now() - start < std::chrono::seconds(2)) {
		std::this_thread::sleep_for(std::chrono::milliseconds(50));
		back = attached();
	}
	EXPECT_TRUE(back) << readFile(logPath());
	EXPECT_NE(readFile(logPath()).find("no XDP program on up0"), std::string::npos) << readFile(logPath());
}

TEST_F(ServiceLab, AnInvalidFileAtStartIsExitOneWithTheErrorsAndNothingApplied)
{
	writeConfig(std::string(kLabFleet) + "\n[[sources]]\nname = \"x\"\nmatch = { saddr = \"100.64.7.0/33\" }\n");
	Outcome run = sh("ip netns exec " + ns_ + " env " + env() + bin("src/daemon/portsliced") + " --config " +
			 quote(configPath()) + " --state-dir " + quote(stateDir()) + " --xdp-pin-dir " + quote(pinDir()));
	EXPECT_EQ(run.status, 1) << run.output;
	EXPECT_NE(run.output.find(configPath() + ":"), std::string::npos) << run.output;
	EXPECT_FALSE(inNs("nft list table inet portslice").ok());
}

TEST_F(ServiceLab, TheForwarderFollowsAMovedSliceInTheSameGeneration)
{
	// s2 and s3 are neighbours on the uplink: the forwarder can hand them packets.
	Outcome neighbours = inNs("ip neigh add 192.0.2.12 lladdr 02:00:00:00:00:12 dev up0 && "
				  "ip neigh add 192.0.2.13 lladdr 02:00:00:00:00:13 dev up0");
	ASSERT_TRUE(neighbours.ok()) << neighbours.output;
	startDaemon();
	connect();
	// Packets for 198.51.100.1 leave by up1 and arrive on up0, the uplink with the forwarder.
	std::string mac = inNs("cat /sys/class/net/up0/address").output;
	mac = mac.substr(0, mac.find('\n'));
	Outcome routed = inNs("ip route add 198.51.100.0/24 dev up1 && ip neigh add 198.51.100.1 lladdr " + mac +
			      " dev up1");
	ASSERT_TRUE(routed.ok()) << routed.output;
	auto verdicts = [&] {
		std::map<std::string, uint64_t> v;
		for (const auto &row : proxy_->Stats())
			if (row.get<0>() == "xdp" && row.get<2>() == "packets")
				v[row.get<1>()] = row.get<3>();
		return v;
	};
	auto send = [&](int port) {
		Outcome sent = inNs("python3 -c \"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
				    "[s.sendto(b'x', ('198.51.100.1', " + std::to_string(port) + ")) for i in range(10)]\"");
		ASSERT_TRUE(sent.ok()) << sent.output;
	};

	// Port 3072 is in slice 1, s2's: the forwarder sends it on to s2.
	auto before = verdicts();
	send(3072);
	auto owned = verdicts();
	std::string diff;
	for (const auto &[name, value] : owned)
		diff += name + " +" + std::to_string(value - before[name]) + " ";
	EXPECT_GE(owned["forward"] - before["forward"], 10u) << diff;
	EXPECT_EQ(owned["pass_own"], before["pass_own"]) << diff;

	// s1 takes slice 1: from the next generation on, the same packets are its own.
	EXPECT_EQ(proxy_->SetSliceOwner("198.51.100.1", 1, "s1"), 2u);
	send(3072);
	auto moved = verdicts();
	EXPECT_GE(moved["pass_own"] - owned["pass_own"], 10u);
	EXPECT_EQ(moved["forward"], owned["forward"]);
}

// A reload that adds a source is an element delta: the new source's named
// counters come after those of the first apply in the kernel, and Dump()
// lists them there too, so that
// `diff plan.nft <(nft -s list table inet portslice)` is empty
// (docs/operations.md) after reloads as after moves.
TEST_F(ServiceLab, DumpIsWhatNftListsAfterAReloadThatAddsASource)
{
	startDaemon();
	connect();
	ASSERT_EQ(proxy_->Dump(), table());
	writeConfig(kLabFleet + "\n[[sources]]\nname = \"warp-more\"\nmatch = { saddr = \"100.64.2.0/24\" }\n"
				"want = { country = \"GB\" }\nzone = 11\n");
	Outcome reloaded = ctl("reload");
	ASSERT_TRUE(reloaded.ok()) << reloaded.output;
	ASSERT_EQ(proxy_->Generation(), 2u);
	EXPECT_NE(readFile(logPath()).find("generation 2: element delta"), std::string::npos) << readFile(logPath());
	std::string listed = table();
	ASSERT_NE(listed.find("counter src_warp-more {"), std::string::npos) << listed;
	EXPECT_EQ(proxy_->Dump(), listed);
	EXPECT_EQ(ctl("audit").status, 0);
	// And after a move on top of it.
	ASSERT_EQ(proxy_->SetSliceOwner("198.51.100.1", 1, "s1"), 3u);
	EXPECT_EQ(proxy_->Dump(), table());
}

// --no-repair leaves a table changed by hand as it is, but does not call it
// applied (portsliced.8: applied is when the kernel holds the plan of
// Generation): degraded, LastError naming the change, status exit 1 and the
// metrics saying so; a reload applies the plan again (same generation), and
// a hand edit the operator takes back makes it applied again by itself.
TEST_F(ServiceLab, ANoRepairDaemonSaysDegradedWhileTheTableDiffersByHand)
{
	daemonArgs_ = {"--no-repair"};
	startDaemon();
	connect();
	PropertyWatch watch(*connection_);
	std::string applied = table();
	ASSERT_EQ(proxy_->State(), "applied");
	auto waitForState = [&](const std::string &state) {
		return waitFor([&] { return proxy_->State() == state; }, std::chrono::seconds(3));
	};

	ASSERT_TRUE(inNs("nft delete table inet portslice").ok());
	ASSERT_TRUE(waitForState("degraded")) << readFile(logPath());
	// Named by the nftables event (the periodic check may say it first, without a name).
	EXPECT_TRUE(waitFor([&] { return proxy_->LastError().find("changed by") != std::string::npos; },
			    std::chrono::seconds(2)));
	std::string error = proxy_->LastError();
	EXPECT_NE(error.find("table inet portslice changed by a commit by nft pid"), std::string::npos) << error;
	EXPECT_NE(error.find("not repaired (--no-repair)"), std::string::npos) << error;
	EXPECT_NE(error.find("see portslicectl audit"), std::string::npos) << error;
	EXPECT_EQ(table().find("table inet portslice {"), std::string::npos) << "not repaired: the table stays deleted";
	Outcome status = ctl("status");
	EXPECT_EQ(status.status, 1) << status.output;
	EXPECT_NE(status.output.find("degraded"), std::string::npos) << status.output;
	std::string metrics = readFile(metricsPath());
	EXPECT_NE(metrics.find("portslice_state{state=\"degraded\"} 1"), std::string::npos) << metrics;
	EXPECT_NE(metrics.find("portslice_state{state=\"applied\"} 0"), std::string::npos) << metrics;
	EXPECT_TRUE(waitFor([&] { return !watch.states().empty(); }, std::chrono::seconds(2)));
	EXPECT_EQ(watch.states(), std::vector<std::string>{"degraded"});

	// A reload of the same file applies the plan again, as the same generation.
	Outcome reloaded = ctl("reload");
	EXPECT_TRUE(reloaded.ok()) << reloaded.output;
	EXPECT_EQ(proxy_->State(), "applied");
	EXPECT_EQ(proxy_->LastError(), "");
	EXPECT_EQ(proxy_->Generation(), 1u);
	EXPECT_EQ(table(), applied);
	EXPECT_EQ(ctl("status").status, 0);
	EXPECT_TRUE(waitFor([&] { return watch.states().size() == 2; }, std::chrono::seconds(2)));
	EXPECT_EQ(watch.states(), (std::vector<std::string>{"degraded", "applied"}));

	// An element added by hand, then deleted by hand: degraded, then applied by itself.
	ASSERT_TRUE(inNs("nft add element inet portslice my_ports { 198.51.100.1 . 60000-60001 }").ok());
	ASSERT_TRUE(waitForState("degraded")) << readFile(logPath());
	error = proxy_->LastError();
	EXPECT_NE(error.find("set my_ports: element 198.51.100.1 . 60000-60001 in the kernel, not in the plan"),
		  std::string::npos) << error;
	EXPECT_EQ(ctl("audit").status, 1);
	ASSERT_TRUE(inNs("nft delete element inet portslice my_ports { 198.51.100.1 . 60000-60001 }").ok());
	EXPECT_TRUE(waitForState("applied")) << proxy_->LastError();
	EXPECT_EQ(proxy_->LastError(), "");
	EXPECT_EQ(ctl("status").status, 0);
	EXPECT_EQ(proxy_->Generation(), 1u);
}

// --no-repair leaves a table deleted by hand as it is, but a call that has
// to apply the plan in full (SetSliceOwner on a degraded daemon) puts it
// back: the kernel then holds the plan of Generation, so State is applied
// again (signalled), LastError is empty as after a reload, the metrics file
// says applied, and the log says, with its priority, that the call
// re-created the table.
TEST_F(ServiceLab, ANoRepairDaemonIsAppliedAgainWhenACallRecreatesTheDeletedTable)
{
	daemonArgs_ = {"--no-repair"};
	startDaemon();
	connect();
	PropertyWatch watch(*connection_);
	ASSERT_TRUE(inNs("nft delete table inet portslice").ok());
	ASSERT_TRUE(waitFor([&] { return proxy_->State() == "degraded"; }, std::chrono::seconds(3)))
		<< readFile(logPath());
	ASSERT_TRUE(waitFor([&] { return proxy_->LastError().find("changed by") != std::string::npos; },
			    std::chrono::seconds(2)));

	ASSERT_EQ(proxy_->SetSliceOwner("198.51.100.1", 1, "s1"), 2u);
	EXPECT_NE(table().find("table inet portslice {"), std::string::npos) << "the full apply re-created it";
	Outcome audit = ctl("audit");
	EXPECT_EQ(audit.status, 0) << audit.output;
	EXPECT_EQ(proxy_->State(), "applied") << proxy_->LastError();
	EXPECT_EQ(proxy_->LastError(), "");
	EXPECT_EQ(ctl("status").status, 0);
	std::string metrics = readFile(metricsPath());
	EXPECT_NE(metrics.find("portslice_state{state=\"applied\"} 1"), std::string::npos) << metrics;
	EXPECT_NE(metrics.find("portslice_generation 2\n"), std::string::npos) << metrics;
	EXPECT_TRUE(waitFor([&] { return watch.states().size() == 2; }, std::chrono::seconds(2)));
	EXPECT_EQ(watch.states(), (std::vector<std::string>{"degraded", "applied"}));
	std::string log = readFile(logPath());
	EXPECT_NE(log.find("\n<5>generation 2 re-created table inet portslice in full (set-owner): the kernel holds "
			   "the plan again; it differed from generation 1 (table inet portslice changed by"),
		  std::string::npos) << log;
	// Its own commit's events do not make it degraded again.
	std::this_thread::sleep_for(std::chrono::milliseconds(1500));
	EXPECT_EQ(proxy_->State(), "applied") << proxy_->LastError();
	EXPECT_EQ(watch.states().size(), 2u);
}

// --no-repair, a set flushed by hand, then a move: whatever State says,
// audit says the same of the kernel (applied when the table is the plan,
// degraded while it differs); twice, once after the daemon saw the flush
// and once right after it.
TEST_F(ServiceLab, ANoRepairDaemonsStateAfterAMoveOnAFlushedSetIsWhatAuditSays)
{
	daemonArgs_ = {"--no-repair"};
	startDaemon();
	connect();
	auto agrees = [&](const std::string &when) {
		// Let the events of the hand edit and of the move be read.
		std::this_thread::sleep_for(std::chrono::milliseconds(1500));
		Outcome audit = ctl("audit");
		std::string state = proxy_->State();
		EXPECT_EQ(state, audit.status == 0 ? "applied" : "degraded") << when << ": " << audit.output;
		EXPECT_EQ(proxy_->LastError().empty(), audit.status == 0) << when << ": " << proxy_->LastError();
	};
	ASSERT_TRUE(inNs("nft flush set inet portslice my_ports").ok());
	ASSERT_TRUE(waitFor([&] { return proxy_->State() == "degraded"; }, std::chrono::seconds(3)))
		<< readFile(logPath());
	ASSERT_EQ(proxy_->SetSliceOwner("198.51.100.1", 1, "s1"), 2u);
	agrees("a move after the flush was seen");

	ASSERT_TRUE(inNs("nft flush set inet portslice my_ports").ok());
	ASSERT_EQ(proxy_->SetSliceOwner("198.51.100.1", 1, "s2"), 3u);
	agrees("a move right after the flush");
}

// Every line the daemon writes to standard error carries its sd-daemon(3)
// priority (portsliced.8, LOGGING): after a full restore (the table deleted
// by hand, the egress program attached again), two moves in one call, a
// reload that adds a source, and a hand edit a --no-repair daemon leaves.
TEST_F(ServiceLab, EveryLineOnStandardErrorCarriesItsPriority)
{
	startDaemon();
	std::string applied = table();
	ASSERT_TRUE(inNs("nft delete table inet portslice").ok());
	bool restored = false;
	for (int i = 0; i < 100 && !restored; i++) {
		restored = table() == applied;
		if (!restored)
			std::this_thread::sleep_for(std::chrono::milliseconds(20));
	}
	ASSERT_TRUE(restored) << table();
	Outcome moved = call("SetSliceOwners", "'a(sus)u' 2 198.51.100.1 1 s1 198.51.100.2 1 s1 0");
	ASSERT_TRUE(moved.ok()) << moved.output;
	writeConfig(kLabFleet + "\n[[sources]]\nname = \"more\"\nmatch = { saddr = \"100.64.2.0/24\" }\n"
				"want = { country = \"GB\" }\nzone = 11\n");
	Outcome reloaded = ctl("reload");
	ASSERT_TRUE(reloaded.ok()) << reloaded.output;
	stopDaemon(SIGTERM);

	daemonArgs_ = {"--no-repair"};
	startDaemon();
	ASSERT_TRUE(inNs("nft delete table inet portslice").ok());
	bool said = false;
	for (int i = 0; i < 100 && !said; i++) {
		said = readFile(logPath()).find("not repaired (--no-repair)") != std::string::npos;
		if (!said)
			std::this_thread::sleep_for(std::chrono::milliseconds(20));
	}
	EXPECT_TRUE(said) << readFile(logPath());
	stopDaemon(SIGTERM);

	std::string log = readFile(logPath());
	std::istringstream in(log);
	int lines = 0;
	for (std::string line; std::getline(in, line);) {
		if (line.empty())
			continue;
		++lines;
		EXPECT_TRUE(line.size() > 3 && line[0] == '<' && line[1] >= '0' && line[1] <= '7' && line[2] == '>')
			<< "no priority: " << line;
	}
	EXPECT_GT(lines, 5) << log;
}

// `portslicectl dump` and Dump() print what `nft -s list table inet portslice`
// lists, byte for byte with the elements in the kernel's order, for every
// example of rules/: after the apply, after slice moves (element deltas
// that add at the end of a concatenated interval set, and delete and add
// again what changes) and after a restart. The table names its generation
// in the set `generation` after each delta.
TEST_F(ServiceLab, DumpIsWhatNftListsByteForByteForEveryExampleAfterApplyAndMoves)
{
	std::vector<fs::path> examples;
	for (const auto &e : fs::directory_iterator(std::string(PSD_SOURCE_ROOT) + "/rules"))
		if (e.path().extension() == ".toml")
			examples.push_back(e.path());
	std::sort(examples.begin(), examples.end());
	ASSERT_GE(examples.size(), 4u);
	auto generationSet = [](uint64_t g) {
		return "\tset generation {\n\t\ttypeof meta cgroup\n\t\telements = { " + std::to_string(g) + " }\n\t}\n";
	};
	// With drains, a slice s1 gives away stays in my_ports and drain_zone
	// gets its flows in a second transaction.
	for (int drain : {0, 30})
	for (const fs::path &example : examples) {
		SCOPED_TRACE(example.string() + " drain " + std::to_string(drain));
		// The lab's uplink is up0.
		std::string text = readFile(example.string());
		size_t uplink = text.find("uplink = \"eth0\"");
		ASSERT_NE(uplink, std::string::npos);
		text.replace(uplink, 15, "uplink = \"up0\"");
		writeConfig(text);
		fs::remove_all(stateDir());
		(void)inNs("nft delete table inet portslice 2>/dev/null");
		startDaemon(drain);
		ASSERT_FALSE(HasFatalFailure());
		connect();

		Outcome offline = ctl("dump --config " + quote(configPath()));
		ASSERT_TRUE(offline.ok()) << offline.output;
		std::string listed = table();
		EXPECT_EQ(offline.output, listed);
		EXPECT_EQ(proxy_->Dump(), listed);

		// Two moves: a slice s1 does not own yet goes to s1 (elements added),
		// then one of s1's goes to another server, or another one comes.
		config::LoadResult loaded = config::loadFile(configPath());
		ASSERT_TRUE(loaded.ok());
		const config::Config &c = *loaded.config;
		std::vector<std::tuple<std::string, uint32_t, std::string>> moves;
		std::string other;
		for (const config::Server &server : c.servers)
			if (server.name != c.serverName)
				other = server.name;
		for (const config::Address &a : c.addresses)
			for (uint32_t i = 0; i < a.sliceCount() && moves.size() < 2; i++)
				if (!a.owners.count(i) || a.owners.at(i) != c.serverName)
					if (moves.empty() || other.empty())
						moves.emplace_back(a.address.str(), i, c.serverName);
		if (!other.empty())
			for (const config::Address &a : c.addresses)
				for (uint32_t i = 0; i < a.sliceCount() && moves.size() < 2; i++)
					if (a.owners.count(i) && a.owners.at(i) == c.serverName)
						moves.emplace_back(a.address.str(), i, other);
		ASSERT_EQ(moves.size(), 2u);
		uint64_t generation = 1;
		for (const auto &[address, slice, server] : moves) {
			SCOPED_TRACE(address + " " + std::to_string(slice) + " -> " + server);
			ASSERT_EQ(proxy_->SetSliceOwner(address, slice, server), ++generation);
			listed = table();
			EXPECT_EQ(proxy_->Dump(), listed);
			EXPECT_NE(listed.find(generationSet(generation)), std::string::npos) << listed;
		}
		// A daemon started again on the table of the moves.
		proxy_.reset();
		connection_->leaveEventLoop();
		connection_.reset();
		stopDaemon(SIGTERM);
		startDaemon(drain);
		ASSERT_FALSE(HasFatalFailure());
		connect();
		listed = table();
		EXPECT_EQ(proxy_->Dump(), listed);
		EXPECT_NE(listed.find(generationSet(proxy_->Generation())), std::string::npos) << listed;
		proxy_.reset();
		connection_->leaveEventLoop();
		connection_.reset();
		stopDaemon(SIGTERM);
	}
}

} // namespace
} // namespace portslice::dbuslab
