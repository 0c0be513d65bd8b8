// SPDX-License-Identifier: MIT
// Fleet mode's pure parts: the ownership function every fleetd computes alike, the etcd key space, the [fleet] keys, the status file.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>

#include <stdlib.h>

#include "config/config.h"
#include "fleet/etcd.h"
#include "fleet/ownership.h"
#include "fleet/status.h"
#include "fleet/view.h"
#include "fixture.h"

namespace portslice::fleet {
namespace {

// Two data centres: lab1 with s1, s2, s3, s4; lab2 with t1. Each lab1 address
// has four slices, one per lab1 server; slice 3 of .1 has no file owner.
const std::string kFleet = portslice::test::fixture("fleet.toml");

config::Config load(const std::string &text = kFleet)
{
	config::LoadResult loaded = config::loadString(text, "fleet.toml");
	for (const config::Diagnostic &d : loaded.diagnostics)
		ADD_FAILURE() << d.str();
	return *loaded.config;
}

std::string nameOf(const config::Config &c, int32_t server)
{
	return server < 0 ? "-" : c.servers[static_cast<size_t>(server)].name;
}

TEST(FleetConfig, ReadsTheFleetSection)
{
	config::Config c = load();
	ASSERT_TRUE(c.fleet);
	EXPECT_EQ(c.fleet->etcd.size(), 3u);
	EXPECT_EQ(c.fleet->prefix, "/portslice/lab1");
	EXPECT_EQ(c.fleet->leaseSeconds, 2u);
	EXPECT_EQ(c.fleet->returnHomeSeconds, 30u);
}

TEST(FleetConfig, AFileWithoutFleetHasNone)
{
	std::string text = kFleet;
	size_t from = text.find("[fleet]"), to = text.find("[defaults]");
	text.erase(from, to - from);
	EXPECT_FALSE(load(text).fleet);
}

TEST(FleetConfig, BadKeysAreErrorsWithFileLineAndColumn)
{
	struct Case {
		std::string replace, with, says;
	};
	for (const Case &c : std::vector<Case>{
		     {"\"http://etcd.example\"", "\"ftp://etcd.example\"", "fleet.toml:6:67: error: 'etcd': 'ftp://etcd.example' is not an http:// or https:// URL"},
		     {"\"http://etcd.example\"", "\"http://etcd.example:99999\"", "fleet.toml:6:67: error: 'etcd': 'http://etcd.example:99999': the port must be a number from 1 to 65535"},
		     {"\"http://etcd.example\"", "\"http://etcd.example/v3\"", "fleet.toml:6:67: error: 'etcd': 'http://etcd.example/v3': give only the scheme, host and port"},
		     {"\"http://etcd.example\"", "\"http://\"", "fleet.toml:6:67: error: 'etcd': 'http://' names no host"},
		     {"etcd = [\"http://192.0.2.100:2379\", \"https://[2001:db8::1]:2379/\", \"http://etcd.example\"]", "etcd = []", "fleet.toml:6:8: error: 'etcd' must be a non-empty array"},
		     {"prefix = \"/portslice/lab1\"", "prefix = \"portslice/\"", "fleet.toml:7:10: error: 'prefix' must start with '/'"},
		     {"lease_seconds = 2", "lease_seconds = 0", "fleet.toml:8:17: error: 'lease_seconds' must be between 1 and 3600, not 0"},
		     {"lease_seconds = 2", "lease_second = 2", "fleet.toml:8:1: error: unknown key 'lease_second' in [fleet]; did you mean 'lease_seconds'?"},
		     {"lease_seconds = 2", "lease_seconds = 2\ncert_file = \"/etc/portslice/etcd.pem\"", "[fleet] needs both 'cert_file' and 'key_file'"},
	     }) {
		std::string text = kFleet;
		size_t at = text.find(c.replace);
		ASSERT_NE(at, std::string::npos) << c.replace;
		text.replace(at, c.replace.size(), c.with);
		config::LoadResult loaded = config::loadString(text, "fleet.toml");
		EXPECT_FALSE(loaded.ok()) << c.with;
		std::string all;
		for (const config::Diagnostic &d : loaded.diagnostics)
			all += d.str() + "\n";
		EXPECT_NE(all.find(c.says), std::string::npos) << all;
	}
}

TEST(FleetConfig, EtcdUrlsTakeHostsPortsAndIpv6)
{
	for (const char *good : {"http://192.0.2.100:2379", "https://etcd-1.example:2379", "http://[2001:db8::1]:2379",
				 "https://etcd.example/", "http://localhost"})
		EXPECT_EQ(config::checkEtcdUrl(good), "") << good;
	for (const char *bad : {"192.0.2.100:2379", "http://a b", "http://user@etcd:2379", "http://etcd:", "http://[::1"})
		EXPECT_NE(config::checkEtcdUrl(bad), "") << bad;
	// An IPv6 address outside brackets: its last group is not a port.
	EXPECT_NE(config::checkEtcdUrl("http://2001:db8::1:2379").find("in brackets"), std::string::npos);
	EXPECT_NE(config::checkEtcdUrl("http://a]b:2379"), "");
	// Schemes in any case; what fleetd and portslicectl use: lower case, and etcd's port 2379 when none is given.
	std::string normal;
	EXPECT_EQ(config::checkEtcdUrl("HTTPS://etcd.example:2380/", &normal), "");
	EXPECT_EQ(normal, "https://etcd.example:2380");
	EXPECT_EQ(config::checkEtcdUrl("http://192.0.2.100", &normal), "");
	EXPECT_EQ(normal, "http://192.0.2.100:2379");
	EXPECT_EQ(config::checkEtcdUrl("http://[2001:db8::1]", &normal), "");
	EXPECT_EQ(normal, "http://[2001:db8::1]:2379");
	// The fixture's "http://etcd.example" and "https://[2001:db8::1]:2379/", as loaded.
	std::string text = kFleet;
	text.replace(text.find("http://192.0.2.100"), 4, "HTTP");
	config::Config c = load(text);
	ASSERT_TRUE(c.fleet);
	EXPECT_EQ(c.fleet->etcd, (std::vector<std::string>{"http://192.0.2.100:2379", "https://[2001:db8::1]:2379",
							    "http://etcd.example:2379"}));
}

TEST(Ownership, TheFileOwnerKeepsItsSlicesWhileLive)
{
	config::Config c = load();
	OwnerKeys keys;
	Ownership o(c, {"s1", "s2", "s3", "s4", "t1"}, keys);
	EXPECT_EQ(nameOf(c, o.owner(0, 0)), "s1");
	EXPECT_EQ(nameOf(c, o.owner(0, 1)), "s2");
	EXPECT_EQ(nameOf(c, o.owner(0, 2)), "s3");
	EXPECT_EQ(nameOf(c, o.owner(0, 3)), "-"); // no file owner, no key: nothing to hand over
	EXPECT_EQ(nameOf(c, o.owner(1, 3)), "s4");
}

TEST(Ownership, ADeadServersSlicesGoToTheRendezvousWinnerOfTheSameDataCentre)
{
	config::Config c = load();
	OwnerKeys keys;
	std::set<std::string> live{"s1", "s2", "s4", "t1"}; // s3 is dead
	Ownership o(c, live, keys);
	for (size_t a : {0u, 1u}) {
		int32_t got = o.owner(a, 2);
		// The highest score among the live servers of lab1, by hand.
		std::string best;
		uint64_t bestScore = 0;
		for (const char *s : {"s1", "s2", "s4"}) {
			uint64_t score = rendezvousScore(c.addresses[a].address, 2, s);
			if (best.empty() || score > bestScore) {
				best = s;
				bestScore = score;
			}
		}
		EXPECT_EQ(nameOf(c, got), best) << a;
		EXPECT_NE(nameOf(c, got), "t1"); // never another data centre
	}
	// Live servers keep theirs.
	EXPECT_EQ(nameOf(c, o.owner(1, 0)), "s1");
	EXPECT_EQ(nameOf(c, o.owner(1, 3)), "s4");
}

TEST(Ownership, NoLiveServerInTheDataCentreLeavesTheFileOwner)
{
	config::Config c = load();
	OwnerKeys keys;
	Ownership o(c, {"s1", "s2"}, keys); // t1 dead, alone in lab2
	EXPECT_EQ(nameOf(c, o.owner(2, 0)), "t1");
}

TEST(Ownership, AnOwnersKeyWinsWhileItsServerIsLiveThenTheFileDecides)
{
	config::Config c = load();
	OwnerKeys keys;
	keys[{c.addresses[0].address.value, 0}] = OwnerKey{"s2", "s1", 0};
	keys[{c.addresses[0].address.value, 3}] = OwnerKey{"s4", "", 0};
	EXPECT_EQ(nameOf(c, Ownership(c, {"s1", "s2", "s3", "s4"}, keys).owner(0, 0)), "s2");
	EXPECT_EQ(nameOf(c, Ownership(c, {"s1", "s2", "s3", "s4"}, keys).owner(0, 3)), "s4");
	// The key's server is dead: the file's owner, if live.
	EXPECT_EQ(nameOf(c, Ownership(c, {"s1", "s3", "s4"}, keys).owner(0, 0)), "s1");
	// A key naming a server the file does not have is ignored.
	keys[{c.addresses[0].address.value, 1}] = OwnerKey{"s9", "", 0};
	EXPECT_EQ(nameOf(c, Ownership(c, {"s1", "s2", "s3", "s4"}, keys).owner(0, 1)), "s2");
}

TEST(Ownership, OnlyTheDeadServersSlicesMoveAndTheySpreadOverTheSurvivors)
{
	// 64 addresses of 32 slices, 4 servers owning 8 slices each.
	std::string text = R"([server]
name = "s1"
uplink = "eth0"
[defaults]
port_range = "1024-65535"
slice_size = 2016
[[datacenters]]
name = "lab1"
)";
	for (int s = 1; s <= 4; s++)
		text += "[[servers]]\nname = \"s" + std::to_string(s) + "\"\naddress = \"192.0.2." + std::to_string(10 + s) +
			"\"\ndatacenter = \"lab1\"\n";
	for (int a = 0; a < 64; a++) {
		text += "[[addresses]]\naddress = \"198.51.100." + std::to_string(a + 1) +
			"\"\ndatacenter = \"lab1\"\ntags = { x = \"y\" }\nslices = { ";
		for (int s = 1; s <= 4; s++) {
			text += std::string(s > 1 ? ", " : "") + "s" + std::to_string(s) + " = [";
			for (int i = 0; i < 8; i++)
				text += std::string(i ? ", " : "") + std::to_string((s - 1) * 8 + i);
			text += "]";
		}
		text += " }\n";
	}
	config::Config c = load(text);
	ASSERT_EQ(c.addresses[0].sliceCount(), 32u);
	OwnerKeys keys;
	auto all = Ownership(c, {"s1", "s2", "s3", "s4"}, keys).all();
	auto after = Ownership(c, {"s1", "s2", "s4"}, keys).all();
	std::map<std::string, int> gained;
	for (size_t a = 0; a < all.size(); a++)
		for (size_t s = 0; s < all[a].size(); s++) {
			if (nameOf(c, all[a][s]) != "s3") {
				EXPECT_EQ(after[a][s], all[a][s]) << a << "/" << s; // a live server's slices stay
			} else {
				gained[nameOf(c, after[a][s])]++;
			}
		}
	ASSERT_EQ(gained.size(), 3u);
	for (const auto &[server, n] : gained) {
		EXPECT_NE(server, "s3");
		// 512 slices over 3 survivors: about 171 each.
		EXPECT_GT(n, 120) << server;
		EXPECT_LT(n, 220) << server;
	}
	// s3 returns: every slice goes back to where it was.
	EXPECT_EQ(Ownership(c, {"s1", "s2", "s3", "s4"}, keys).all(), all);
	// A second death moves only that server's slices (and those s3's went to it).
	auto second = Ownership(c, {"s1", "s4"}, keys).all();
	for (size_t a = 0; a < all.size(); a++) {
		for (size_t s = 0; s < all[a].size(); s++) {
			if (nameOf(c, after[a][s]) != "s2") {
				EXPECT_EQ(second[a][s], after[a][s]) << a << "/" << s;
			}
		}
	}
}

TEST(Ownership, TheRendezvousScoreIsTheSameOnEveryMachine)
{
	// Fixed numbers (computed apart, in Python): a change of the hash would split a fleet of mixed versions.
	EXPECT_EQ(rendezvousScore(*Ipv4::parse("198.51.100.1"), 0, "s1"), 0x58b9dd4652e3d11bull);
	EXPECT_NE(rendezvousScore(*Ipv4::parse("198.51.100.1"), 0, "s1"), rendezvousScore(*Ipv4::parse("198.51.100.1"), 1, "s1"));
	EXPECT_NE(rendezvousScore(*Ipv4::parse("198.51.100.1"), 0, "s1"), rendezvousScore(*Ipv4::parse("198.51.100.2"), 0, "s1"));
}

TEST(FleetView, BuildsFromTheKeysAndIgnoresWhatItCannotRead)
{
	View v;
	const std::string p = "/portslice/lab1";
	EXPECT_EQ(v.put(p, p + "/members/s1", encodeMember({"192.0.2.11", 1700000000, "0.1.0", 0}), 5, 77), "");
	EXPECT_EQ(v.put(p, p + "/live", encodeLive({{"s1", "s2"}, 1700000001}), 6, 0), "");
	EXPECT_EQ(v.put(p, p + "/leader", "s1", 7, 77), "");
	EXPECT_EQ(v.put(p, p + "/owners/198.51.100.1/3", encodeOwner({"s2", "s1", 1700000060}), 8, 0), "");
	EXPECT_NE(v.put(p, p + "/owners/198.51.100.1/x", encodeOwner({"s2", "", 0}), 9, 0), "");
	EXPECT_NE(v.put(p, p + "/owners/198.51.100.1/4", "{\"owner\": 3}", 9, 0), "");
	EXPECT_NE(v.put(p, p + "/live", "[1,2]", 10, 0), "");
	EXPECT_NE(v.put(p, p + "0/live", encodeLive({{"s9"}, 1}), 10, 0), ""); // /portslice/lab10 is another fleet
	ASSERT_EQ(v.members.size(), 1u);
	EXPECT_EQ(v.members["s1"].address, "192.0.2.11");
	EXPECT_EQ(v.members["s1"].lease, 77);
	ASSERT_TRUE(v.live);
	EXPECT_EQ(v.live->servers, (std::set<std::string>{"s1", "s2"}));
	EXPECT_EQ(v.liveModRevision, 6);
	EXPECT_EQ(v.leader, "s1");
	ASSERT_EQ(v.owners.size(), 1u);
	EXPECT_EQ(v.owners.begin()->second, (OwnerKey{"s2", "s1", 1700000060}));
	v.erase(p, p + "/members/s1");
	v.erase(p, p + "/leader");
	v.erase(p, p + "/owners/198.51.100.1/3");
	EXPECT_TRUE(v.members.empty());
	EXPECT_EQ(v.leader, "");
	EXPECT_TRUE(v.owners.empty());
}

// An operator's etcdctl put is checked as the file would be: each of these is
// ignored with its reason (fleetd logs "ignoring etcd key KEY: WHY"), and the
// slice goes back to what the file says.
TEST(FleetView, OwnersKeysTheFileCannotHaveAreIgnoredWithTheReason)
{
	config::Config c = load();
	View v;
	v.table = &c;
	const std::string p = "/portslice/lab1";
	EXPECT_EQ(v.put(p, p + "/owners/198.51.100.1/1", encodeOwner({"s1", "s2", 1700000060}), 5, 0), "");
	ASSERT_EQ(v.owners.size(), 1u);
	std::string why = v.put(p, p + "/owners/198.51.100.1/1", R"({"owner":"s1","previous":"s2","until":"soon"})", 6, 0);
	EXPECT_NE(why, "");
	EXPECT_TRUE(v.owners.empty()) << "the key no longer says anything the file can use";
	why = v.put(p, p + "/owners/198.51.100.1/1", R"({"owner":"s9"})", 7, 0);
	EXPECT_NE(why.find("\"s9\" is not a server of the file"), std::string::npos) << why;
	why = v.put(p, p + "/owners/198.51.100.1/1", R"({"owner":"s1","previous":"s8","until":0})", 7, 0);
	EXPECT_NE(why.find("\"s8\" is not a server of the file"), std::string::npos) << why;
	why = v.put(p, p + "/owners/198.51.100.9/1", R"({"owner":"s1"})", 8, 0);
	EXPECT_NE(why.find("198.51.100.9 is not a shared address of the file"), std::string::npos) << why;
	why = v.put(p, p + "/owners/198.51.100.1/77", R"({"owner":"s1"})", 9, 0);
	EXPECT_NE(why.find("slice 77 of 198.51.100.1 does not exist"), std::string::npos) << why;
	EXPECT_TRUE(v.owners.empty());
	// Without the table (portslicectl reading a key) only the form is checked.
	View bare;
	EXPECT_EQ(bare.put(p, p + "/owners/198.51.100.9/1", R"({"owner":"s9"})", 8, 0), "");
	EXPECT_FALSE(decodeOwner(R"({"owner":"s1","until":1.5})"));
	EXPECT_TRUE(decodeOwner(R"({"owner":"s1"})"));
}

TEST(FleetEtcd, Base64AndPrefixEndAreWhatEtcdExpects)
{
	EXPECT_EQ(base64Encode("/a"), "L2E=");
	EXPECT_EQ(base64Encode("s1"), "czE=");
	EXPECT_EQ(base64Encode("abc"), "YWJj");
	EXPECT_EQ(base64Decode("L3BvcnRzbGljZS9sYWIxL2xpdmU="), "/portslice/lab1/live");
	EXPECT_EQ(base64Decode(base64Encode(std::string("\0\xff\x10z", 4))), std::string("\0\xff\x10z", 4));
	EXPECT_EQ(prefixEnd("/portslice/lab1/"), "/portslice/lab10");
}

TEST(FleetStatus, SaysWhyNoMoveCanHappenWhenEtcdIsDownOrFleetdIsGone)
{
	LinkStatus s;
	s.server = "s1";
	s.updated = 1000;
	s.leaseSeconds = 2;
	s.etcdReachable = false;
	s.error = "no etcd endpoint answers (http://192.0.2.100:2379: Couldn't connect to server)";
	s.lastContact = 990;
	s.liveServers = {"s1", "s2"};
	s.live = true;
	s.leader = "s2";
	s.appliedRevision = 41;
	s.revision = 41;
	std::optional<LinkStatus> back = decodeStatus(encodeStatus(s));
	ASSERT_TRUE(back);
	std::string text = describeStatus(*back, 1001);
	EXPECT_NE(text.find("fleet: etcd unreachable: no etcd endpoint answers (http://192.0.2.100:2379: Couldn't connect"),
		  std::string::npos) << text;
	EXPECT_NE(text.find("no move can happen"), std::string::npos) << text;
	EXPECT_NE(text.find("last answer from etcd 11 s ago"), std::string::npos) << text;
	EXPECT_NE(text.find("fleet live: s1, s2"), std::string::npos) << text;
	EXPECT_NE(text.find("fleet revision: 41 applied"), std::string::npos) << text;
	std::string stale = describeStatus(*back, 1000 + 3 * 2 + 6);
	EXPECT_NE(stale.find("has not written its status for 12 s"), std::string::npos) << stale;
}

// fleetd writes its status from two threads (the session's keep-alives, the
// applier's applies): every write must land, and a reader must always find a
// whole file, never one another writer is still filling.
TEST(FleetStatus, TwoThreadsWritingAtOnceEachLandWholeAndAReaderOnlySeesWholeFiles)
{
	std::string dir = (std::filesystem::temp_directory_path() / "portslice-status-XXXXXX").string();
	ASSERT_NE(::mkdtemp(dir.data()), nullptr);
	std::string path = dir + "/fleetd.json";
	LinkStatus first;
	first.server = "s1";
	ASSERT_TRUE(writeStatusFile(path, first));

	constexpr int kWrites = 400;
	std::atomic<int> writersDone{0};
	std::mutex failuresMutex;
	std::vector<std::string> failures;
	auto writer = [&](const std::string &name) {
		LinkStatus s;
		s.server = name;
		// Long enough that a write is not one syscall's worth of luck.
		for (int i = 0; i < 200; i++)
			s.members.push_back(name + "-member-" + std::to_string(i));
		for (int i = 0; i < kWrites; i++) {
			s.revision = i;
			if (Status w = writeStatusFile(path, s); !w) {
				std::lock_guard lock(failuresMutex);
				failures.push_back(w.error().message());
			}
		}
		writersDone++;
	};
	std::thread a(writer, "a"), b(writer, "b");
	int reads = 0, broken = 0;
	std::string lastBroken;
	for (; writersDone < 2 && reads < 200000; reads++) {
		Result<LinkStatus> read = readStatusFile(path);
		if (!read || (read->server != "s1" && read->members.size() != 200)) {
			broken++;
			lastBroken = read ? "a file with " + std::to_string(read->members.size()) + " members"
					  : read.error().message();
		}
	}
	a.join();
	b.join();
	EXPECT_EQ(failures.size(), 0u) << failures.front();
	EXPECT_EQ(broken, 0) << "of " << reads << " reads; the last: " << lastBroken;
	Result<LinkStatus> last = readStatusFile(path);
	ASSERT_TRUE(last);
	EXPECT_EQ(last->revision, kWrites - 1);
	// Nothing left behind but the file, readable by group portslice and the rest.
	std::vector<std::string> names;
	for (const auto &e : std::filesystem::directory_iterator(dir))
		names.push_back(e.path().filename().string());
	EXPECT_EQ(names, std::vector<std::string>{"fleetd.json"});
	EXPECT_EQ(std::filesystem::status(path).permissions() & std::filesystem::perms::all,
		  std::filesystem::perms(0644));
	std::filesystem::remove_all(dir);
}

} // namespace
} // namespace portslice::fleet
