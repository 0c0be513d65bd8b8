// SPDX-License-Identifier: MIT
// Lab: the drift monitor after its socket overflowed: our own large commit alone, and someone else's commit hidden in the overflow.
#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <linux/netfilter.h>
#include <sched.h>

#include "config/config.h"
#include "daemon/nft_monitor.h"
#include "process.h"
#include "nat_fleet.h"
#include "nft/apply.h"
#include "plan/plan.h"

namespace portslice {
namespace {

// A network namespace of the test process's own (unshare): the kernel frees
// it with the process, nothing reaches the host's nftables.
class NftMonitorLab : public ::testing::Test {
protected:
	void SetUp() override
	{
		ASSERT_EQ(unshare(CLONE_NEWNET), 0) << std::strerror(errno);
		config::LoadResult loaded = config::loadString(testing::generatedFleet(10000), "fleet.toml");
		ASSERT_TRUE(loaded.ok());
		plan::PlanResult planned = plan::makePlan(*loaded.config, "s1");
		ASSERT_TRUE(planned.ok());
		plan_ = std::move(*planned.plan);
	}

	plan::Plan plan_;
};

// A full replace of 420,000 elements sends an event per element: more
// than the monitor's 16 MB socket holds, so its events are lost (ENOBUFS).
// That alone is ours: the daemon checks the table's comment and generation.
// An nft command that commits while the socket is still full loses its
// events too, its NEWGEN (who committed) among them: before, the daemon
// took that for its own overflow and never saw the flushed set. The
// kernel's generation counts both commits, the daemon made one: a restore.
TEST_F(NftMonitorLab, AForeignCommitLostInTheOverflowOfOurOwnIsToldApartFromOurs)
{
	Result<daemon::NftMonitor> monitor = daemon::NftMonitor::open(NFPROTO_INET, "portslice");
	ASSERT_TRUE(monitor) << monitor.error().message();
	Result<nft::NftApplier> applier = nft::NftApplier::open();
	ASSERT_TRUE(applier) << applier.error().message();

	ASSERT_TRUE(applier->apply(plan_, nullptr, 1)) << "first apply";
	Result<std::optional<daemon::ForeignChange>> ours = monitor->read();
	ASSERT_TRUE(ours) << ours.error().message();
	ASSERT_TRUE(ours->has_value());
	EXPECT_TRUE((*ours)->lost()) << "420,000 element events fitted the socket: the test shows nothing";
	EXPECT_FALSE((*ours)->foreignLost) << "only our own commit was lost";

	ASSERT_TRUE(applier->apply(plan_, nullptr, 2)) << "second apply";
	lab::CommandResult flushed = lab::runShell("nft flush set inet portslice my_blocks 2>&1");
	ASSERT_TRUE(flushed.ok()) << flushed.output;
	Result<std::optional<daemon::ForeignChange>> both = monitor->read();
	ASSERT_TRUE(both) << both.error().message();
	ASSERT_TRUE(both->has_value());
	// Named by its own NEWGEN (read in time), or counted by the generation.
	EXPECT_TRUE(!(*both)->lost() || (*both)->foreignLost) << "nft's flush went unnoticed";

	// Nothing more happened: nothing to report.
	Result<std::optional<daemon::ForeignChange>> quiet = monitor->read();
	ASSERT_TRUE(quiet) << quiet.error().message();
	EXPECT_FALSE(quiet->has_value());
}

} // namespace
} // namespace portslice
