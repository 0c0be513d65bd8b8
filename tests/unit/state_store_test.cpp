// SPDX-License-Identifier: MIT
// The owners file of the state directory: format 2 round trip, every kind of damage named by file and offset, the older format read, a FIFO refused.
#include <gtest/gtest.h>

#include <chrono>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <future>
#include <sstream>
#include <sys/stat.h>
#include <unistd.h>

#include "service/state_store.h"

namespace portslice::service {
namespace {

namespace fs = std::filesystem;

class StateFile : public ::testing::Test {
protected:
	void SetUp() override
	{
		std::string pattern = (fs::temp_directory_path() / "psd-store-XXXXXX").string();
		ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
		dir_ = pattern;
	}
	void TearDown() override { fs::remove_all(dir_); }

	StateStore store() const { return StateStore((dir_ / "state").string()); }
	void write(const std::string &text)
	{
		fs::create_directories(dir_ / "state");
		std::ofstream(store().path(), std::ios::binary | std::ios::trunc) << text;
	}
	std::string text() const
	{
		std::ifstream in(store().path(), std::ios::binary);
		std::stringstream out;
		out << in.rdbuf();
		return out.str();
	}
	// The error of loading `text`; fails the test when it loads.
	std::string errorOf(const std::string &text)
	{
		write(text);
		Result<Persisted> loaded = store().load();
		EXPECT_FALSE(loaded.ok()) << "accepted:\n" << text;
		return loaded.ok() ? std::string() : loaded.error().message();
	}
	std::string at(size_t offset) const { return store().path() + ": offset " + std::to_string(offset) + ": "; }

	static Persisted sample()
	{
		Persisted state;
		state.generation = 41;
		state.fileHash = std::string(64, 'a');
		setOverride(state.overlay, *Ipv4::parse("198.51.100.1"), 1, "s1");
		setOverride(state.overlay, *Ipv4::parse("198.51.100.2"), 7, "s3");
		setDrain(state.drains, {*Ipv4::parse("198.51.100.1"), 1, "s2", 1'700'000'060});
		return state;
	}

	fs::path dir_;
};

TEST_F(StateFile, KeepsEverythingAcrossSaveAndLoadBetweenAHeaderAndAnEndRecord)
{
	ASSERT_TRUE(store().load().ok()); // no file: an empty state
	EXPECT_EQ(store().read()->form, Loaded::Form::Missing);
	ASSERT_TRUE(store().save(sample()).ok());
	Result<Loaded> loaded = store().read();
	ASSERT_TRUE(loaded.ok()) << loaded.error().message();
	EXPECT_EQ(loaded->state, sample());
	EXPECT_EQ(loaded->form, Loaded::Form::Current);
	EXPECT_FALSE(loaded->writer.empty());
	std::string t = text();
	EXPECT_EQ(t.rfind("portslice-owners 2\n", 0), 0u) << t;
	EXPECT_NE(t.find("\n198.51.100.1 1 s1\n"), std::string::npos) << t;
	EXPECT_NE(t.find("\ndrain 198.51.100.1 1 s2 1700000060\n"), std::string::npos) << t;
	EXPECT_NE(t.find("\nend "), std::string::npos) << t;
	EXPECT_FALSE(fs::exists(store().path() + ".tmp"));
}

TEST_F(StateFile, AnEmptyFileIsDamageAtOffsetZero)
{
	std::string error = errorOf("");
	EXPECT_NE(error.find(at(0)), std::string::npos) << error;
	EXPECT_NE(error.find("empty"), std::string::npos) << error;
}

TEST_F(StateFile, EveryCutOfTheFileIsFoundAndNamedByItsOffset)
{
	ASSERT_TRUE(store().save(sample()).ok());
	std::string whole = text();
	for (size_t size = 1; size < whole.size(); ++size) {
		std::string cut = whole.substr(0, size);
		std::string error = errorOf(cut);
		EXPECT_NE(error.find(store().path() + ": offset "), std::string::npos) << error;
		if (cut.back() == '\n') {
			// Cut at a line boundary: the end record is what is missing, where it should be.
			EXPECT_NE(error.find(at(size) + "no end record"), std::string::npos) << size << ": " << error;
		} else {
			// Cut inside a line: that line, where it starts.
			size_t line = cut.rfind('\n');
			size_t start = line == std::string::npos ? 0 : line + 1;
			EXPECT_NE(error.find(at(start)), std::string::npos) << size << ": " << error;
		}
	}
}

TEST_F(StateFile, AChangedByteIsFoundByTheChecksum)
{
	ASSERT_TRUE(store().save(sample()).ok());
	std::string changed = text();
	size_t line = changed.find("198.51.100.2 7 s3");
	ASSERT_NE(line, std::string::npos);
	changed[line + 13] = '6'; // slice 7 -> 6: still a well-formed line
	size_t end = changed.find("\nend ") + 1;
	std::string error = errorOf(changed);
	EXPECT_NE(error.find(at(end)), std::string::npos) << error;
	EXPECT_NE(error.find("checksum"), std::string::npos) << error;

	std::string generation = text();
	ASSERT_TRUE(store().save(sample()).ok());
	generation = text();
	generation.replace(generation.find("generation 41"), 13, "generation 14");
	EXPECT_NE(errorOf(generation).find("checksum"), std::string::npos);
}

TEST_F(StateFile, NothingMayFollowTheEndRecordAndTheFormatMustBeKnown)
{
	ASSERT_TRUE(store().save(sample()).ok());
	std::string whole = text();
	std::string error = errorOf(whole + "198.51.100.3 1 s1\n");
	EXPECT_NE(error.find(at(whole.size()) + "data after the end record"), std::string::npos) << error;

	std::string newer = whole;
	newer.replace(0, 18, "portslice-owners 3");
	error = errorOf(newer);
	EXPECT_NE(error.find(at(0) + "line 1: format 3"), std::string::npos) << error;

	std::string garbled = whole;
	size_t line = garbled.find("198.51.100.2 7 s3");
	garbled.replace(line, 17, "198.51.100.2 x s3");
	error = errorOf(garbled);
	EXPECT_NE(error.find(at(line)), std::string::npos) << error;
	EXPECT_NE(error.find("expected \"ADDRESS SLICE SERVER\""), std::string::npos) << error;
}

// What portsliced wrote before format 2 (no header, no end record).
constexpr const char *kLegacy = "# portsliced: slice owners set over D-Bus (SetSliceOwner), laid over the config file.\n"
				"# ADDRESS SLICE SERVER; drain ADDRESS SLICE PREVIOUS UNTIL (Unix time). Written by the "
				"daemon; edit only while it is stopped.\n"
				"generation 9\n"
				"198.51.100.1 1 s1\n"
				"drain 198.51.100.1 1 s2 1700000060\n";

TEST_F(StateFile, TheFormatBeforeVersionTwoIsReadAsSuchAndRewrittenInFormatTwo)
{
	write(kLegacy);
	Result<Loaded> loaded = store().read();
	ASSERT_TRUE(loaded.ok()) << loaded.error().message();
	EXPECT_EQ(loaded->form, Loaded::Form::Legacy);
	EXPECT_EQ(loaded->state.generation, 9u);
	ASSERT_EQ(loaded->state.overlay.size(), 1u);
	EXPECT_EQ(loaded->state.overlay[0].server, "s1");
	ASSERT_EQ(loaded->state.drains.size(), 1u);
	EXPECT_EQ(loaded->state.fileHash, "");
	ASSERT_TRUE(store().save(loaded->state).ok());
	EXPECT_EQ(store().read()->form, Loaded::Form::Current);
	EXPECT_EQ(store().read()->state, loaded->state);

	// Without its generation line it was cut short: refused, not read as generation 0.
	std::string legacy = kLegacy;
	std::string cut = legacy.substr(0, legacy.find("generation"));
	std::string error = errorOf(cut);
	EXPECT_NE(error.find(at(cut.size()) + "no generation record"), std::string::npos) << error;
	// A line cut in the middle has no end of line.
	error = errorOf(legacy.substr(0, legacy.size() - 3));
	EXPECT_NE(error.find(at(legacy.rfind("drain "))), std::string::npos) << error;
	// A bad line: its offset and number.
	std::string bad = legacy + "198.51.100.3 x s1\n";
	error = errorOf(bad);
	EXPECT_NE(error.find(at(legacy.size()) + "line 6: expected \"ADDRESS SLICE SERVER\""), std::string::npos)
		<< error;
	error = errorOf(legacy + "drain 198.51.100.3 1 s1 soon\n");
	EXPECT_NE(error.find("expected \"drain ADDRESS SLICE PREVIOUS UNTIL\""), std::string::npos) << error;
}

TEST_F(StateFile, AFifoAtThePathIsRefusedAtOnceNotWaitedOn)
{
	fs::create_directories(dir_ / "state");
	ASSERT_EQ(::mkfifo(store().path().c_str(), 0600), 0);
	StateStore s = store();
	auto loading = std::async(std::launch::async, [&] { return s.load(); });
	if (loading.wait_for(std::chrono::seconds(2)) != std::future_status::ready) {
		// Unblock the reader: a writer that comes and goes gives it an end of file.
		int fd = ::open(s.path().c_str(), O_WRONLY | O_NONBLOCK);
		if (fd >= 0)
			::close(fd);
		loading.wait();
		FAIL() << "load() waited on the FIFO";
	}
	Result<Persisted> loaded = loading.get();
	ASSERT_FALSE(loaded.ok());
	EXPECT_NE(loaded.error().message().find(at(0) + "a FIFO, not a regular file"), std::string::npos)
		<< loaded.error().message();
	// A directory in its place is refused the same way.
	fs::remove(store().path());
	fs::create_directory(store().path());
	ASSERT_FALSE(store().load().ok());
	EXPECT_NE(store().load().error().message().find("a directory, not a regular file"), std::string::npos);
}

TEST_F(StateFile, AFifoLeftAtTheTemporaryPathIsReplacedNotWrittenThrough)
{
	fs::create_directories(dir_ / "state");
	ASSERT_EQ(::mkfifo((store().path() + ".tmp").c_str(), 0600), 0);
	StateStore s = store();
	auto saving = std::async(std::launch::async, [&] { return s.save(sample()); });
	if (saving.wait_for(std::chrono::seconds(2)) != std::future_status::ready) {
		int fd = ::open((s.path() + ".tmp").c_str(), O_RDONLY | O_NONBLOCK);
		saving.wait();
		if (fd >= 0)
			::close(fd);
		FAIL() << "save() waited on the FIFO";
	}
	ASSERT_TRUE(saving.get().ok());
	EXPECT_EQ(store().load()->generation, 41u);
}

} // namespace
} // namespace portslice::service
