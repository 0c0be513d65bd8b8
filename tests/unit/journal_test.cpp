// SPDX-License-Identifier: MIT
// The ownership journal: record lines, damage with offsets, RFC 3339 times, SHA-256, replay, past answers, rotation.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "journal/journal.h"
#include "journal/replay.h"
#include "journal/sha256.h"
#include "fixture.h"

namespace portslice::journal {
namespace {

namespace fs = std::filesystem;

const std::string kFleet = portslice::test::fixture("journal.toml");

const uint32_t kAddress = Ipv4::parse("198.51.100.1")->value;

Record moveRecord(int64_t seconds, uint64_t generation, uint32_t slice, std::string old, std::string owner,
		  std::string previous = "", int64_t until = 0)
{
	Record r{.kind = Record::Kind::Move, .timeUs = seconds * 1000000, .generation = generation, .why = "set-owner"};
	r.key = {kAddress, slice};
	r.old = std::move(old);
	r.after = {std::move(owner), std::move(previous), until};
	return r;
}

Record outcome(int64_t seconds, uint64_t generation, bool applied = true)
{
	return {.kind = Record::Kind::Outcome, .timeUs = seconds * 1000000 + 500, .generation = generation,
		.applied = applied};
}

class JournalTest : public ::testing::Test {
protected:
	void SetUp() override
	{
		std::string pattern = (fs::temp_directory_path() / "psd-journal-XXXXXX").string();
		ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
		dir_ = pattern;
		config::LoadResult loaded = config::loadString(kFleet, "fleet.toml");
		ASSERT_TRUE(loaded.ok());
		files_[sha256Hex(kFleet)] = std::make_shared<const config::Config>(*loaded.config);
	}
	void TearDown() override { fs::remove_all(dir_); }

	FileLoader loader()
	{
		return [this](const std::string &hash) -> Result<std::shared_ptr<const config::Config>> {
			auto it = files_.find(hash);
			if (it == files_.end())
				return Error("no kept file " + hash);
			return it->second;
		};
	}
	Record fileRecord(int64_t seconds, uint64_t generation)
	{
		Record r{.kind = Record::Kind::File, .timeUs = seconds * 1000000, .generation = generation, .why = "file"};
		r.hash = sha256Hex(kFleet);
		return r;
	}

	fs::path dir_;
	std::map<std::string, std::shared_ptr<const config::Config>> files_;
};

TEST(Sha256, MatchesTheFipsExamples)
{
	EXPECT_EQ(sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	EXPECT_EQ(sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	EXPECT_EQ(sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
		  "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
	EXPECT_EQ(sha256Hex(std::string(1000000, 'a')),
		  "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Times, Rfc3339AndUnixSecondsAreRead)
{
	EXPECT_EQ(parseTime("2026-11-29T09:40:00Z"), int64_t{1795945200} * 1000000);
	EXPECT_EQ(parseTime("1795945200"), int64_t{1795945200} * 1000000);
	EXPECT_EQ(parseTime("2026-11-29T10:40:00+01:00"), int64_t{1795945200} * 1000000);
	EXPECT_EQ(parseTime("2026-11-29T09:40:00.25Z"), int64_t{1795945200} * 1000000 + 250000);
	EXPECT_EQ(formatTime(int64_t{1795945200} * 1000000 + 7), "2026-11-29T09:40:00.000007Z");
	EXPECT_EQ(formatSeconds(1795945200), "2026-11-29T09:40:00Z");
	for (const char *bad : {"", "yesterday", "2026-11-29", "2026-11-29T09:40:00", "2026-02-31T00:00:00Z",
				"2026-11-29T25:00:00Z", "2026-11-29T09:40:00+1", "-5", "99999999999999"})
		EXPECT_FALSE(parseTime(bad).has_value()) << bad;
}

TEST(Records, EachKindSurvivesItsLine)
{
	Record file{.kind = Record::Kind::File, .timeUs = 1795945200123456, .generation = 7, .why = "file", .uid = 0};
	file.hash = sha256Hex("x");
	file.exceptions = {{{kAddress, 3}, {"s 2,;=/%", "s1", 1795945260}}, {{kAddress, 4}, {"", "-", 0}}};
	Record move = moveRecord(1795945201, 8, 2, "s1", "s2", "s1", 1795945261);
	move.uid = 1000;
	Record failed = outcome(1795945202, 8, false);
	failed.detail = "ENOBUFS\tapplying\nthe table";
	for (const Record &r : {file, move, outcome(1795945202, 8), failed}) {
		std::string line = encode(r);
		ASSERT_EQ(line.back(), '\n');
		EXPECT_EQ(std::count(line.begin(), line.end(), '\n'), 1) << line;
		Result<Record> back = decode(std::string_view(line).substr(0, line.size() - 1));
		ASSERT_TRUE(back.ok()) << line << back.error().message();
		EXPECT_EQ(*back, r) << line;
	}
}

TEST(Records, AChangedByteIsDamage)
{
	std::string line = encode(moveRecord(1795945201, 8, 2, "s1", "s2"));
	line.pop_back();
	for (size_t i = 0; i < line.size(); i++) {
		std::string bad = line;
		bad[i] = bad[i] == 's' ? 't' : 's';
		EXPECT_FALSE(decode(bad).ok()) << "byte " << i << ": " << bad;
	}
}

// A damaged record is reported in its place with its offset; only the
// answers it leaves uncertain fail (naming it), until a file record holds
// the whole state again.
TEST_F(JournalTest, ADamagedRecordIsReportedWithItsOffsetAndStopsOnlyTheQueriesItTouches)
{
	Journal journal(dir_.string(), 400);
	ASSERT_TRUE(journal.append({fileRecord(100, 1), outcome(100, 1)}).ok());
	ASSERT_TRUE(journal.append({moveRecord(200, 2, 2, "s2", "s1"), outcome(200, 2)}).ok());
	size_t before = fs::file_size(journal.path());
	ASSERT_TRUE(journal.append({moveRecord(300, 3, 2, "s1", "s3"), outcome(300, 3)}).ok());
	// Flip one byte of the second move: its outcome says it applied, what it did is not known.
	{
		std::fstream io(journal.path(), std::ios::in | std::ios::out | std::ios::binary);
		io.seekp(static_cast<std::streamoff>(before + 20));
		io.put('#');
	}
	ASSERT_TRUE(journal.append({fileRecord(400, 4), outcome(400, 4)}).ok());
	Scan scan = journal.scan();
	ASSERT_EQ(scan.damaged.size(), 1u);
	EXPECT_EQ(scan.damaged[0].offset, before);
	EXPECT_EQ(scan.damaged[0].file, journal.path());
	EXPECT_EQ(scan.records.size(), 7u);
	Result<std::vector<Change>> lines = history(scan, loader(), 0);
	ASSERT_TRUE(lines.ok()) << lines.error().message();
	std::vector<std::string> whys;
	for (const Change &c : *lines)
		whys.push_back(c.why);
	EXPECT_EQ(whys, (std::vector<std::string>{"file", "set-owner", "damaged", "file", "file"}));
	EXPECT_NE((*lines)[2].damaged.find("damaged record at offset " + std::to_string(before)), std::string::npos)
		<< (*lines)[2].damaged;
	EXPECT_EQ((*lines)[2].timeUs, outcome(200, 2).timeUs); // in its place: after the record before it
	Result<std::vector<Change>> since = history(scan, loader(), 350 * 1000000);
	ASSERT_TRUE(since.ok());
	EXPECT_EQ(since->size(), 2u); // a --since after it leaves it out
	const uint16_t port = 1024 + 2 * 2048;
	auto at = [&](int64_t when) { return ownerAt(scan, loader(), Ipv4{kAddress}, port, when); };
	ASSERT_TRUE(at(150).ok()) << at(150).error().message(); // before the damage: as if there were none
	EXPECT_EQ((*at(150))->answer.server, "s2");
	EXPECT_EQ((*at(150))->until, 200);
	// From the record before the damage on (the move it hides may have been made
	// at any moment after it) until the next file record: unknown, and said so.
	for (int64_t when : {200, 300, 399}) {
		Result<std::optional<AnswerAt>> unknown = at(when);
		ASSERT_FALSE(unknown.ok()) << when;
		EXPECT_NE(unknown.error().message().find("offset " + std::to_string(before)), std::string::npos)
			<< unknown.error().message();
	}
	ASSERT_TRUE(at(450).ok()) << at(450).error().message(); // the file record holds the whole state again
	EXPECT_EQ((*at(450))->answer.server, "s2");
	EXPECT_EQ((*at(450))->from, 400);

	// A torn last line (a crash mid-write, never applied): damage too, and it
	// changes nothing; the next record starts on a line of its own.
	{
		std::ofstream out(journal.path(), std::ios::app);
		out << "0badc0de\t2026";
	}
	ASSERT_TRUE(journal.append({fileRecord(500, 5), outcome(500, 5)}).ok());
	scan = journal.scan();
	ASSERT_EQ(scan.damaged.size(), 2u);
	EXPECT_EQ(scan.records.back(), outcome(500, 5));
	ASSERT_TRUE(ownerAt(scan, loader(), Ipv4{kAddress}, port, 499).ok());
	ASSERT_TRUE(ownerAt(scan, loader(), Ipv4{kAddress}, port, 600).ok());
}

// At start, a segment with a damaged line (here its last, torn) is closed as it is (renamed as a
// rotated segment) and the next record begins a new one.
TEST_F(JournalTest, ATornEndIsSealedInASegmentOfItsOwn)
{
	Journal journal(dir_.string(), 400);
	ASSERT_TRUE(journal.append({fileRecord(100, 1), outcome(100, 1)}).ok());
	Result<std::vector<Damaged>> none = journal.sealIfDamaged(150 * 1000000);
	ASSERT_TRUE(none.ok());
	EXPECT_TRUE(none->empty());
	size_t size = fs::file_size(journal.path());
	{
		std::ofstream out(journal.path(), std::ios::app);
		out << encode(moveRecord(200, 2, 2, "s2", "s1")).substr(0, 30);
	}
	Journal restarted(dir_.string(), 400);
	Result<std::vector<Damaged>> sealed = restarted.sealIfDamaged(300 * 1000000);
	ASSERT_TRUE(sealed.ok()) << sealed.error().message();
	ASSERT_EQ(sealed->size(), 1u);
	EXPECT_EQ((*sealed)[0].offset, size);
	EXPECT_FALSE(fs::exists(restarted.path()));
	fs::path closed = dir_ / "journal-19700101T000140Z";
	ASSERT_TRUE(fs::exists(closed));
	EXPECT_EQ((*sealed)[0].str(), restarted.path() + ": damaged record at offset " + std::to_string(size) +
				     ": no end of line (torn write)");
	ASSERT_TRUE(restarted.append({fileRecord(300, 2), outcome(300, 2)}).ok());
	Scan scan = restarted.scan();
	ASSERT_EQ(scan.damaged.size(), 1u);
	EXPECT_EQ(scan.damaged[0].file, closed.string()); // where the damage now is
	EXPECT_EQ(scan.damaged[0].offset, size);
	EXPECT_EQ(scan.records.size(), 4u);
	EXPECT_TRUE(restarted.last().has_value());
}

// An append goes to the file the path names when it is made: the journal
// moved away (or deleted) by someone else between two appends is left as it
// is, and the path gets a new segment.
TEST_F(JournalTest, AnAppendGoesToThePathNotToAFileMovedAway)
{
	Journal journal(dir_.string(), 400);
	ASSERT_TRUE(journal.append({fileRecord(100, 1), outcome(100, 1)}).ok());
	fs::rename(journal.path(), dir_ / "moved");
	ASSERT_TRUE(journal.append({outcome(200, 2)}).ok());
	Journal moved((dir_ / "elsewhere").string(), 400);
	fs::create_directory(dir_ / "elsewhere");
	fs::rename(dir_ / "moved", moved.path());
	EXPECT_EQ(moved.scan().records, (std::vector<Record>{fileRecord(100, 1), outcome(100, 1)}));
	EXPECT_EQ(journal.scan().records, (std::vector<Record>{outcome(200, 2)}));
	fs::remove(journal.path());
	ASSERT_TRUE(journal.append({outcome(300, 3)}).ok());
	EXPECT_EQ(journal.scan().records, (std::vector<Record>{outcome(300, 3)}));
	EXPECT_EQ(moved.scan().records.size(), 2u);
}

TEST_F(JournalTest, OnlyAppliedChangesCountAndHistoryNamesEachSlice)
{
	Scan scan;
	scan.records = {
		fileRecord(100, 1), outcome(100, 1),
		moveRecord(200, 2, 0, "s1", "s2", "s1", 260), outcome(200, 2),
		moveRecord(300, 3, 1, "s1", "s2"), outcome(300, 3, false), // rolled back
		moveRecord(400, 4, 3, "s2", "s1"),                         // crash: no outcome
		moveRecord(500, 4, 2, "s2", "s1"), outcome(500, 4),         // the same generation, a new attempt
		moveRecord(600, 5, 0, "s1", "s2"), outcome(600, 5),         // the drain's end
	};
	scan.records[9].why = "drain end";
	scan.records[9].after = {"s2", "", 0};
	Result<std::vector<Change>> lines = history(scan, loader(), 0);
	ASSERT_TRUE(lines.ok()) << lines.error().message();
	ASSERT_EQ(lines->size(), 4u);
	EXPECT_EQ((*lines)[0].hash, sha256Hex(kFleet));
	EXPECT_EQ((*lines)[1].key->slice, 0u);
	EXPECT_EQ((*lines)[1].now, "s2");
	EXPECT_EQ((*lines)[2].key->slice, 2u);
	EXPECT_EQ((*lines)[2].timeUs, 500 * 1000000);
	EXPECT_EQ((*lines)[3].why, "drain end");
	Result<std::vector<Change>> since = history(scan, loader(), 450 * 1000000);
	ASSERT_TRUE(since.ok());
	EXPECT_EQ(since->size(), 2u);

	// Slice 1 stayed with s1 (its move failed), slice 3 with s2 (never confirmed).
	Result<std::optional<AnswerAt>> one = ownerAt(scan, loader(), Ipv4{kAddress}, 1024 + 2048 + 5, 350);
	ASSERT_TRUE(one.ok() && one->has_value());
	EXPECT_EQ((*one)->answer.server, "s1");
	Result<std::optional<AnswerAt>> three = ownerAt(scan, loader(), Ipv4{kAddress}, 1024 + 3 * 2048, 450);
	ASSERT_TRUE(three.ok() && three->has_value());
	EXPECT_EQ((*three)->answer.server, "s2");
}

// Two moves within one second: the second's answer is the one at its end,
// and every answer within it comes with its interval to the microsecond.
TEST_F(JournalTest, EachAnswerWithinASecondHasItsMicroseconds)
{
	auto at = [](Record r, int64_t us) {
		r.timeUs = us;
		return r;
	};
	Scan scan;
	scan.records = {
		fileRecord(100, 1), outcome(100, 1),
		at(moveRecord(200, 2, 2, "s2", "s1"), 200200000), at(outcome(200, 2), 200200100),
		at(moveRecord(200, 3, 2, "s1", "s3"), 200700000), at(outcome(200, 3), 200700100),
	};
	const uint16_t port = 1024 + 2 * 2048;
	std::vector<AnswerAt> within;
	Result<std::optional<AnswerAt>> end = ownerAt(scan, loader(), Ipv4{kAddress}, port, 200, nullptr, &within);
	ASSERT_TRUE(end.ok()) << end.error().message();
	EXPECT_EQ((*end)->answer.server, "s3");
	ASSERT_EQ(within.size(), 3u);
	EXPECT_EQ(within[0].answer.server, "s2");
	EXPECT_EQ(within[0].fromUs, 100000000);
	EXPECT_EQ(within[0].untilUs, 200200000);
	EXPECT_EQ(within[1].answer.server, "s1");
	EXPECT_EQ(within[1].fromUs, 200200000);
	EXPECT_EQ(within[1].untilUs, 200700000);
	EXPECT_EQ(within[1].generation, 2u);
	EXPECT_EQ(within[2].answer.server, "s3");
	EXPECT_EQ(within[2].untilUs, 0);
	// A second with one answer throughout lists none.
	ASSERT_TRUE(ownerAt(scan, loader(), Ipv4{kAddress}, port, 199, nullptr, &within).ok());
	EXPECT_TRUE(within.empty());
	ASSERT_TRUE(ownerAt(scan, loader(), Ipv4{kAddress}, port, 201, nullptr, &within).ok());
	EXPECT_TRUE(within.empty());
}

TEST_F(JournalTest, AnswersHoldOverTheirIntervalsToTheSecond)
{
	Scan scan;
	scan.records = {
		fileRecord(100, 1), outcome(100, 1),
		moveRecord(200, 2, 0, "s1", "s2", "s1", 260), outcome(200, 2),
		moveRecord(260, 3, 0, "s1", "s2"), outcome(260, 3),
		moveRecord(300, 4, 0, "s2", "s1"), outcome(300, 4),
		moveRecord(300, 5, 0, "s1", "s2"), outcome(300, 5), // the same second: the last wins
		moveRecord(400, 6, 3, "s2", "s1"), outcome(400, 6), // another slice of s1's: s1's plan changes
	};
	uint16_t port = 1024 + 8 * 3 + 1; // slice 0, the fourth inside address's block
	auto at = [&](int64_t when) { return ownerAt(scan, loader(), Ipv4{kAddress}, port, when); };
	Result<std::optional<AnswerAt>> early = at(99);
	ASSERT_TRUE(early.ok());
	EXPECT_FALSE(early->has_value());

	Result<std::optional<AnswerAt>> first = at(100);
	ASSERT_TRUE(first.ok() && first->has_value());
	EXPECT_EQ((*first)->answer.server, "s1");
	EXPECT_EQ((*first)->answer.source, "warp-gb");
	EXPECT_EQ((*first)->answer.mode, "stateless");
	EXPECT_EQ((*first)->answer.inside, "100.64.1.3");
	EXPECT_EQ((*first)->from, 100);
	EXPECT_EQ((*first)->until, 200);
	EXPECT_EQ((*at(199))->from, 100);

	// The drain's end at 260 changes who else keeps flows, not who owns the
	// port nor its inside address: one interval, 200 on, says so at every second.
	AnswerAt draining = **at(200);
	EXPECT_EQ(draining.answer.server, "s2");
	EXPECT_EQ(draining.answer.previous, "s1");
	EXPECT_EQ(draining.answer.drainUntil, 260);
	EXPECT_EQ(draining.from, 200);
	EXPECT_EQ(draining.until, 0);
	EXPECT_EQ(draining.generation, 2u);

	AnswerAt settled = **at(299);
	EXPECT_EQ(settled.answer.server, "s2");
	EXPECT_EQ(settled.answer.previous, "");
	EXPECT_EQ(settled.from, 200);
	EXPECT_EQ(settled.generation, 3u);
	// At 300 the slice went to s1 and back within the second: s2 still holds it from 200 on.
	EXPECT_EQ(settled.until, 0);
	EXPECT_EQ((*at(100000))->from, 200);
	EXPECT_EQ((*at(259))->until, 0);
}

// A moment inside a drain names both servers that could have sent from the
// port, each with its source and inside address, and the drain's interval.
TEST_F(JournalTest, AMomentInsideADrainNamesThePreviousOwnerWithItsSourceAndInsideAddress)
{
	Scan scan;
	scan.records = {
		fileRecord(100, 1), outcome(100, 1),
		moveRecord(200, 2, 0, "s1", "s2", "s1", 260), outcome(200, 2), // s2 owns slice 0, s1 drains
		moveRecord(261, 3, 0, "s1", "s2"), outcome(261, 3),             // the drain's end, a second late
	};
	scan.records[4].why = "drain end";
	uint16_t port = 1024 + 8 * 3 + 1;
	auto at = [&](int64_t when) { return **ownerAt(scan, loader(), Ipv4{kAddress}, port, when); };
	PortAnswer before = at(150).answer; // s1 as owner, under the file
	ASSERT_EQ(before.server, "s1");
	EXPECT_EQ(at(150).draining.server, "");
	for (int64_t when : {200, 230, 260}) {
		AnswerAt a = at(when);
		EXPECT_EQ(a.answer.server, "s2") << when;
		EXPECT_EQ(a.answer.source, "warp-gb") << when;
		EXPECT_FALSE(a.answer.inside.empty()) << when;
		// What s1 keeps: its answer as owner, source and inside address included.
		EXPECT_EQ(a.draining, before) << when;
		EXPECT_EQ(a.answer.drainUntil, 260) << when;
		EXPECT_EQ(a.drainFrom, 200) << when;
		EXPECT_EQ(a.drainTo, 261) << when;
	}
	AnswerAt after = at(261);
	EXPECT_EQ(after.answer.server, "s2");
	EXPECT_EQ(after.draining, PortAnswer{});
	EXPECT_EQ(after.drainFrom, 0);
	EXPECT_EQ(after.from, 200);
}

TEST_F(JournalTest, AnIntervalEndsOnlyWhereTheServerOrTheInsideAddressChanges)
{
	Scan scan;
	scan.records = {
		fileRecord(100, 1), outcome(100, 1),
		moveRecord(200, 2, 0, "s1", "s2", "s1", 230), outcome(200, 2), // s2 owns it, s1 drains
		moveRecord(230, 3, 0, "s1", "s2"), outcome(230, 3),             // the drain's end
		moveRecord(300, 4, 0, "s2", "s1", "s2", 330), outcome(300, 4), // back to s1, s2 drains
		moveRecord(330, 5, 0, "s2", "s1"), outcome(330, 5),             // the drain's end
	};
	scan.records[4].why = scan.records[8].why = "drain end";
	uint16_t port = 1024 + 8 * 3 + 1;
	auto at = [&](int64_t when) { return **ownerAt(scan, loader(), Ipv4{kAddress}, port, when); };
	for (int64_t when : {200, 229, 230, 299}) {
		AnswerAt a = at(when);
		EXPECT_EQ(a.answer.server, "s2") << when;
		EXPECT_EQ(a.from, 200) << when;
		EXPECT_EQ(a.until, 300) << when;
	}
	EXPECT_EQ(at(199).until, 200);
	for (int64_t when : {300, 329, 330, 5000}) {
		AnswerAt a = at(when);
		EXPECT_EQ(a.answer.server, "s1") << when;
		EXPECT_EQ(a.answer.previous, when < 330 ? "s2" : "") << when;
		EXPECT_EQ(a.from, 300) << when;
		EXPECT_EQ(a.until, 0) << when;
	}
}

TEST_F(JournalTest, RotationKeepsWhatTheDaysAskAndTheFilesStillNamed)
{
	Journal journal(dir_.string(), 2);
	const int64_t day = 86400;
	int64_t t0 = 20000 * day + 3600;
	ASSERT_TRUE(journal.keepFile(sha256Hex(kFleet), kFleet).ok());
	ASSERT_TRUE(journal.keepFile(sha256Hex("old"), "old").ok());
	ASSERT_TRUE(journal.append({fileRecord(t0, 1), outcome(t0, 1)}).ok());
	Result<bool> same = journal.rotateIfDue((t0 + 60) * 1000000, sha256Hex(kFleet));
	ASSERT_TRUE(same.ok());
	EXPECT_FALSE(*same);
	for (int d = 1; d <= 4; d++) {
		Result<bool> rotated = journal.rotateIfDue((t0 + d * day) * 1000000, sha256Hex(kFleet));
		ASSERT_TRUE(rotated.ok()) << rotated.error().message();
		EXPECT_TRUE(*rotated) << d;
		Record checkpoint = fileRecord(t0 + d * day, 1);
		checkpoint.why = "checkpoint";
		ASSERT_TRUE(journal.append({checkpoint, outcome(t0 + d * day, 1)}).ok());
	}
	std::vector<std::string> names;
	for (const auto &e : fs::directory_iterator(dir_))
		names.push_back(e.path().filename().string());
	std::sort(names.begin(), names.end());
	// Segments begun on days 0..3 were rotated; the ones wholly older than two days are gone.
	std::vector<std::string> want = {"files", "journal", "journal-20241006T010000Z", "journal-20241007T010000Z"};
	EXPECT_EQ(names, want);
	EXPECT_TRUE(fs::exists(journal.filePath(sha256Hex(kFleet))));
	EXPECT_FALSE(fs::exists(journal.filePath(sha256Hex("old"))));
	Scan scan = journal.scan();
	EXPECT_TRUE(scan.damaged.empty());
	ASSERT_FALSE(scan.records.empty());
	EXPECT_EQ(scan.records.front().timeUs, (t0 + 2 * day) * 1000000);
	Result<std::optional<AnswerAt>> at = ownerAt(scan, loader(), Ipv4{kAddress}, 1024, t0 + 3 * day);
	ASSERT_TRUE(at.ok() && at->has_value());
	EXPECT_EQ((*at)->answer.server, "s1");
}

} // namespace
} // namespace portslice::journal
