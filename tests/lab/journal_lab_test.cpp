// SPDX-License-Identifier: MIT
// The abuse desk and the auditor against a real portsliced on a private bus: owner now, owner at any past second, history, Owners, SliceOwnerChanged, audit.
#include "dbus_lab.h"

#include <cmath>
#include <cstring>
#include <ctime>
#include <limits>
#include <map>
#include <mutex>
#include <regex>
#include <thread>
#include <sstream>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <sdbus-c++/sdbus-c++.h>

#include "common/handle.h"
#include "config/config.h"
#include "dbus/egress1_proxy.h"
#include "plan/plan.h"

namespace portslice::dbuslab {
namespace {

struct OwnerSignal {
	std::string address;
	uint32_t slice;
	std::string old, now;
	uint64_t generation;
	bool operator==(const OwnerSignal &) const = default;
};

class Egress1 final : public sdbus::ProxyInterfaces<org::portslice::Egress1_proxy> {
public:
	Egress1(sdbus::IConnection &connection)
		: ProxyInterfaces(connection, "org.portslice.Egress1", "/org/portslice/Egress1")
	{
		registerProxy();
	}
	~Egress1() { unregisterProxy(); }

	std::vector<OwnerSignal> signals() const
	{
		std::lock_guard lock(mutex_);
		return signals_;
	}

private:
	void onApplied(const uint64_t &) override {}
	void onApplyFailed(const std::string &) override {}
	void onSliceOwnerChanged(const std::string &address, const uint32_t &slice, const std::string &old,
				 const std::string &now, const uint64_t &generation) override
	{
		std::lock_guard lock(mutex_);
		signals_.push_back({address, slice, old, now, generation});
	}

	mutable std::mutex mutex_;
	std::vector<OwnerSignal> signals_;
};

using Key = std::pair<std::string, uint32_t>; // address, slice

// The test's own record of who holds each slice: owner and draining previous owner.
struct Holder {
	std::string owner, previous;
	bool operator==(const Holder &) const = default;
};
using Model = std::map<Key, Holder>;

// One step of the sequence: when it happened (between `before` and `after`,
// Unix seconds as the test's clock saw them), the file then in force, the holders after it.
struct Step {
	double before = 0, after = 0;
	std::string file;
	Model model;
};

// What the abuse desk is told for one port under one step: server, inside (as OwnerAt says it), draining owner.
struct Expected {
	std::string server, inside, previous;
	bool operator==(const Expected &) const = default;
};

double unixNow()
{
	return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// "2026-12-07T12:00:00" (UTC) as Unix seconds.
int64_t unixOf(const std::string &text)
{
	tm parts{};
	::strptime(text.c_str(), "%Y-%m-%dT%H:%M:%S", &parts);
	return static_cast<int64_t>(::timegm(&parts));
}

// Unix seconds as "2026-12-07T12:00:00Z".
std::string utcText(int64_t seconds)
{
	time_t t = static_cast<time_t>(seconds);
	tm parts{};
	::gmtime_r(&t, &parts);
	char text[32];
	std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &parts);
	return text;
}

// Sleep into the next whole second, so that no two steps share a second.
void nextSecond()
{
	double now = unixNow();
	double target = std::floor(now) + 1.05;
	std::this_thread::sleep_for(std::chrono::duration<double>(target - now));
}

std::string fileWith(const std::string &from, const std::string &to)
{
	std::string text = kLabFleet;
	size_t at = text.find(from);
	EXPECT_NE(at, std::string::npos) << from;
	if (at != std::string::npos)
		text.replace(at, from.size(), to);
	return text;
}

Model modelOf(const std::string &file)
{
	config::LoadResult loaded = config::loadString(file, "model.toml");
	EXPECT_TRUE(loaded.ok());
	Model model;
	for (const config::Address &a : loaded.config->addresses)
		for (uint32_t s = 0; s < a.sliceCount(); s++)
			model[{a.address.str(), s}] = {a.owners.count(s) ? a.owners.at(s) : "", ""};
	return model;
}

// The answer under a step, planned from the step's file with the model's holders laid over it.
Expected expectedAt(const Step &step, const std::string &address, uint16_t port)
{
	config::LoadResult loaded = config::loadString(step.file, "model.toml");
	EXPECT_TRUE(loaded.ok());
	config::Config config = *loaded.config;
	for (config::Address &a : config.addresses) {
		for (uint32_t s = 0; s < a.sliceCount(); s++) {
			const Holder &h = step.model.at({a.address.str(), s});
			a.owners[s] = h.owner;
			if (h.previous.empty())
				a.previous.erase(s);
			else
				a.previous[s] = h.previous;
		}
	}
	std::optional<plan::OwnerAnswer> answer = plan::findOwner(config, *Ipv4::parse(address), port);
	EXPECT_TRUE(answer && answer->slice);
	Expected e;
	e.server = answer->server;
	if (answer->inside) {
		e.inside = answer->inside->str();
		if (answer->insideLast && *answer->insideLast != *answer->inside)
			e.inside += "-" + answer->insideLast->str();
	}
	e.previous = step.model.at({address, *answer->slice}).previous;
	return e;
}

class JournalLab : public DbusLab {
protected:
	void connect()
	{
		connection_ = sdbus::createSessionBusConnectionWithAddress(busAddress_);
		connection_->enterEventLoopAsync();
		proxy_ = std::make_unique<Egress1>(*connection_);
	}
	void disconnect()
	{
		proxy_.reset();
		if (connection_)
			connection_->leaveEventLoop();
		connection_.reset();
	}
	void TearDown() override
	{
		disconnect();
		DbusLab::TearDown();
	}
	// Two moves of slice 3 of 198.51.100.1 within one second, and their
	// journal times (RFC 3339 with microseconds); tried 5 times (a slow
	// machine may split them), empty when they never shared a second.
	std::pair<std::string, std::string> twoMovesWithinOneSecond()
	{
		for (int attempt = 0; attempt < 5; attempt++) {
			nextSecond();
			EXPECT_TRUE(ctl("set-owner 198.51.100.1 3 s2").ok());
			EXPECT_TRUE(ctl("set-owner 198.51.100.1 3 s1").ok());
			Outcome rows = ctl("history --json");
			EXPECT_TRUE(rows.ok()) << rows.output;
			std::vector<std::string> times;
			std::regex row(R"re("time": "([^"]+)",\s+"generation": \d+,\s+"address": "198\.51\.100\.1",\s+"slice": 3,)re");
			for (auto it = std::sregex_iterator(rows.output.begin(), rows.output.end(), row); it != std::sregex_iterator(); ++it)
				times.push_back((*it)[1]);
			if (times.size() < 2) {
				ADD_FAILURE() << "fewer than two moves in the history:\n" << rows.output;
				return {};
			}
			std::string a = times[times.size() - 2], b = times.back();
			if (a.substr(0, 19) == b.substr(0, 19) && a != b)
				return {a, b};
			EXPECT_TRUE(ctl("set-owner 198.51.100.1 3 s3").ok());
		}
		return {};
	}

	std::unique_ptr<sdbus::IConnection> connection_;
	std::unique_ptr<Egress1> proxy_;
};

TEST_F(JournalLab, OwnerIsTheDaemonsViewWithMovesAndDrainsAndTheFileAloneWithConfig)
{
	startDaemon(30);
	// The issue's example: after set-owner, the answer is the daemon's, not the file's.
	Outcome moved = ctl("set-owner 198.51.100.1 3 s2");
	ASSERT_TRUE(moved.ok()) << moved.output;
	Outcome online = ctl("owner 198.51.100.1:7200");
	ASSERT_TRUE(online.ok()) << online.output;
	EXPECT_NE(online.output.find("slice 3, server s2"), std::string::npos) << online.output;
	EXPECT_NE(online.output.find("draining: s3 keeps the flows it opened before the move until "), std::string::npos)
		<< online.output;
	Outcome file = ctl("owner 198.51.100.1:7200 --config " + quote(configPath()));
	ASSERT_TRUE(file.ok()) << file.output;
	EXPECT_NE(file.output.find("slice 3, server s3"), std::string::npos) << file.output;
	EXPECT_EQ(file.output.find("draining"), std::string::npos) << file.output;
	EXPECT_NE(call("Owner", "sq 198.51.100.1 7200").output.find("\"s2\""), std::string::npos);

	// A port of this server's own slice: the same source and inside address online as in the file.
	for (uint16_t port = 1024; port < 3072; port += 64) {
		std::string target = "198.51.100.1:" + std::to_string(port);
		Outcome a = ctl("owner " + target + " --json");
		Outcome b = ctl("owner " + target + " --json --config " + quote(configPath()));
		ASSERT_TRUE(a.ok() && b.ok()) << a.output << b.output;
		// The online answer is the offline one with the daemon's fields after it.
		std::istringstream offline(b.output);
		for (std::string line; std::getline(offline, line);) {
			if (line.ends_with(","))
				line.pop_back();
			EXPECT_NE(a.output.find(line), std::string::npos) << line << "\n" << a.output;
		}
		EXPECT_NE(a.output.find("\"server\": \"s1\""), std::string::npos) << a.output;
		// One newline after the document, online and from the file.
		EXPECT_TRUE(a.output.ends_with("}\n") && !a.output.ends_with("\n\n")) << "[" << a.output << "]";
		EXPECT_TRUE(b.output.ends_with("}\n") && !b.output.ends_with("\n\n")) << "[" << b.output << "]";
	}
	// Losing its own slice 0 to s2: s2 owns it now, s1 keeps its flows for 30 s.
	ASSERT_TRUE(ctl("set-owner 198.51.100.1 0 s2").ok());
	Outcome drain = ctl("owner 198.51.100.1:1100 --json");
	ASSERT_TRUE(drain.ok()) << drain.output;
	EXPECT_NE(drain.output.find("\"server\": \"s2\""), std::string::npos) << drain.output;
	size_t draining = drain.output.find("\"draining\": {");
	ASSERT_NE(draining, std::string::npos) << drain.output;
	EXPECT_NE(drain.output.find("\"server\": \"s1\"", draining), std::string::npos) << drain.output;
	Outcome bad = ctl("owner 198.51.100.1:80");
	EXPECT_EQ(bad.status, 1) << bad.output;
	EXPECT_NE(bad.output.find("outside its usable slices"), std::string::npos) << bad.output;
}

TEST_F(JournalLab, OwnerAtAnswersEverySecondOfMovesReloadsDrainsAndRestartsAsTheModelSays)
{
	startDaemon(2);
	connect();
	std::vector<Step> steps;
	const std::string fileA = kLabFleet;
	// Step 0: the start.
	steps.push_back({0, unixNow(), fileA, modelOf(fileA)});
	steps[0].before = steps[0].after - 5; // before the test looked: the daemon was started
	std::vector<OwnerSignal> wantSignals;

	auto act = [&](const std::function<void()> &action, const std::string &file,
		       const std::function<void(Model &)> &change) {
		nextSecond();
		Step s;
		s.before = unixNow();
		action();
		s.after = unixNow();
		s.file = file;
		s.model = steps.back().model;
		change(s.model);
		steps.push_back(std::move(s));
	};
	auto setOwner = [&](const std::string &address, uint32_t slice, const std::string &server) {
		act([&] {
			Outcome r = ctl("set-owner " + address + " " + std::to_string(slice) + " " + server);
			ASSERT_TRUE(r.ok()) << r.output;
		}, steps.back().file, [&](Model &m) {
			Holder &h = m[{address, slice}];
			wantSignals.push_back({address, slice, h.owner, server, 0});
			h.previous = h.owner;
			h.owner = server;
		});
	};
	// A drain ends by the daemon's timer: the step is bracketed by the last
	// poll that still saw the previous owner and the first that did not.
	auto drainEnds = [&](const std::string &address, uint32_t slice) {
		Step s;
		s.file = steps.back().file;
		s.model = steps.back().model;
		s.model[{address, slice}].previous.clear();
		bool ended = false;
		for (int i = 0; i < 100 && !ended; i++) {
			s.before = unixNow();
			std::this_thread::sleep_for(std::chrono::milliseconds(50));
			for (const auto &row : proxy_->Owners())
				if (row.get<0>() == address && row.get<1>() == slice)
					ended = row.get<3>().empty();
		}
		ASSERT_TRUE(ended);
		s.after = unixNow();
		steps.push_back(std::move(s));
	};

	setOwner("198.51.100.1", 3, "s2");   // 1
	drainEnds("198.51.100.1", 3);         // 2
	const std::string fileB = fileWith("slices = { s1 = 0, s2 = 1, s3 = [2, 3] }", "slices = { s1 = [0, 2], s2 = 1, s3 = 3 }");
	act([&] {                             // 3: a reload; the move of slice 3 stays over the file
		writeConfig(fileB);
		Outcome r = ctl("reload");
		ASSERT_TRUE(r.ok()) << r.output;
	}, fileB, [&](Model &m) {
		wantSignals.push_back({"198.51.100.1", 2, "s3", "s1", 0});
		m[{"198.51.100.1", 2}].owner = "s1";
	});
	setOwner("198.51.100.2", 0, "s3");   // 4: this server loses its slice of .2, which drains
	// 5: a restart after the drain's deadline, with another file.
	disconnect();
	stopDaemon(SIGTERM);
	std::this_thread::sleep_for(std::chrono::milliseconds(2100));
	const std::string fileC = fileWith("slices = { s1 = 0, s2 = 1, s3 = 2 }", "slices = { s1 = 0, s2 = [1, 2] }");
	std::string fileCB = fileC;
	fileCB.replace(fileCB.find("slices = { s1 = 0, s2 = 1, s3 = [2, 3] }"), 40, "slices = { s1 = [0, 2], s2 = 1, s3 = 3 }");
	act([&] {
		writeConfig(fileCB);
		startDaemon(2);
	}, fileCB, [&](Model &m) {
		m[{"198.51.100.2", 0}].previous.clear();
		m[{"198.51.100.2", 2}].owner = "s2";
	});
	connect();
	setOwner("198.51.100.1", 1, "s3");   // 6
	drainEnds("198.51.100.1", 1);         // 7
	nextSecond();
	double end = unixNow();

	// The ports asked about: one in each slice, and a stateless block of s1's slice of .1.
	std::vector<std::pair<std::string, uint16_t>> ports;
	for (const char *address : {"198.51.100.1", "198.51.100.2"})
		for (uint16_t port : {1025, 3073, 5121, 7169})
			if (!(std::string(address) == "198.51.100.2" && port == 7169))
				ports.emplace_back(address, port);
	for (uint16_t port = 1024; port < 3072; port += 64) {
		Expected e = expectedAt(steps[0], "198.51.100.1", port);
		if (e.inside.find('-') == std::string::npos && !e.inside.empty()) {
			ports.emplace_back("198.51.100.1", port + 1);
			break;
		}
	}
	ASSERT_EQ(ports.size(), 8u) << "no stateless block found on slice 0 of 198.51.100.1";

	auto ownerAt = [&](const std::string &address, uint16_t port, int64_t when) {
		return proxy_->OwnerAt(address, port, static_cast<uint64_t>(when));
	};
	int checked = 0;
	for (const auto &[address, port] : ports) {
		std::vector<Expected> answers;
		for (const Step &s : steps)
			answers.push_back(expectedAt(s, address, port));
		// The interval is that of the server and inside: a drain's end within it does not cut it.
		auto same = [&](size_t a, size_t b) {
			return answers[a].server == answers[b].server && answers[a].inside == answers[b].inside;
		};
		for (size_t i = 0; i < steps.size(); i++) {
			// The interval of the model: from the step where this answer began to the one where it changes.
			size_t first = i, next = i + 1;
			while (first > 0 && same(first - 1, i))
				first--;
			while (next < steps.size() && same(next, i))
				next++;
			int64_t inside = static_cast<int64_t>(std::floor(steps[i].after));
			std::string where = address + ":" + std::to_string(port) + " step " + std::to_string(i);
			auto [server, insideAddress, from, until] = ownerAt(address, port, inside);
			EXPECT_EQ(server, answers[i].server) << where;
			EXPECT_EQ(insideAddress, answers[i].inside) << where;
			if (first > 0) {
				EXPECT_GE(static_cast<double>(from), std::floor(steps[first].before)) << where;
				EXPECT_LE(static_cast<double>(from), std::floor(steps[first].after)) << where;
			}
			if (next < steps.size()) {
				EXPECT_GE(static_cast<double>(until), std::floor(steps[next].before)) << where;
				EXPECT_LE(static_cast<double>(until), std::floor(steps[next].after)) << where;
			} else {
				EXPECT_EQ(until, 0u) << where;
			}
			// The edges: the answer holds at `from` and at `until - 1`, not a second outside.
			if (first > 0) {
				auto [s1, i1, f1, u1] = ownerAt(address, port, static_cast<int64_t>(from));
				EXPECT_EQ(s1 + " " + i1, answers[i].server + " " + answers[i].inside) << where << " at from";
				auto [s0, i0, f0, u0] = ownerAt(address, port, static_cast<int64_t>(from) - 1);
				EXPECT_EQ(s0 + " " + i0, answers[first - 1].server + " " + answers[first - 1].inside)
					<< where << " before from";
				EXPECT_EQ(u0, from) << where;
			}
			if (until != 0) {
				auto [s2, i2, f2, u2] = ownerAt(address, port, static_cast<int64_t>(until) - 1);
				EXPECT_EQ(s2 + " " + i2, answers[i].server + " " + answers[i].inside) << where << " before until";
				auto [s3, i3, f3, u3] = ownerAt(address, port, static_cast<int64_t>(until));
				EXPECT_EQ(s3 + " " + i3, answers[next].server + " " + answers[next].inside) << where << " at until";
				EXPECT_EQ(f3, until) << where;
			}
			checked++;
		}
	}
	EXPECT_EQ(checked, 8 * static_cast<int>(steps.size()));
	// Before the journal began: not found, with when it begins (the start's second).
	try {
		ownerAt("198.51.100.1", 1025, static_cast<int64_t>(steps[1].before) - 3600);
		ADD_FAILURE() << "an answer before the journal began";
	} catch (const sdbus::Error &e) {
		EXPECT_EQ(e.getName(), "org.portslice.Error.NotFound") << e.getMessage();
		std::smatch begins;
		std::string message = e.getMessage();
		ASSERT_TRUE(std::regex_search(message, begins, std::regex(" begins at (\\S+Z): "))) << message;
		bool duringTheStart = false;
		for (auto t = static_cast<time_t>(std::floor(steps[0].before)); t <= static_cast<time_t>(steps[0].after); t++) {
			tm parts{};
			char text[32];
			::gmtime_r(&t, &parts);
			std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &parts);
			duringTheStart = duringTheStart || begins[1].str() == text;
		}
		EXPECT_TRUE(duringTheStart) << message;
	}
	// A moment to come, however far: not found, never "until now".
	for (uint64_t when : {uint64_t{4000000000}, std::numeric_limits<uint64_t>::max()}) {
		try {
			auto [server, inside, from, until] = proxy_->OwnerAt("198.51.100.1", 1025, when);
			ADD_FAILURE() << when << ": " << server << " from " << from << " until " << until;
		} catch (const sdbus::Error &e) {
			EXPECT_EQ(e.getName(), "org.portslice.Error.NotFound") << e.getMessage();
			EXPECT_NE(e.getMessage().find(" is in the future (now is "), std::string::npos) << e.getMessage();
		}
	}

	// The command line says the same, with the interval.
	int64_t t3 = static_cast<int64_t>(std::floor(steps[3].after));
	Outcome at = ctl("owner 198.51.100.1:5121 --at " + std::to_string(t3));
	ASSERT_TRUE(at.ok()) << at.output;
	EXPECT_NE(at.output.find("slice 2, server s1"), std::string::npos) << at.output;
	EXPECT_NE(at.output.find("held from "), std::string::npos) << at.output;

	// Owners(): every slice of the fleet, as the model's last step.
	std::map<Key, Holder> owners;
	for (const auto &row : proxy_->Owners())
		owners[{row.get<0>(), row.get<1>()}] = {row.get<2>(), row.get<3>()};
	EXPECT_EQ(owners, steps.back().model);

	// SliceOwnerChanged: one per moved slice, with the generation the change got
	// (the restart's change is made before a proxy can listen, and is left out).
	std::vector<OwnerSignal> seen = proxy_->signals();
	ASSERT_EQ(seen.size(), 1u);
	EXPECT_EQ((OwnerSignal{seen[0].address, seen[0].slice, seen[0].old, seen[0].now, 0}),
		  (OwnerSignal{"198.51.100.1", 1, "s2", "s3", 0}));
	EXPECT_EQ(seen[0].generation, proxy_->Generation() - 1);

	// history: one line per change, why included, and --since cuts.
	Outcome history = ctl("history --json");
	ASSERT_TRUE(history.ok()) << history.output;
	EXPECT_TRUE(history.output.ends_with("]\n") && !history.output.ends_with("\n\n")) << history.output;
	std::vector<std::string> lines;
	for (size_t at2 = history.output.find("\"why\": "); at2 != std::string::npos; at2 = history.output.find("\"why\": ", at2 + 1))
		lines.push_back(history.output.substr(at2 + 8, history.output.find('"', at2 + 8) - at2 - 8));
	std::vector<std::string> whys = {"file", "set-owner", "drain end", "file", "file", "set-owner", "file", "file",
					 "file", "set-owner", "drain end"};
	EXPECT_EQ(lines, whys) << history.output;
	Outcome recent = ctl("history --since " + std::to_string(static_cast<int64_t>(std::floor(steps[6].before))));
	ASSERT_TRUE(recent.ok()) << recent.output;
	EXPECT_NE(recent.output.find("198.51.100.1     1      s2         s3         0      set-owner\n"), std::string::npos)
		<< recent.output;
	EXPECT_EQ(recent.output.find("sha256:"), std::string::npos) << recent.output;
	(void)end;
}

// Two moves within one second: --at with a fraction of a second answers for
// that moment (the journal keeps microseconds), not for the end of the
// second; --at with the whole second answers for its end and names every
// owner of that second with its interval to the microsecond.
TEST_F(JournalLab, OwnerAtAMomentWithinASecondOfTwoMovesIsTheOwnerThen)
{
	startDaemon(0);
	auto [first, second] = twoMovesWithinOneSecond();
	ASSERT_FALSE(first.empty()) << "no two moves within one second in 5 tries";
	int64_t us1 = std::stoll(first.substr(20, 6)), us2 = std::stoll(second.substr(20, 6));
	char between[24], before[24];
	std::snprintf(between, sizeof(between), "%06lld", static_cast<long long>((us1 + us2) / 2));
	std::snprintf(before, sizeof(before), "%06lld", static_cast<long long>(us1 / 2));
	std::string prefix = first.substr(0, 19);

	Outcome mid = ctl("owner 198.51.100.1:7200 --at " + prefix + "." + between + "Z");
	ASSERT_TRUE(mid.ok()) << mid.output;
	EXPECT_NE(mid.output.find("at " + prefix + "." + between + "Z: slice 3, server s2"), std::string::npos)
		<< first << " " << second << "\n" << mid.output;
	EXPECT_NE(mid.output.find("held from " + first + " until " + second), std::string::npos) << mid.output;
	Outcome json = ctl("owner 198.51.100.1:7200 --json --at " + prefix + "." + between + "Z");
	ASSERT_TRUE(json.ok()) << json.output;
	EXPECT_TRUE(std::regex_search(json.output, std::regex(R"("slice": 3,\s+"server": "s2",)"))) << json.output;
	if (us1 >= 2) { // before the first move of that second: the owner before it
		Outcome early = ctl("owner 198.51.100.1:7200 --at " + prefix + "." + before + "Z");
		ASSERT_TRUE(early.ok()) << early.output;
		EXPECT_TRUE(early.output.find("slice 3, server s3") != std::string::npos ||
			    early.output.find("slice 3, server s1") != std::string::npos) << early.output;
	}
	Outcome late = ctl("owner 198.51.100.1:7200 --at " + prefix + ".999999Z");
	ASSERT_TRUE(late.ok()) << late.output;
	EXPECT_NE(late.output.find("slice 3, server s1"), std::string::npos) << late.output;

	// The whole second: the answer at its end, and every owner within it.
	Outcome whole = ctl("owner 198.51.100.1:7200 --at " + prefix + "Z");
	ASSERT_TRUE(whole.ok()) << whole.output;
	EXPECT_NE(whole.output.find("at " + prefix + "Z: slice 3, server s1"), std::string::npos) << whole.output;
	EXPECT_NE(whole.output.find("the owner changed within that second"), std::string::npos) << whole.output;
	EXPECT_NE(whole.output.find("from " + first + " until " + second + ": server s2"), std::string::npos)
		<< whole.output;
	EXPECT_NE(whole.output.find("from " + second + " until now: server s1"), std::string::npos) << whole.output;
	// OwnerAt (Unix seconds, the D-Bus contract) answers for the end of that second too.
	Outcome bus = call("OwnerAt", "sqt 198.51.100.1 7200 " + std::to_string(unixOf(prefix)));
	ASSERT_TRUE(bus.ok()) << bus.output;
	EXPECT_EQ(bus.output.find("\"s1\""), 5u) << bus.output; // (s server, ...) = "s1"
}

// The abuse desk asks about a moment inside a drain (slice 2 moved from s3 to
// s1 by SetSliceOwners with drain_seconds > 0): --at names both servers that
// could have sent from the port, each with its source and inside address (the
// previous owner's as its plan as owner said: on s3 the port is a stateless
// block, so the host itself), and when the drain held; a moment after the
// drain's end names the new owner alone.
TEST_F(JournalLab, OwnerAtAMomentInsideADrainNamesBothOwnersWithTheirSourcesAndInsideAddresses)
{
	startDaemon(0);
	// Each owner's answer from a file alone: s3's as the file says, s1's with slice 2 its own.
	std::string moved = (dir_ / "moved.toml").string();
	std::ofstream(moved) << fileWith("slices = { s1 = 0, s2 = 1, s3 = [2, 3] }", "slices = { s1 = [0, 2], s2 = 1, s3 = 3 }");
	auto offline = [&](const std::string &file, const std::string &target) {
		Outcome o = ctl("owner " + target + " --config " + quote(file));
		EXPECT_TRUE(o.ok()) << o.output;
		size_t at = o.output.find("server ");
		return at == std::string::npos ? std::string() : o.output.substr(at, o.output.find('\n', at) - at);
	};
	// A port of slice 2 in a stateless block of s3's, which s1 gives to another source.
	std::string target, s3Says, s1Says;
	for (uint16_t port = 5120 + 64 * 3; port < 7168 && target.empty(); port += 64) {
		std::string t = "198.51.100.1:" + std::to_string(port);
		std::string a = offline(configPath(), t), b = offline(moved, t);
		if (a.starts_with("server s3, source stateless-gb, inside ") && b.starts_with("server s1, source warp-gb")) {
			target = t;
			s3Says = a;
			s1Says = b;
		}
	}
	ASSERT_FALSE(target.empty()) << "no port of slice 2 is stateless on s3 and conntrack on s1";
	// The daemon adds the conntrack source's prefix after its range: the file's words up to the range.
	s1Says = s1Says.substr(0, s1Says.find(';'));
	std::string s3Inside = s3Says.substr(s3Says.find("inside ") + 7);
	s3Inside = s3Inside.substr(0, s3Inside.find(' '));

	int64_t before = static_cast<int64_t>(std::floor(unixNow()));
	Outcome move = call("SetSliceOwners", "'a(sus)u' 1 198.51.100.1 2 s1 6");
	ASSERT_TRUE(move.ok()) << move.output;
	int64_t after = static_cast<int64_t>(std::floor(unixNow()));
	ASSERT_LE(after - before, 2) << "the move took too long for a 6 s drain";
	int64_t inside = after + 1; // a second inside the drain (its deadline is the move's second + 6)
	nextSecond();
	nextSecond();
	std::string moment = utcText(inside);
	auto escaped = [](const std::string &text) { return std::regex_replace(text, std::regex(R"([.()])"), R"(\$&)"); };

	// During the drain: both owners, each with its source and inside address.
	Outcome during = ctl("owner " + target + " --at " + std::to_string(inside));
	ASSERT_TRUE(during.ok()) << during.output;
	EXPECT_NE(during.output.find(target + " at " + moment + ": slice 2, " + s1Says), std::string::npos)
		<< s1Says << "\n" << during.output;
	EXPECT_TRUE(std::regex_search(during.output,
				      std::regex("\n  draining: s3 keeps the flows it opened before the move until \\S+Z: " +
						 escaped(s3Says) + "\n")))
		<< s3Says << "\n" << during.output;
	EXPECT_TRUE(std::regex_search(during.output, std::regex("\n  the drain held from \\S+Z until now\n"))) << during.output;
	// The online answer for now says the same of both.
	Outcome now = ctl("owner " + target);
	ASSERT_TRUE(now.ok()) << now.output;
	EXPECT_NE(now.output.find("slice 2, " + s1Says), std::string::npos) << now.output;
	EXPECT_NE(now.output.find(": " + s3Says + "\n"), std::string::npos) << now.output;

	Outcome json = ctl("owner " + target + " --json --at " + std::to_string(inside));
	ASSERT_TRUE(json.ok()) << json.output;
	EXPECT_TRUE(std::regex_search(json.output, std::regex(R"("slice": 2,\s+"server": "s1",\s+"source": "warp-gb",\s+"inside": \{)")))
		<< json.output;
	EXPECT_TRUE(std::regex_search(json.output, std::regex(R"("draining": \{\s+"server": "s3",\s+"source": "stateless-gb",\s+"inside": \{\s*"first": ")" +
							       escaped(s3Inside) + R"(",\s+"last": ")" + escaped(s3Inside) +
							       R"("\s*\},\s+"nat": "stateless",\s+"until": \d+,\s+"from": \d+,\s+"ended": null\s+\})")))
		<< json.output;

	// The drain ends at its deadline (the daemon's "drain end").
	std::string endedAt;
	for (int i = 0; i < 60 && endedAt.empty(); i++) {
		std::this_thread::sleep_for(std::chrono::milliseconds(250));
		Outcome rows = ctl("history --json --since " + std::to_string(before));
		ASSERT_TRUE(rows.ok()) << rows.output;
		std::smatch m;
		if (std::regex_search(rows.output, m, std::regex(R"re("time": "([^"]+)",\s+"generation": \d+,\s+"address": "198\.51\.100\.1",\s+"slice": 2,[^}]*"why": "drain end")re")))
			endedAt = m[1];
	}
	ASSERT_FALSE(endedAt.empty()) << "the drain did not end within 15 s";
	int64_t ended = unixOf(endedAt.substr(0, 19));
	EXPECT_GE(ended, inside + 1);
	nextSecond();

	// The same moment, asked after the drain: the drain's end is known now.
	during = ctl("owner " + target + " --at " + std::to_string(inside));
	ASSERT_TRUE(during.ok()) << during.output;
	EXPECT_NE(during.output.find(": " + s3Says + "\n"), std::string::npos) << during.output;
	EXPECT_NE(during.output.find("\n  the drain held from "), std::string::npos) << during.output;
	EXPECT_NE(during.output.find("Z until " + utcText(ended) + "\n"), std::string::npos) << during.output;
	json = ctl("owner " + target + " --json --at " + std::to_string(inside));
	ASSERT_TRUE(json.ok()) << json.output;
	EXPECT_TRUE(std::regex_search(json.output, std::regex(R"("ended": )" + std::to_string(ended) + R"(\s+\})")))
		<< json.output;

	// After the deadline: the new owner alone.
	Outcome later = ctl("owner " + target + " --at " + std::to_string(ended));
	ASSERT_TRUE(later.ok()) << later.output;
	EXPECT_NE(later.output.find("slice 2, " + s1Says), std::string::npos) << later.output;
	EXPECT_EQ(later.output.find("draining"), std::string::npos) << later.output;
	EXPECT_EQ(later.output.find("s3"), std::string::npos) << later.output;
	json = ctl("owner " + target + " --json --at " + std::to_string(ended));
	ASSERT_TRUE(json.ok()) << json.output;
	EXPECT_NE(json.output.find("\"draining\": null"), std::string::npos) << json.output;
}

// history's text: whitespace-separated columns, the caller's uid in a column
// of its own, and WHY last holding the why alone (a file's line names the
// file in NEW), so that `history | grep ' set-owner$'` finds the moves.
TEST_F(JournalLab, HistoryTextEndsWithTheWhyAlone)
{
	startDaemon(0);
	ASSERT_TRUE(ctl("set-owner 198.51.100.1 3 s2").ok());
	Outcome history = ctl("history");
	ASSERT_TRUE(history.ok()) << history.output;
	std::istringstream text(history.output);
	std::string line;
	ASSERT_TRUE(std::getline(text, line));
	EXPECT_TRUE(std::regex_match(line, std::regex(R"(TIME +GENERATION +ADDRESS +SLICE +OLD +NEW +UID +WHY)"))) << line;
	std::regex row(R"((\S+) +(\d+) +(\S+) +(\S+) +(\S+) +(\S+) +(\S+) +(file|set-owner|drain end|fleet))");
	std::vector<std::string> whys, uids, news;
	while (std::getline(text, line)) {
		std::smatch m;
		ASSERT_TRUE(std::regex_match(line, m, row)) << "'" << line << "' in\n" << history.output;
		news.push_back(m[6]);
		uids.push_back(m[7]);
		whys.push_back(m[8]);
	}
	ASSERT_EQ(whys, (std::vector<std::string>{"file", "set-owner"})) << history.output;
	EXPECT_TRUE(std::regex_match(news[0], std::regex("sha256:[0-9a-f]{64}"))) << history.output;
	EXPECT_EQ(news[1], "s2") << history.output;
	EXPECT_EQ(uids, (std::vector<std::string>{"-", "0"})) << history.output; // the start had no caller; set-owner was root's
}

// Without journald (a container, this lab) each ownership change is still
// logged: one "<5>" line on standard error per record of the journal,
// naming its fields (time, generation, address, slice, old, new, why,
// file hash, caller uid) as `history` shows them.
TEST_F(JournalLab, EachOwnershipChangeIsALineOnStandardErrorWithoutJournald)
{
	startDaemon(0);
	ASSERT_TRUE(ctl("set-owner 198.51.100.2 1 s1").ok());
	writeConfig(fileWith("slices = { s1 = 0, s2 = 1, s3 = [2, 3] }", "slices = { s1 = [0, 2], s2 = 1, s3 = 3 }"));
	Outcome reloaded = ctl("reload");
	ASSERT_TRUE(reloaded.ok()) << reloaded.output;
	Outcome history = ctl("history");
	ASSERT_TRUE(history.ok()) << history.output;
	std::istringstream text(history.output);
	std::string line;
	ASSERT_TRUE(std::getline(text, line)); // the heading
	std::regex row(R"((\S+) +(\d+) +(\S+) +(\S+) +(\S+) +(\S+) +(\S+) +(file|set-owner|drain end|fleet))");
	std::vector<std::string> expected;
	while (std::getline(text, line)) {
		std::smatch m;
		ASSERT_TRUE(std::regex_match(line, m, row)) << "'" << line << "' in\n" << history.output;
		std::string uid = m[7] == "-" ? "" : ", uid " + m[7].str();
		std::string tail = ", generation " + m[2].str() + ", at " + m[1].str() + uid + "\n";
		if (m[3] == "-") { // a file's own line
			ASSERT_TRUE(m[6].str().starts_with("sha256:")) << line;
			expected.push_back("<5>applied file sha256 " + m[6].str().substr(7) + tail);
		} else {
			auto name = [](const std::string &n) { return n == "(none)" ? std::string("nobody") : n; };
			expected.push_back("<5>slice " + m[4].str() + " of " + m[3].str() + ": " + name(m[5]) + " -> " +
					   name(m[6]) + " (" + m[8].str() + ")" + tail);
		}
	}
	// The start's file, the move, the reload's file and the slice it moved.
	ASSERT_EQ(expected.size(), 4u) << history.output;
	EXPECT_EQ(expected[1].substr(0, expected[1].find(',')), "<5>slice 1 of 198.51.100.2: s2 -> s1 (set-owner)");
	EXPECT_TRUE(expected[1].ends_with(", uid 0\n")) << expected[1];
	EXPECT_TRUE(expected[2].ends_with(", uid 0\n")) << expected[2]; // the reload was root's
	EXPECT_EQ(expected[3].substr(0, expected[3].find(',')), "<5>slice 2 of 198.51.100.1: s3 -> s1 (file)");
	std::string log;
	for (int i = 0; i < 100; i++) { // the lines are written before the reply, but read the file until they are there
		log = readFile(logPath());
		if (std::ranges::all_of(expected, [&](const std::string &e) { return log.find(e) != std::string::npos; }))
			break;
		std::this_thread::sleep_for(std::chrono::milliseconds(20));
	}
	for (const std::string &e : expected)
		EXPECT_NE(log.find(e), std::string::npos) << "no line\n" << e << "in\n" << log;
}

// --since with a fraction of a second cuts to the microsecond: a record
// earlier in that second is not listed (History itself takes whole seconds).
TEST_F(JournalLab, HistorySinceAFractionOfASecondLeavesOutTheRecordsBeforeIt)
{
	startDaemon(0);
	auto [first, second] = twoMovesWithinOneSecond();
	ASSERT_FALSE(first.empty()) << "no two moves within one second in 5 tries";
	auto listed = [&](const std::string &since) {
		Outcome out = ctl("history --since " + since);
		EXPECT_TRUE(out.ok()) << out.output;
		std::vector<std::string> times;
		std::istringstream text(out.output);
		std::string line;
		std::getline(text, line);
		while (std::getline(text, line))
			times.push_back(line.substr(0, line.find(' ')));
		return times;
	};
	// At the second move's microsecond: it alone; at the first's: both.
	EXPECT_EQ(listed(second), (std::vector<std::string>{second}));
	EXPECT_EQ(listed(first), (std::vector<std::string>{first, second}));
	// Fewer digits: the second's tenth of a second before the first move (or the first move's own tenth, cut after it).
	int64_t us1 = std::stoll(first.substr(20, 6));
	std::string tenth = first.substr(0, 19) + "." + std::to_string(us1 / 100000 + 1) + "Z";
	if (us1 / 100000 + 1 <= 9 && std::stoll(second.substr(20, 6)) >= (us1 / 100000 + 1) * 100000) {
		EXPECT_EQ(listed(tenth), (std::vector<std::string>{second})) << tenth;
	}
}

// SetSliceOwners is the fleet's when portslice-fleetd calls it (the kernel's
// name of the caller, "portslice-fleet"); an operator's call with busctl is
// a set-owner. busctl run under the name portslice-fleetd (a symbolic link:
// the kernel names a process after the file it ran) stands in for fleetd.
TEST_F(JournalLab, SetSliceOwnersIsJournaledAsFleetOnlyWhenPortsliceFleetdCallsIt)
{
	startDaemon(0);
	Outcome byHand = call("SetSliceOwners", "'a(sus)u' 1 198.51.100.1 3 s2 0");
	ASSERT_TRUE(byHand.ok()) << byHand.output;
	fs::path fleetd = dir_ / "portslice-fleetd";
	std::string busctl = sh("command -v busctl").output;
	fs::create_symlink(busctl.substr(0, busctl.find('\n')), fleetd);
	Outcome byFleetd = sh(quote(fleetd.string()) + " --address=" + quote(busAddress_) +
			      " call org.portslice.Egress1 /org/portslice/Egress1 org.portslice.Egress1 SetSliceOwners "
			      "'a(sus)u' 1 198.51.100.1 3 s1 0");
	ASSERT_TRUE(byFleetd.ok()) << byFleetd.output;
	Outcome history = ctl("history");
	ASSERT_TRUE(history.ok()) << history.output;
	EXPECT_TRUE(std::regex_search(history.output, std::regex(R"( 198\.51\.100\.1 +3 +s3 +s2 +0 +set-owner\n)")))
		<< history.output;
	EXPECT_TRUE(std::regex_search(history.output, std::regex(R"( 198\.51\.100\.1 +3 +s2 +s1 +0 +fleet\n)")))
		<< history.output;
}

TEST_F(JournalLab, ADamagedRecordIsReportedWithItsOffset)
{
	startDaemon(0);
	connect();
	ASSERT_TRUE(ctl("set-owner 198.51.100.1 3 s2").ok());
	std::string journal = readFile(stateDir() + "/journal");
	size_t second = journal.find('\n') + 1;
	ASSERT_GT(journal.size(), second + 30);
	// Flip a byte in the second record.
	Outcome flipped = sh("printf X | dd of=" + quote(stateDir() + "/journal") + " bs=1 seek=" +
			     std::to_string(second + 25) + " conv=notrunc 2>/dev/null");
	ASSERT_TRUE(flipped.ok()) << flipped.output;
	Outcome history = ctl("history");
	EXPECT_EQ(history.status, 1) << history.output;
	EXPECT_NE(history.output.find("damaged record at offset " + std::to_string(second)), std::string::npos)
		<< history.output;
	Outcome at = ctl("owner 198.51.100.1:7200 --at " + std::to_string(static_cast<int64_t>(unixNow())));
	EXPECT_EQ(at.status, 1) << at.output;
	EXPECT_NE(at.output.find("offset " + std::to_string(second)), std::string::npos) << at.output;
}

// The journal stays usable after damage: a record torn by a crash while
// appending is found at the next start (logged with file and offset), its
// segment closed as it is and a new one begun; a byte changed in a move
// record leaves only the moments it can have touched unknown, and a restart
// makes them known again. history lists what it can and reports each
// damaged record (file, offset) on standard error, exit 1.
TEST_F(JournalLab, ADamagedJournalIsReportedAndTheAnswersItCannotTouchStillCome)
{
	startDaemon(0);
	nextSecond();
	ASSERT_TRUE(ctl("set-owner 198.51.100.1 3 s2").ok());
	nextSecond();
	int64_t moved = static_cast<int64_t>(std::floor(unixNow()));
	nextSecond();
	// The crash: killed while appending a move, half of its line written.
	stopDaemon(SIGKILL);
	std::string journal = stateDir() + "/journal";
	std::string before = readFile(journal);
	size_t move = before.find("\tmove\t");
	ASSERT_NE(move, std::string::npos) << before;
	move = before.rfind('\n', move) + 1;
	std::string torn = before.substr(move, 40);
	{
		std::ofstream out(journal, std::ios::app);
		out << torn;
	}
	startDaemon(0);
	std::string torn_at = "damaged record at offset " + std::to_string(before.size());
	std::string log = readFile(logPath());
	EXPECT_NE(log.find(journal + ": " + torn_at + ": no end of line (torn write)"), std::string::npos) << log;
	std::string closed;
	for (const auto &entry : fs::directory_iterator(stateDir()))
		if (entry.path().filename().string().starts_with("journal-"))
			closed = entry.path().string();
	ASSERT_FALSE(closed.empty());
	EXPECT_EQ(readFile(closed), before + torn); // kept as it was, never rewritten
	EXPECT_NE(readFile(journal).find("\tfile\t"), std::string::npos) << readFile(journal);

	// Every moment answers: the torn move never applied, the restart's file holds the whole state.
	Outcome then = ctl("owner 198.51.100.1:7200 --at " + std::to_string(moved));
	EXPECT_TRUE(then.ok()) << then.output;
	EXPECT_NE(then.output.find("slice 3, server s2"), std::string::npos) << then.output;
	nextSecond();
	Outcome now = ctl("owner 198.51.100.1:7200 --at " + std::to_string(static_cast<int64_t>(std::floor(unixNow()))));
	EXPECT_TRUE(now.ok()) << now.output;
	EXPECT_NE(now.output.find("slice 3, server s2"), std::string::npos) << now.output;
	Outcome history = ctl("history");
	EXPECT_EQ(history.status, 1) << history.output;
	EXPECT_NE(history.output.find("portslicectl history: " + closed + ": " + torn_at), std::string::npos)
		<< history.output;
	EXPECT_NE(history.output.find(" set-owner\n"), std::string::npos) << history.output;
	Outcome since = ctl("history --since " + std::to_string(static_cast<int64_t>(std::floor(unixNow()))));
	EXPECT_TRUE(since.ok()) << since.output; // after the damage: nothing to report

	// A byte changed in a move record (the disk, a hand): from the record
	// before it on, the owner is unknown, and the query says which record.
	ASSERT_TRUE(ctl("set-owner 198.51.100.1 3 s1").ok());
	nextSecond();
	int64_t after = static_cast<int64_t>(std::floor(unixNow()));
	std::string current = readFile(journal);
	size_t second = current.find("\tmove\t");
	ASSERT_NE(second, std::string::npos) << current;
	second = current.rfind('\n', second) + 1;
	Outcome flipped = sh("printf X | dd of=" + quote(journal) + " bs=1 seek=" + std::to_string(second + 25) +
			     " conv=notrunc 2>/dev/null");
	ASSERT_TRUE(flipped.ok()) << flipped.output;
	std::string flipped_at = journal + ": damaged record at offset " + std::to_string(second);
	Outcome unknown = ctl("owner 198.51.100.1:7200 --at " + std::to_string(after));
	EXPECT_EQ(unknown.status, 1) << unknown.output;
	EXPECT_NE(unknown.output.find(flipped_at), std::string::npos) << unknown.output;
	then = ctl("owner 198.51.100.1:7200 --at " + std::to_string(moved));
	EXPECT_TRUE(then.ok()) << then.output; // before it: as if it were not there
	history = ctl("history");
	EXPECT_EQ(history.status, 1) << history.output;
	EXPECT_NE(history.output.find(torn_at), std::string::npos) << history.output;
	EXPECT_NE(history.output.find(flipped_at), std::string::npos) << history.output;

	// A restart closes that segment too and begins from the whole state: known again.
	stopDaemon();
	startDaemon(0);
	log = readFile(logPath());
	EXPECT_NE(log.find(flipped_at + ": checksum mismatch"), std::string::npos) << log;
	nextSecond();
	now = ctl("owner 198.51.100.1:7200 --at " + std::to_string(static_cast<int64_t>(std::floor(unixNow()))));
	EXPECT_TRUE(now.ok()) << now.output;
	EXPECT_NE(now.output.find("slice 3, server s1"), std::string::npos) << now.output;
}

// The copy sent to the systemd journal carries the record's own time, the
// same as the journal file's: the daemon's /run/systemd is, in a mount
// namespace of its own, a directory whose journal/socket the test reads.
TEST_F(JournalLab, TheSystemdJournalCopyOfEachRecordCarriesItsTime)
{
	fs::path run = dir_ / "run-systemd";
	fs::create_directories(run / "journal");
	UniqueFd socket(::socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
	ASSERT_TRUE(socket.isValid());
	sockaddr_un address{};
	address.sun_family = AF_UNIX;
	std::string path = (run / "journal" / "socket").string();
	ASSERT_LT(path.size(), sizeof(address.sun_path));
	std::copy(path.begin(), path.end(), address.sun_path);
	ASSERT_EQ(::bind(socket.get(), reinterpret_cast<sockaddr *>(&address), sizeof(address)), 0) << std::strerror(errno);
	std::string dir = quote(run.string());
	// Standard error is "the journal stream" as systemd says it in
	// JOURNAL_STREAM (device:inode): the log goes to journald, not to it.
	std::ofstream(logPath()).close();
	struct stat st {};
	ASSERT_EQ(::stat(logPath().c_str(), &st), 0);
	std::string stream = "JOURNAL_STREAM=" + std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
	startDaemon(0, {"env", stream, "unshare", "-m", "--propagation", "private", "sh", "-c",
			"mount --bind " + dir + " /run/systemd && exec \"$@\"", "sh"});
	if (HasFatalFailure())
		return;
	ASSERT_TRUE(ctl("set-owner 198.51.100.1 3 s2").ok());
	// The records' times, from the journal file: the start's file, then the move.
	std::map<std::string, std::string> timeOf; // "file" or "move" -> the time field
	std::istringstream lines(readFile(stateDir() + "/journal"));
	for (std::string line; std::getline(lines, line);) {
		std::vector<std::string> f;
		for (size_t at = 0, next = 0; next != std::string::npos; at = next + 1)
			f.push_back(line.substr(at, (next = line.find('\t', at)) == std::string::npos ? next : next - at));
		if (f.size() > 3 && (f[3] == "file" || f[3] == "move"))
			timeOf[f[3]] = f[1];
	}
	ASSERT_EQ(timeOf.size(), 2u) << readFile(stateDir() + "/journal");
	std::map<std::string, std::string> sent; // "file" or "move" -> OWNERSHIP_TIME
	for (int i = 0; i < 200 && sent.size() < 2; i++) {
		char buffer[65536];
		ssize_t n = ::recv(socket.get(), buffer, sizeof(buffer), 0);
		if (n < 0) {
			std::this_thread::sleep_for(std::chrono::milliseconds(10));
			continue;
		}
		std::string datagram(buffer, static_cast<size_t>(n));
		if (datagram.find("MESSAGE_ID=5c1d7e0a9b3f4e2d8a6c0b1e2f3a4d5c\n") == std::string::npos)
			continue;
		size_t at = datagram.find("\nOWNERSHIP_TIME=");
		ASSERT_NE(at, std::string::npos) << datagram;
		std::string time = datagram.substr(at + 16, datagram.find('\n', at + 1) - at - 16);
		sent[datagram.find("\nWHY=set-owner\n") != std::string::npos ? "move" : "file"] = time;
	}
	EXPECT_EQ(sent, timeOf);
	EXPECT_TRUE(std::regex_match(sent["move"], std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)")))
		<< sent["move"];
	// Sent to journald, so not on standard error as well.
	EXPECT_EQ(readFile(logPath()).find("(set-owner)"), std::string::npos) << readFile(logPath());
}

// The first element nft lists in object `name` ("my_ports"): the object's
// header ("set my_ports") and the element as listed ("key" or "key : value").
std::pair<std::string, std::string> firstElement(const std::string &listed, const std::string &name)
{
	size_t objectAt = listed.find("\tset " + name + " {");
	if (objectAt == std::string::npos)
		objectAt = listed.find("\tmap " + name + " {");
	if (objectAt == std::string::npos)
		return {};
	std::string header = listed.substr(objectAt + 1, listed.find(" {", objectAt) - objectAt - 1);
	size_t begin = listed.find("elements = { ", objectAt) + 13;
	size_t endAt = listed.find_first_of(",}\n", begin);
	std::string element = listed.substr(begin, endAt - begin);
	while (!element.empty() && element.back() == ' ')
		element.pop_back();
	return {header, element};
}

// Drift by hand on a daemon started with --no-repair: `audit` names the
// element (typed: read back over netlink, compared with the plan's), exit 1.
TEST_F(JournalLab, AuditNamesExactlyTheElementDeletedByHand)
{
	daemonArgs_ = {"--no-repair"};
	startDaemon(0);
	ASSERT_TRUE(ctl("set-owner 198.51.100.1 1 s1").ok());
	Outcome clean = ctl("audit");
	EXPECT_EQ(clean.status, 0) << clean.output << "\n" << table();
	// Plan() carries the generation the daemon applied.
	Outcome plan = call("Plan");
	EXPECT_NE(plan.output.find("generation\\\": 2,"), std::string::npos) << plan.output.substr(0, 200);
	EXPECT_NE(table().find("\tset generation {\n\t\ttypeof meta cgroup\n\t\telements = { 2 }\n"), std::string::npos)
		<< table();

	for (const char *name : {"my_ports", "ret_zone", "count_addr"}) {
		SCOPED_TRACE(name);
		auto [header, element] = firstElement(table(), name);
		ASSERT_FALSE(element.empty()) << table();
		// A map element is "key : value"; delete takes the key.
		std::string key = element.substr(0, element.find(" : "));
		std::string object = header.substr(header.find(' ') + 1);
		Outcome deleted = inNs("nft delete element inet portslice " + object + " { " + key + " }");
		ASSERT_TRUE(deleted.ok()) << deleted.output;

		Outcome drift = ctl("audit");
		EXPECT_EQ(drift.status, 1) << drift.output;
		std::vector<std::string> lines;
		std::istringstream in(drift.output);
		for (std::string line; std::getline(in, line);)
			if (!line.starts_with("portslicectl audit:"))
				lines.push_back(line);
		ASSERT_EQ(lines.size(), 1u) << drift.output;
		EXPECT_EQ(lines[0], header + ": element " + element + " missing from the kernel") << drift.output;
		EXPECT_NE(drift.output.find("1 difference between the kernel and the plan of generation 2"), std::string::npos)
			<< drift.output;
		// Put back by hand: equal again.
		Outcome added = inNs("nft add element inet portslice " + object + " { " + element + " }");
		ASSERT_TRUE(added.ok()) << added.output;
		Outcome again = ctl("audit");
		EXPECT_EQ(again.status, 0) << again.output;
	}

	// An element the plan does not have, and one with another value.
	Outcome extra = inNs("nft add element inet portslice my_ports { 198.51.100.1 . 60000-60001 }");
	ASSERT_TRUE(extra.ok()) << extra.output;
	auto [header, element] = firstElement(table(), "ret_zone");
	std::string key = element.substr(0, element.find(" : "));
	ASSERT_TRUE(inNs("nft delete element inet portslice ret_zone { " + key + " }").ok());
	ASSERT_TRUE(inNs("nft add element inet portslice ret_zone { " + key + " : 4242 }").ok());
	Outcome both = ctl("audit");
	EXPECT_EQ(both.status, 1) << both.output;
	EXPECT_NE(both.output.find("set my_ports: element 198.51.100.1 . 60000-60001 in the kernel, not in the plan\n"),
		  std::string::npos) << both.output;
	EXPECT_NE(both.output.find("map ret_zone: element " + key + " : 4242 in the kernel, " + element + " in the plan\n"),
		  std::string::npos) << both.output;
	EXPECT_NE(both.output.find("2 differences"), std::string::npos) << both.output;
}

// The lab fleet and a /24 stateless source of `block`-port blocks on a
// third address: 272 stateless inside addresses, a large fleet (docs/nat.md).
std::string largeFleet(int block)
{
	return kLabFleet + "\n[[addresses]]\naddress = \"198.51.100.3\"\ndatacenter = \"lab1\"\n"
			   "tags = { product = \"bulk\" }\nslices = { s1 = 0, s2 = 1, s3 = [2, 3] }\n"
			   "\n[[sources]]\nname = \"bulk\"\nmatch = { saddr = \"100.64.200.0/24\" }\n"
			   "want = { product = \"bulk\" }\nnat = \"stateless\"\nblock = " +
	       std::to_string(block) + "\n";
}

// A fleet large enough for the stateless maps and my_ports to come in
// shards (2 shards; blocks of 6 ports, which no unit form fits): the audit
// reads the verdict maps back and tells a `goto` from a `jump`.
TEST_F(JournalLab, AuditReadsTheShardsOfALargeFleetBackAndTellsGotoFromJump)
{
	writeConfig(largeFleet(6));
	daemonArgs_ = {"--no-repair"};
	startDaemon(0);
	std::string listed = table();
	ASSERT_NE(listed.find("198.51.100.2 : goto my_ports_1"), std::string::npos) << listed;
	ASSERT_NE(listed.find("set my_ports_1 {"), std::string::npos) << listed;
	Outcome clean = ctl("audit");
	EXPECT_EQ(clean.status, 0) << clean.output << "\n" << listed;

	ASSERT_TRUE(inNs("nft delete element inet portslice my_ports_shard { 198.51.100.2 }").ok());
	ASSERT_TRUE(inNs("nft add element inet portslice my_ports_shard { 198.51.100.2 : jump my_ports_1 }").ok());
	Outcome drift = ctl("audit");
	EXPECT_EQ(drift.status, 1) << drift.output;
	EXPECT_NE(drift.output.find("map my_ports_shard: element 198.51.100.2 : jump my_ports_1 in the kernel, "
				    "198.51.100.2 : goto my_ports_1 in the plan\n"),
		  std::string::npos)
		<< drift.output;

	// The slices of 198.51.100.2 (s1's slice 0) are in my_ports_1.
	ASSERT_TRUE(inNs("nft delete element inet portslice my_ports_1 { 198.51.100.2 . 1024-3071 }").ok()) << table();
	Outcome gone = ctl("audit");
	EXPECT_EQ(gone.status, 1) << gone.output;
	EXPECT_NE(gone.output.find("set my_ports_1: element 198.51.100.2 . 1024-3071 missing from the kernel\n"),
		  std::string::npos)
		<< gone.output;
}

// The same fleet with blocks of 8 ports: every block and slice is made of
// 8-port units, so it takes the unit form (docs/nat.md): the audit reads
// its hash maps and the verdict maps that pick their parts back, clean
// after start, and names an element deleted by hand.
TEST_F(JournalLab, AuditReadsTheHashMapsOfTheUnitFormBack)
{
	writeConfig(largeFleet(8));
	daemonArgs_ = {"--no-repair"};
	startDaemon(0);
	std::string listed = table();
	ASSERT_NE(listed.find("ip saddr & 0.0.0.240 vmap @sl_egress_shard"), std::string::npos) << listed;
	ASSERT_NE(listed.find("ip saddr set th sport & 65528 . ip saddr map @sl_egress_0"), std::string::npos) << listed;
	// stateless-gb's inside address 100.64.9.8: the first unit of s1's slice
	// 0 of 198.51.100.2, in part 0 (its bits 4-7).
	ASSERT_NE(listed.find("1024 . 100.64.9.8 : 198.51.100.2"), std::string::npos) << listed;
	Outcome clean = ctl("audit");
	EXPECT_EQ(clean.status, 0) << clean.output << "\n" << listed;

	ASSERT_TRUE(inNs("nft delete element inet portslice sl_egress_0 { 1024 . 100.64.9.8 }").ok()) << table();
	Outcome gone = ctl("audit");
	EXPECT_EQ(gone.status, 1) << gone.output;
	EXPECT_NE(gone.output.find("map sl_egress_0: element 1024 . 100.64.9.8 : 198.51.100.2 missing from the kernel\n"),
		  std::string::npos)
		<< gone.output;
}

// The same drift on a daemon that repairs (the default): it audits the sets
// the commit touched before it undoes it, and logs exactly the element;
// `audit` then finds the table equal again.
TEST_F(JournalLab, ARepairingDaemonNamesTheElementDeletedByHandBeforePuttingItBack)
{
	startDaemon(0);
	ASSERT_TRUE(ctl("set-owner 198.51.100.1 1 s1").ok());
	std::string before = table();
	auto [header, element] = firstElement(before, "nat_port");
	ASSERT_FALSE(element.empty()) << before;
	std::string key = element.substr(0, element.find(" : "));
	Outcome deleted = inNs("nft delete element inet portslice nat_port { " + key + " }");
	ASSERT_TRUE(deleted.ok()) << deleted.output;
	std::string expected = header + ": element " + element + " missing from the kernel";
	bool logged = false;
	for (int i = 0; i < 250 && !logged; i++) {
		std::string log = readFile(logPath());
		logged = log.find("restored generation 2 by undoing its 1 element changes") != std::string::npos;
		if (!logged)
			std::this_thread::sleep_for(std::chrono::milliseconds(20));
	}
	std::string log = readFile(logPath());
	ASSERT_TRUE(logged) << log;
	EXPECT_NE(log.find("changed by a commit by nft pid "), std::string::npos) << log;
	EXPECT_NE(log.find(": " + expected + "; restored generation 2"), std::string::npos) << expected << "\n" << log;
	Outcome audit = ctl("audit");
	EXPECT_EQ(audit.status, 0) << audit.output;
	EXPECT_EQ(call("Dump").status, 0);

	// The set that names the generation, rewritten by hand, is named and put back too.
	Outcome forged = inNs("printf 'flush set inet portslice generation\\nadd element inet portslice generation "
			      "{ 99 }\\n' | nft -f -");
	ASSERT_TRUE(forged.ok()) << forged.output;
	std::string generationBack = "\tset generation {\n\t\ttypeof meta cgroup\n\t\telements = { 2 }\n";
	bool back = false;
	for (int i = 0; i < 250 && !back; i++) {
		back = readFile(logPath()).find("set generation: element 99 in the kernel") != std::string::npos &&
		       table().find(generationBack) != std::string::npos;
		if (!back)
			std::this_thread::sleep_for(std::chrono::milliseconds(20));
	}
	log = readFile(logPath());
	EXPECT_TRUE(back) << log << table();
	EXPECT_NE(log.find("set generation: element 2 missing from the kernel"), std::string::npos) << log;
	EXPECT_EQ(ctl("audit").status, 0);
}

// A rule deleted by hand and another added: the daemon names the chains,
// rewrites their rules in one transaction (not the whole table), and the
// table lists as before.
TEST_F(JournalLab, ARuleDeletedOrAddedByHandIsPutBackByRewritingItsChain)
{
	startDaemon(0);
	std::string before = table();
	Outcome rules = inNs("nft -a list chain inet portslice egress");
	ASSERT_TRUE(rules.ok()) << rules.output;
	std::smatch m;
	ASSERT_TRUE(std::regex_search(rules.output, m, std::regex("counter name ip saddr map @count_sl # handle ([0-9]+)")))
		<< rules.output;
	Outcome deleted = inNs("nft delete rule inet portslice egress handle " + m[1].str());
	ASSERT_TRUE(deleted.ok()) << deleted.output;
	auto waitFor = [&](const std::string &line) {
		for (int i = 0; i < 250; i++) {
			if (readFile(logPath()).find(line) != std::string::npos)
				return true;
			std::this_thread::sleep_for(std::chrono::milliseconds(20));
		}
		return false;
	};
	ASSERT_TRUE(waitFor("rules of chain egress; restored generation 1 by rewriting the rules of 1 chain"))
		<< readFile(logPath());
	EXPECT_EQ(table(), before);
	EXPECT_EQ(readFile(logPath()).find("restoring generation"), std::string::npos) << "a full replace";

	Outcome added = inNs("nft add rule inet portslice port_guard meta l4proto { tcp, udp } accept");
	ASSERT_TRUE(added.ok()) << added.output;
	ASSERT_TRUE(waitFor("rules of chain port_guard; restored generation 1 by rewriting the rules of 1 chain"))
		<< readFile(logPath());
	EXPECT_EQ(table(), before);
	EXPECT_EQ(ctl("audit").status, 0);
}

} // namespace
} // namespace portslice::dbuslab
