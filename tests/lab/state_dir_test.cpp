// SPDX-License-Identifier: MIT
// The real portsliced against its state directory (issue 10.6): a damaged owners file or a FIFO stops the start, a read-only directory with nothing to change does not.
#include "dbus_lab.h"

namespace portslice::dbuslab {
namespace {

class StateDirLab : public DbusLab {
protected:
	// portsliced in the foreground, SIGKILLed after `seconds` (it blocks
	// SIGTERM for its signalfd, and one stuck opening a FIFO never reads it).
	std::string daemonCommand(int seconds) const
	{
		std::string command = env() + "timeout -s KILL " + std::to_string(seconds) + " ";
		for (const std::string &w : daemonWords())
			command += quote(w) + " ";
		return command;
	}
	std::string owners() const { return stateDir() + "/owners"; }

	// A daemon that moved slice 1 of 198.51.100.1 to s1 (generation 2), stopped: the table stays.
	void moveAndStop()
	{
		startDaemon();
		Outcome moved = call("SetSliceOwner", "sus 198.51.100.1 1 s1");
		ASSERT_TRUE(moved.ok()) << moved.output;
		ASSERT_EQ(generation(), 2u);
		stopDaemon(SIGTERM);
	}
};

TEST_F(StateDirLab, ADamagedOwnersFileStopsTheStartNamingFileAndOffsetAndTheTableStays)
{
	moveAndStop();
	if (HasFatalFailure())
		return;
	std::string applied = table();
	ASSERT_NE(applied.find("portslice generation"), std::string::npos) << applied;
	std::string whole = readFile(owners());
	ASSERT_FALSE(whole.empty());
	size_t last = whole.rfind('\n', whole.size() - 2) + 1; // where the last line starts
	// Cut at a line boundary (as a crash of a non-atomic writer or a full
	// disk leaves it), and emptied: today's portsliced took both for "no
	// slice owner changes, generation 0".
	for (const std::string &damaged : {whole.substr(0, last), std::string()}) {
		std::ofstream(owners(), std::ios::trunc) << damaged;
		auto t0 = std::chrono::steady_clock::now();
		Outcome run = sh(daemonCommand(8), 15);
		double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
		EXPECT_EQ(run.status, 1) << run.output;
		EXPECT_LT(seconds, 10.0);
		std::string where = owners() + ": offset " + std::to_string(damaged.size()) + ": ";
		EXPECT_NE(run.output.find(where), std::string::npos) << "wanted " << where << " in:\n" << run.output;
		EXPECT_EQ(table(), applied); // the old table stays, untouched
		EXPECT_EQ(readFile(owners()), damaged); // and so does the file, for the operator to look at
	}
}

TEST_F(StateDirLab, AFifoAtTheOwnersPathIsRefusedAtOnceNotWaitedOn)
{
	fs::create_directories(stateDir());
	ASSERT_TRUE(sh("mkfifo " + quote(owners())).ok());
	auto t0 = std::chrono::steady_clock::now();
	Outcome run = sh(daemonCommand(8), 15);
	double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
	EXPECT_EQ(run.status, 1) << "(137: it waited until killed)\n" << run.output;
	EXPECT_LT(seconds, 5.0);
	EXPECT_NE(run.output.find(owners() + ": offset 0: a FIFO, not a regular file"), std::string::npos) << run.output;
	EXPECT_EQ(table().find("portslice generation"), std::string::npos) << "nothing may be applied:\n" << table();
}

TEST_F(StateDirLab, AReadOnlyStateDirectoryWithNothingToChangeStillStarts)
{
	moveAndStop();
	if (HasFatalFailure())
		return;
	std::string kept = readFile(owners());
	// The state directory read-only in a mount namespace of the daemon's own
	// (the bind mount dies with it; the host's mounts are never touched).
	std::string dir = quote(stateDir());
	startDaemon(0, {"unshare", "-m", "--propagation", "private", "sh", "-c",
			  "mount --bind " + dir + " " + dir + " && mount -o remount,bind,ro " + dir + " " + dir +
				  " && exec \"$@\"",
			  "sh"});
	if (HasFatalFailure())
		return;
	EXPECT_EQ(generation(), 2u);
	Outcome state = property("State");
	EXPECT_NE(state.output.find("applied"), std::string::npos) << state.output;
	Outcome owner = call("Owner", "sq 198.51.100.1 3072"); // slice 1: moved to s1
	EXPECT_NE(owner.output.find("\"s1\""), std::string::npos) << owner.output;
	EXPECT_NE(table().find("portslice generation 2 "), std::string::npos) << table();
	// It is read-only indeed: a change cannot be kept, and is not made.
	Outcome moved = call("SetSliceOwner", "sus 198.51.100.1 2 s1");
	EXPECT_FALSE(moved.ok()) << moved.output;
	EXPECT_NE(moved.output.find("Read-only file system"), std::string::npos) << moved.output;
	EXPECT_EQ(generation(), 2u);
	stopDaemon(SIGTERM);
	EXPECT_EQ(readFile(owners()), kept);
	EXPECT_NE(readFile(logPath()).find("generation 2 again"), std::string::npos) << readFile(logPath());
}

} // namespace
} // namespace portslice::dbuslab
