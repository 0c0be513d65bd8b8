// SPDX-License-Identifier: MIT
// The service state machine with a recording backend: validation first, one generation per change, persistence, drift.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <limits>
#include <sys/stat.h>

#include "service/service.h"
#include "journal/sha256.h"
#include "service/state_store.h"
#include "fixture.h"

namespace portslice::service {
namespace {

namespace fs = std::filesystem;

const std::string kFleet = portslice::test::fixture("service.toml");

// Records what the service asked of the kernel; can be told to fail.
class RecordingBackend final : public Backend {
public:
	struct Call {
		std::vector<uint32_t> mySlices; // of 198.51.100.1
		bool incremental;
		uint64_t generation;
	};

	Status apply(const plan::Plan &plan, const plan::Plan *old, uint64_t generation) override
	{
		if (failNext) {
			failNext = false;
			return Error(ENOBUFS, "applying table portslice");
		}
		calls.push_back({plan.addresses.at(0).mySlices, old != nullptr, generation});
		return {};
	}
	Status applyMove(const plan::Plan &plan, const plan::SliceMove &, uint64_t generation) override
	{
		if (failNext) {
			failNext = false;
			return Error(ENOBUFS, "changing elements of table portslice");
		}
		calls.push_back({plan.addresses.at(0).mySlices, true, generation});
		return {};
	}
	Status applyMoves(const plan::Plan &plan, const std::vector<plan::SliceMove> &moves, uint64_t generation) override
	{
		if (failNext) {
			failNext = false;
			return Error(ENOBUFS, "changing elements of table portslice");
		}
		calls.push_back({plan.addresses.at(0).mySlices, true, generation});
		batches.push_back(moves.size());
		return {};
	}
	Result<std::string> drift(const plan::Plan &, uint64_t) override { return driftText; }
	std::optional<uint64_t> appliedGeneration() override { return kernelGeneration; }
	Result<std::vector<StatRow>> stats(const plan::Plan &plan) override
	{
		return std::vector<StatRow>{{"source", plan.sources.at(0).name, "packets", 42}};
	}
	std::string dump(const plan::Plan &, uint64_t generation) override
	{
		return "table inet portslice # generation " + std::to_string(generation);
	}

	std::vector<Call> calls;
	std::vector<size_t> batches; // moves per applyMoves
	bool failNext = false;
	std::string driftText;
	std::optional<uint64_t> kernelGeneration; // what the table's comment says, if there is one
};

class RecordingListener final : public Listener {
public:
	void applied(uint64_t generation) override { applieds.push_back(generation); }
	void applyFailed(const std::string &error) override { failures.push_back(error); }
	void propertiesChanged(const std::vector<std::string> &names) override
	{
		changed.insert(changed.end(), names.begin(), names.end());
	}
	void log(const std::string &line) override { logs.push_back(line); }
	void ownershipChanged(const std::vector<journal::Change> &changes) override
	{
		owned.insert(owned.end(), changes.begin(), changes.end());
	}

	std::vector<journal::Change> owned;
	std::vector<uint64_t> applieds;
	std::vector<std::string> failures;
	std::vector<std::string> changed;
	std::vector<std::string> logs;
};

class ServiceTest : public ::testing::Test {
protected:
	void SetUp() override
	{
		std::string pattern = (fs::temp_directory_path() / "psd-service-XXXXXX").string();
		ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
		dir_ = pattern;
		writeConfig(kFleet);
	}
	void TearDown() override { fs::remove_all(dir_); }

	void writeConfig(const std::string &text) { std::ofstream(configPath()) << text; }
	std::string configPath() const { return (dir_ / "portslice.toml").string(); }
	std::string stateDir() const { return (dir_ / "state").string(); }
	std::unique_ptr<Service> makeService(std::chrono::seconds drain = std::chrono::seconds(60))
	{
		return std::make_unique<Service>(Service::Options{configPath(), stateDir(), drain, [this] { return now_; }},
						 backend_, listener_);
	}
	std::string stateFile() const
	{
		std::ifstream in(stateDir() + "/owners");
		std::stringstream text;
		text << in.rdbuf();
		return text.str();
	}

	fs::path dir_;
	int64_t now_ = 1'700'000'000; // Unix time the service sees
	RecordingBackend backend_;
	RecordingListener listener_;
};

TEST_F(ServiceTest, StartAppliesTheFileInFullAsGenerationOne)
{
	auto service = makeService();
	Answer<uint64_t> started = service->start();
	ASSERT_TRUE(started.ok()) << started.failure().message;
	EXPECT_EQ(started.value(), 1u);
	EXPECT_EQ(service->state(), State::Applied);
	EXPECT_EQ(service->server(), "s1");
	EXPECT_EQ(service->lastError(), "");
	ASSERT_EQ(backend_.calls.size(), 1u);
	EXPECT_FALSE(backend_.calls[0].incremental);
	EXPECT_EQ(backend_.calls[0].mySlices, std::vector<uint32_t>{0});
	EXPECT_EQ(listener_.applieds, std::vector<uint64_t>{1});
}

TEST_F(ServiceTest, SetSliceOwnerMovesTheSliceInOneIncrementalGenerationAndPersistsIt)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	Answer<uint64_t> moved = service->setSliceOwner("198.51.100.1", 1, "s1");
	ASSERT_TRUE(moved.ok()) << moved.failure().message;
	EXPECT_EQ(moved.value(), 2u);
	ASSERT_EQ(backend_.calls.size(), 2u);
	EXPECT_TRUE(backend_.calls[1].incremental);
	EXPECT_EQ(backend_.calls[1].mySlices, (std::vector<uint32_t>{0, 1}));
	EXPECT_EQ(backend_.calls[1].generation, 2u);
	EXPECT_NE(stateFile().find("198.51.100.1 1 s1\n"), std::string::npos) << stateFile();

	// A new daemon over the same state directory starts with the move.
	auto restarted = makeService();
	ASSERT_TRUE(restarted->start().ok());
	EXPECT_EQ(restarted->currentPlan()->addresses.at(0).mySlices, (std::vector<uint32_t>{0, 1}));
	// Nothing changed: the same generation, applied again in full (it only
	// grows: a changed file would be generation 3).
	EXPECT_EQ(restarted->generation(), 2u);
	EXPECT_FALSE(backend_.calls.back().incremental);
}

TEST_F(ServiceTest, LosingASliceShrinksThisServersShare)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	ASSERT_TRUE(service->setSliceOwner("198.51.100.1", 0, "s2").ok());
	EXPECT_TRUE(service->currentPlan()->addresses.at(0).mySlices.empty());
	EXPECT_TRUE(service->currentPlan()->sources.at(0).dropped());
}

TEST_F(ServiceTest, InvalidArgumentsChangeNeitherGenerationNorKernelNorState)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	std::string persisted = stateFile();
	struct Case {
		const char *address;
		uint32_t slice;
		const char *server;
		const char *says;
	};
	for (const Case &c : {Case{"198.51.100.9", 0, "s2", "not a shared address"},
			      Case{"198.51.100.1", 4, "s2", "slices 0 to 3"},
			      Case{"198.51.100.1", 1, "s9", "not a server of the fleet"},
			      Case{"not-an-ip", 1, "s2", "not an IPv4 address"}}) {
		Answer<uint64_t> answer = service->setSliceOwner(c.address, c.slice, c.server);
		ASSERT_FALSE(answer.ok()) << c.address;
		EXPECT_EQ(answer.failure().fault, Fault::InvalidArgument) << c.address;
		EXPECT_NE(answer.failure().message.find(c.says), std::string::npos) << answer.failure().message;
		EXPECT_EQ(service->generation(), 1u);
		EXPECT_EQ(service->state(), State::Applied);
		// LastError and ApplyFailed are about applying, not about this call.
		EXPECT_EQ(service->lastError(), "");
	}
	EXPECT_EQ(backend_.calls.size(), 1u);
	EXPECT_EQ(listener_.failures.size(), 0u);
	EXPECT_EQ(stateFile(), persisted);
}

TEST_F(ServiceTest, ReloadWithABrokenFileKeepsTheAppliedPlanAndNamesFileAndLine)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	std::string broken = kFleet;
	broken += "\n[[sources]]\nname = \"typo\"\nmatch = { saddr = \"100.64.2.0/24\" }\nwnat = { country = \"GB\" }\n";
	writeConfig(broken);
	Answer<uint64_t> reloaded = service->reload();
	ASSERT_FALSE(reloaded.ok());
	EXPECT_EQ(reloaded.failure().fault, Fault::InvalidConfig);
	EXPECT_NE(reloaded.failure().message.find(configPath() + ":"), std::string::npos) << reloaded.failure().message;
	EXPECT_EQ(service->generation(), 1u);
	EXPECT_EQ(service->state(), State::Degraded);
	EXPECT_EQ(service->currentPlan()->sources.size(), 1u);
	EXPECT_EQ(backend_.calls.size(), 1u);
	ASSERT_EQ(listener_.failures.size(), 1u);
	EXPECT_EQ(listener_.failures[0], reloaded.failure().message);

	writeConfig(kFleet);
	Answer<uint64_t> fixed = service->reload();
	ASSERT_TRUE(fixed.ok()) << fixed.failure().message;
	EXPECT_EQ(service->state(), State::Applied);
	EXPECT_EQ(service->lastError(), "");
}

TEST_F(ServiceTest, AFailedApplyKeepsThePreviousStateAndThePersistedOwners)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	ASSERT_TRUE(service->setSliceOwner("198.51.100.1", 1, "s1").ok());
	std::string before = stateFile();
	backend_.failNext = true;
	Answer<uint64_t> answer = service->setSliceOwner("198.51.100.1", 2, "s1");
	ASSERT_FALSE(answer.ok());
	EXPECT_EQ(answer.failure().fault, Fault::ApplyFailed);
	EXPECT_NE(answer.failure().message.find("No buffer space"), std::string::npos) << answer.failure().message;
	EXPECT_EQ(service->generation(), 2u);
	EXPECT_EQ(service->currentPlan()->addresses.at(0).mySlices, (std::vector<uint32_t>{0, 1}));
	EXPECT_EQ(stateFile(), before);
	EXPECT_EQ(service->state(), State::Degraded);
	// The failed apply may have changed part of the kernel: the previous plan goes back in full.
	ASSERT_EQ(backend_.calls.size(), 3u);
	EXPECT_FALSE(backend_.calls[2].incremental);
	EXPECT_EQ(backend_.calls[2].mySlices, (std::vector<uint32_t>{0, 1}));
	EXPECT_EQ(backend_.calls[2].generation, 2u);
}

TEST_F(ServiceTest, AnOwnerChangeRetiresWhenTheFileSaysTheSame)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	ASSERT_TRUE(service->setSliceOwner("198.51.100.1", 1, "s1").ok());
	ASSERT_EQ(service->overlay().size(), 1u);

	std::string updated = kFleet;
	updated.replace(updated.find("s1 = 0, s2 = 1"), 14, "s1 = [0, 1]");
	writeConfig(updated);
	ASSERT_TRUE(service->reload().ok());
	EXPECT_TRUE(service->overlay().empty());
	EXPECT_EQ(stateFile().find("198.51.100.1 1 s1"), std::string::npos) << stateFile();
	// The old owner still drains until its deadline, whoever said the move.
	EXPECT_NE(stateFile().find("drain 198.51.100.1 1 s2 "), std::string::npos) << stateFile();
	// The file changed but the plan did not: no new generation.
	EXPECT_EQ(service->generation(), 2u);
}

int32_t previousOf(const Service &service, uint32_t slice)
{
	return service.currentPlan()->addresses.at(0).previousOf(slice);
}

TEST_F(ServiceTest, TheOldOwnerDrainsTheMovedSliceUntilItsDeadlineThenANewGenerationDropsIt)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	ASSERT_TRUE(service->setSliceOwner("198.51.100.1", 1, "s1").ok());
	EXPECT_EQ(previousOf(*service, 1), 1); // s2, index 1 of [[servers]]
	EXPECT_EQ(previousOf(*service, 0), plan::kNoServer);
	ASSERT_EQ(service->drains().size(), 1u);
	EXPECT_EQ(service->drains()[0].until, now_ + 60);
	EXPECT_NE(stateFile().find("drain 198.51.100.1 1 s2 " + std::to_string(now_ + 60) + "\n"), std::string::npos)
		<< stateFile();

	now_ += 59;
	service->expireDrains();
	EXPECT_EQ(service->generation(), 2u);
	EXPECT_EQ(backend_.calls.size(), 2u);

	now_ += 1;
	service->expireDrains();
	EXPECT_EQ(service->generation(), 3u);
	ASSERT_EQ(backend_.calls.size(), 3u);
	EXPECT_TRUE(backend_.calls[2].incremental);
	EXPECT_EQ(backend_.calls[2].mySlices, (std::vector<uint32_t>{0, 1}));
	EXPECT_EQ(previousOf(*service, 1), plan::kNoServer);
	EXPECT_TRUE(service->drains().empty());
	EXPECT_EQ(stateFile().find("\ndrain "), std::string::npos) << stateFile();
	EXPECT_NE(stateFile().find("198.51.100.1 1 s1\n"), std::string::npos) << stateFile();
	EXPECT_EQ(listener_.applieds.back(), 3u);
}

TEST_F(ServiceTest, ADrainSurvivesARestartUntilItsDeadlineAndEndsOnStartAfterIt)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	ASSERT_TRUE(service->setSliceOwner("198.51.100.1", 1, "s1").ok());

	now_ += 30;
	auto restarted = makeService();
	ASSERT_TRUE(restarted->start().ok());
	EXPECT_EQ(previousOf(*restarted, 1), 1);

	now_ += 30;
	auto late = makeService();
	ASSERT_TRUE(late->start().ok());
	EXPECT_EQ(previousOf(*late, 1), plan::kNoServer);
	EXPECT_EQ(late->currentPlan()->addresses.at(0).mySlices, (std::vector<uint32_t>{0, 1}));
	EXPECT_EQ(stateFile().find("\ndrain "), std::string::npos) << stateFile();
}

TEST_F(ServiceTest, MovingTheSliceAgainDuringADrainReplacesIt)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	ASSERT_TRUE(service->setSliceOwner("198.51.100.1", 1, "s1").ok());
	now_ += 10;
	ASSERT_TRUE(service->setSliceOwner("198.51.100.1", 1, "s3").ok());
	ASSERT_EQ(service->drains().size(), 1u);
	EXPECT_EQ(service->drains()[0].previous, "s1");
	EXPECT_EQ(service->drains()[0].until, now_ + 60);
	EXPECT_EQ(previousOf(*service, 1), 0);
}

TEST_F(ServiceTest, SettingTheSameOwnerAgainEndsTheDrainAtOnce)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	ASSERT_TRUE(service->setSliceOwner("198.51.100.1", 1, "s1").ok());
	Answer<uint64_t> ended = service->setSliceOwner("198.51.100.1", 1, "s1");
	ASSERT_TRUE(ended.ok()) << ended.failure().message;
	EXPECT_EQ(ended.value(), 3u);
	EXPECT_EQ(previousOf(*service, 1), plan::kNoServer);
	EXPECT_TRUE(service->drains().empty());
	EXPECT_EQ(stateFile().find("\ndrain "), std::string::npos) << stateFile();
	EXPECT_EQ(service->overlay().size(), 1u);
	// Without a drain it is the no-op it always was.
	EXPECT_EQ(service->setSliceOwner("198.51.100.1", 1, "s1").value(), 3u);
	EXPECT_EQ(backend_.calls.size(), 3u);
}

TEST_F(ServiceTest, AReloadEndsADrainWhoseServerOrSliceTheFileNoLongerHas)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	ASSERT_TRUE(service->setSliceOwner("198.51.100.1", 1, "s1").ok());
	ASSERT_EQ(service->drains().size(), 1u);
	// s2, the draining old owner, leaves the fleet file.
	std::string without = kFleet;
	without.erase(without.find("[[servers]]\nname = \"s2\""), std::string("[[servers]]\nname = \"s2\"\naddress = \"192.0.2.12\"\ndatacenter = \"lab1\"\n\n").size());
	without.replace(without.find("s1 = 0, s2 = 1"), 14, "s1 = [0, 1]");
	writeConfig(without);
	Answer<uint64_t> reloaded = service->reload();
	ASSERT_TRUE(reloaded.ok()) << reloaded.failure().message;
	EXPECT_TRUE(service->drains().empty());
	EXPECT_EQ(stateFile().find("\ndrain "), std::string::npos) << stateFile();
	bool logged = false;
	for (const std::string &line : listener_.logs)
		logged = logged || line.find("the config no longer has this server") != std::string::npos;
	EXPECT_TRUE(logged);
}

TEST_F(ServiceTest, NoDrainMovesAtOnceAsBefore)
{
	auto service = makeService(std::chrono::seconds(0));
	ASSERT_TRUE(service->start().ok());
	ASSERT_TRUE(service->setSliceOwner("198.51.100.1", 1, "s1").ok());
	EXPECT_EQ(previousOf(*service, 1), plan::kNoServer);
	EXPECT_TRUE(service->drains().empty());
	EXPECT_EQ(stateFile().find("\ndrain "), std::string::npos) << stateFile();
}

TEST_F(ServiceTest, SettingTheOwnerTheFileAlreadyHasIsANoOp)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	Answer<uint64_t> answer = service->setSliceOwner("198.51.100.1", 1, "s2");
	ASSERT_TRUE(answer.ok());
	EXPECT_EQ(answer.value(), 1u);
	EXPECT_EQ(backend_.calls.size(), 1u);
	EXPECT_TRUE(service->overlay().empty());
}

TEST_F(ServiceTest, DriftIsRestoredInFullAtTheSameGeneration)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	service->repairDrift("periodic check");
	EXPECT_EQ(backend_.calls.size(), 1u);
	backend_.driftText = "table inet portslice is missing";
	service->repairDrift("periodic check");
	ASSERT_EQ(backend_.calls.size(), 2u);
	EXPECT_FALSE(backend_.calls[1].incremental);
	EXPECT_EQ(backend_.calls[1].generation, 1u);
	EXPECT_EQ(service->generation(), 1u);
	bool logged = false;
	for (const std::string &line : listener_.logs)
		logged = logged || line.find("table inet portslice is missing") != std::string::npos;
	EXPECT_TRUE(logged);
}

// --no-repair: drift is said in State and LastError, never applied over;
// equal again, or a reload of the same file (applied again in full, the same
// generation), and State is applied.
TEST_F(ServiceTest, DriftLeftByNoRepairIsDegradedUntilTheTableIsEqualAgain)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	backend_.driftText = "table inet portslice is missing";
	service->leaveDrift("a commit by nft pid 42", true);
	EXPECT_EQ(backend_.calls.size(), 1u) << "nothing applied";
	EXPECT_EQ(service->state(), State::Degraded);
	EXPECT_EQ(service->lastError(), "table inet portslice changed by a commit by nft pid 42, not repaired "
					"(--no-repair): table inet portslice is missing; see portslicectl audit");
	EXPECT_NE(std::find(listener_.changed.begin(), listener_.changed.end(), "State"), listener_.changed.end());
	// The timer's check keeps what the event said.
	service->leaveDrift("", false);
	EXPECT_NE(service->lastError().find("nft pid 42"), std::string::npos);
	// Equal again: applied.
	backend_.driftText.clear();
	service->leaveDrift("a commit by nft pid 43", true);
	EXPECT_EQ(service->state(), State::Applied);
	EXPECT_EQ(service->lastError(), "");

	backend_.driftText = "table inet portslice is missing";
	service->leaveDrift("a commit by nft pid 44", true);
	ASSERT_EQ(service->state(), State::Degraded);
	backend_.driftText.clear();
	ASSERT_TRUE(service->reload().ok());
	ASSERT_EQ(backend_.calls.size(), 2u);
	EXPECT_FALSE(backend_.calls[1].incremental);
	EXPECT_EQ(backend_.calls[1].generation, 1u);
	EXPECT_EQ(service->generation(), 1u);
	EXPECT_EQ(service->state(), State::Applied);
	EXPECT_EQ(service->lastError(), "");
	// The same file again on an equal table: nothing applied.
	ASSERT_TRUE(service->reload().ok());
	EXPECT_EQ(backend_.calls.size(), 2u);
}

TEST_F(ServiceTest, OwnerNamesTheServerAndTheInsideAddressOfAStatelessBlock)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	Answer<std::pair<std::string, std::string>> first = service->owner("198.51.100.1", 1024);
	ASSERT_TRUE(first.ok()) << first.failure().message;
	EXPECT_EQ(first.value().first, "s1");
	EXPECT_EQ(first.value().second, "100.64.1.0");
	Answer<std::pair<std::string, std::string>> third = service->owner("198.51.100.1", 1024 + 2 * 8);
	ASSERT_TRUE(third.ok());
	EXPECT_EQ(third.value().second, "100.64.1.2");
	Answer<std::pair<std::string, std::string>> other = service->owner("198.51.100.1", 3072);
	ASSERT_TRUE(other.ok());
	EXPECT_EQ(other.value().first, "s2");
	EXPECT_EQ(service->owner("198.51.100.7", 3072).failure().fault, Fault::NotFound);
	EXPECT_EQ(service->owner("198.51.100.1", 80).failure().fault, Fault::NotFound);
}

TEST_F(ServiceTest, AnInvalidFileAtStartLeavesTheServiceUpInStateFailed)
{
	writeConfig("[server]\nname = \"s1\"\n");
	auto service = makeService();
	Answer<uint64_t> started = service->start();
	ASSERT_FALSE(started.ok());
	EXPECT_EQ(service->state(), State::Failed);
	EXPECT_NE(service->lastError().find(configPath()), std::string::npos);
	EXPECT_EQ(service->planJson().failure().fault, Fault::NotFound);
	EXPECT_EQ(service->setSliceOwner("198.51.100.1", 1, "s1").failure().fault, Fault::InvalidConfig);
	writeConfig(kFleet);
	ASSERT_TRUE(service->reload().ok());
	EXPECT_EQ(service->state(), State::Applied);
}

TEST_F(ServiceTest, SetSliceOwnersMovesManySlicesInOneGenerationAndOneKernelChange)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	Answer<uint64_t> moved = service->setSliceOwners(
		{{"198.51.100.1", 1, "s1"}, {"198.51.100.1", 2, "s1"}, {"198.51.100.1", 3, "s2"}}, 0);
	ASSERT_TRUE(moved.ok()) << moved.failure().message;
	EXPECT_EQ(moved.value(), 2u);
	ASSERT_EQ(backend_.calls.size(), 2u); // one apply for the three moves
	EXPECT_TRUE(backend_.calls[1].incremental);
	EXPECT_EQ(backend_.batches, std::vector<size_t>{3});
	EXPECT_EQ(backend_.calls[1].mySlices, (std::vector<uint32_t>{0, 1, 2}));
	EXPECT_EQ(listener_.applieds, (std::vector<uint64_t>{1, 2}));
	EXPECT_TRUE(service->drains().empty()); // drain_seconds 0: no drain
	EXPECT_NE(stateFile().find("198.51.100.1 2 s1\n"), std::string::npos) << stateFile();
	EXPECT_NE(stateFile().find("198.51.100.1 3 s2\n"), std::string::npos) << stateFile();

	// Survives a restart like SetSliceOwner.
	auto restarted = makeService();
	ASSERT_TRUE(restarted->start().ok());
	EXPECT_EQ(restarted->currentPlan()->addresses.at(0).mySlices, (std::vector<uint32_t>{0, 1, 2}));
}

TEST_F(ServiceTest, SetSliceOwnersWithABadMoveMovesNothing)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	std::string persisted = stateFile();
	struct Case {
		std::vector<OwnerMove> moves;
		const char *says;
	};
	for (const Case &c : {Case{{{"198.51.100.1", 1, "s1"}, {"198.51.100.1", 9, "s1"}}, "move 2 of 2: slice 9"},
			      Case{{{"198.51.100.1", 1, "s1"}, {"198.51.100.1", 2, "s7"}}, "\"s7\" is not a server"},
			      Case{{{"198.51.100.1", 1, "s1"}, {"198.51.100.1", 1, "s3"}}, "moved twice"},
			      Case{{{"198.51.100.7", 1, "s1"}, {"198.51.100.1", 2, "s1"}}, "move 1 of 2: 198.51.100.7"}}) {
		Answer<uint64_t> answer = service->setSliceOwners(c.moves, 0);
		ASSERT_FALSE(answer.ok()) << c.says;
		EXPECT_EQ(answer.failure().fault, Fault::InvalidArgument);
		EXPECT_NE(answer.failure().message.find(c.says), std::string::npos) << answer.failure().message;
		EXPECT_NE(answer.failure().message.find("nothing was moved"), std::string::npos) << answer.failure().message;
	}
	// A drain longer than a day (portsliced --drain-seconds' limit) is refused too.
	Answer<uint64_t> forever = service->setSliceOwners({{"198.51.100.1", 1, "s1"}}, 86401);
	ASSERT_FALSE(forever.ok());
	EXPECT_EQ(forever.failure().fault, Fault::InvalidArgument);
	EXPECT_NE(forever.failure().message.find("at most 86400"), std::string::npos) << forever.failure().message;
	EXPECT_EQ(service->generation(), 1u);
	EXPECT_EQ(backend_.calls.size(), 1u);
	EXPECT_EQ(service->currentPlan()->addresses.at(0).mySlices, std::vector<uint32_t>{0});
	EXPECT_EQ(stateFile(), persisted);
	EXPECT_TRUE(service->setSliceOwners({{"198.51.100.1", 1, "s1"}}, 86400).ok());
}

TEST_F(ServiceTest, ASetSliceOwnersTheKernelRefusesChangesNothing)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	std::string persisted = stateFile();
	backend_.failNext = true;
	Answer<uint64_t> moved = service->setSliceOwners({{"198.51.100.1", 1, "s1"}, {"198.51.100.1", 2, "s1"}}, 0);
	ASSERT_FALSE(moved.ok());
	EXPECT_EQ(moved.failure().fault, Fault::ApplyFailed);
	EXPECT_EQ(service->generation(), 1u);
	EXPECT_EQ(service->currentPlan()->addresses.at(0).mySlices, std::vector<uint32_t>{0});
	EXPECT_EQ(service->currentPlan()->addresses.at(0).owner, (std::vector<int32_t>{0, 1, 2, 2}));
	EXPECT_EQ(stateFile(), persisted);
	// The previous plan was put back in full.
	EXPECT_FALSE(backend_.calls.back().incremental);
	EXPECT_EQ(backend_.calls.back().mySlices, std::vector<uint32_t>{0});
	// And the same call works next time.
	ASSERT_TRUE(service->setSliceOwners({{"198.51.100.1", 1, "s1"}, {"198.51.100.1", 2, "s1"}}, 0).ok());
	EXPECT_EQ(service->currentPlan()->addresses.at(0).mySlices, (std::vector<uint32_t>{0, 1, 2}));
}

TEST_F(ServiceTest, SetSliceOwnersDrainsEachOldOwnerForTheSecondsGiven)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	ASSERT_TRUE(service->setSliceOwners({{"198.51.100.1", 1, "s1"}, {"198.51.100.1", 2, "s1"}}, 5).ok());
	ASSERT_EQ(service->drains().size(), 2u);
	EXPECT_EQ(service->drains()[0].previous, "s2");
	EXPECT_EQ(service->drains()[0].until, now_ + 5);
	EXPECT_EQ(service->drains()[1].previous, "s3");
	EXPECT_EQ(previousOf(*service, 1), 1);
	EXPECT_EQ(previousOf(*service, 2), 2);
	// Moves that change nothing are no generation at all.
	uint64_t before = service->generation();
	ASSERT_TRUE(service->setSliceOwners({{"198.51.100.1", 0, "s1"}, {"198.51.100.1", 3, "s3"}}, 5).ok());
	EXPECT_EQ(service->generation(), before);
	// An empty call is a no-op too.
	ASSERT_TRUE(service->setSliceOwners({}, 0).ok());
	EXPECT_EQ(service->generation(), before);
}

// SetSliceOwnersDrains: a drain per move, still one generation and one kernel change.
TEST_F(ServiceTest, SetSliceOwnersWithADrainPerMoveIsOneGenerationAndDrainsEachAsItsMoveSays)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	OwnerMove failover{"198.51.100.1", 1, "s1", 0u}, home{"198.51.100.1", 2, "s1", 40u};
	Answer<uint64_t> moved = service->setSliceOwners({failover, home}, 0);
	ASSERT_TRUE(moved.ok()) << moved.failure().message;
	EXPECT_EQ(moved.value(), 2u);
	EXPECT_EQ(backend_.batches, std::vector<size_t>{2});
	EXPECT_EQ(listener_.applieds, (std::vector<uint64_t>{1, 2}));
	ASSERT_EQ(service->drains().size(), 1u);
	EXPECT_EQ(service->drains()[0].slice, 2u);
	EXPECT_EQ(service->drains()[0].previous, "s3");
	EXPECT_EQ(service->drains()[0].until, now_ + 40);
	EXPECT_EQ(previousOf(*service, 1), plan::kNoServer);
	EXPECT_EQ(previousOf(*service, 2), 2);

	// One move's drain too long: nothing moves, and the message says which.
	std::string persisted = stateFile();
	Answer<uint64_t> tooLong = service->setSliceOwners(
		{OwnerMove{"198.51.100.1", 3, "s1", 0u}, OwnerMove{"198.51.100.1", 0, "s2", 86401u}}, 0);
	ASSERT_FALSE(tooLong.ok());
	EXPECT_EQ(tooLong.failure().fault, Fault::InvalidArgument);
	EXPECT_NE(tooLong.failure().message.find("move 2 of 2: drain_seconds 86401 is too long: at most 86400"),
		  std::string::npos)
		<< tooLong.failure().message;
	EXPECT_EQ(service->generation(), 2u);
	EXPECT_EQ(stateFile(), persisted);
}

// The slice lines of the journal's history, as "slice old>new why".
std::vector<std::string> historyLines(const Service &service)
{
	Answer<std::vector<journal::Change>> lines = service.history(0);
	EXPECT_TRUE(lines.ok()) << (lines.ok() ? "" : lines.failure().message);
	std::vector<std::string> out;
	if (lines.ok())
		for (const journal::Change &c : lines.value())
			out.push_back(c.key ? std::to_string(c.key->slice) + " " + c.old + ">" + c.now + " " + c.why
					    : "file " + c.hash.substr(0, 8));
	return out;
}

TEST_F(ServiceTest, EveryAppliedChangeIsJournaledWithItsOutcomeAndAnnounced)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	now_ += 10;
	service->setCaller(1000);
	ASSERT_TRUE(service->setSliceOwner("198.51.100.1", 1, "s1").ok());
	service->setCaller(std::nullopt);
	now_ += 10;
	backend_.failNext = true; // rolled back: never in the history
	EXPECT_FALSE(service->setSliceOwner("198.51.100.1", 2, "s1").ok());
	now_ += 10;
	std::string moved = kFleet;
	moved.replace(moved.find("s1 = 0, s2 = 1, s3 = [2, 3]"), 27, "s1 = [0, 3], s2 = 1, s3 = 2");
	writeConfig(moved);
	Answer<uint64_t> reloaded = service->reload();
	ASSERT_TRUE(reloaded.ok()) << reloaded.failure().message;
	now_ += 100; // the drain of slice 1 by s2 ends
	service->expireDrains();

	std::string hash0 = journal::sha256Hex(kFleet).substr(0, 8), hash1 = journal::sha256Hex(moved).substr(0, 8);
	std::vector<std::string> want = {"file " + hash0, "1 s2>s1 set-owner", "file " + hash1, "3 s3>s1 file",
					 "1 s2>s1 drain end"};
	EXPECT_EQ(historyLines(*service), want);
	// The kept files are the applied bytes.
	EXPECT_TRUE(fs::exists(stateDir() + "/files/" + journal::sha256Hex(moved) + ".toml"));
	// The listener heard the same, with the caller's uid on the move.
	ASSERT_EQ(listener_.owned.size(), 5u);
	EXPECT_EQ(listener_.owned[1].uid, std::optional<uint32_t>(1000));
	EXPECT_EQ(listener_.owned[1].generation, 2u);
	// The failed move left a record and its outcome.
	std::ifstream in(stateDir() + "/journal");
	std::stringstream text;
	text << in.rdbuf();
	EXPECT_NE(text.str().find("\tfailed\t"), std::string::npos) << text.str();

	// Owners(): every slice, the drain gone.
	Answer<std::vector<OwnerRow>> rows = service->owners();
	ASSERT_TRUE(rows.ok());
	std::vector<OwnerRow> wantRows = {{"198.51.100.1", 0, "s1", "", 0}, {"198.51.100.1", 1, "s1", "", 0},
					  {"198.51.100.1", 2, "s3", "", 0}, {"198.51.100.1", 3, "s1", "", 0}};
	EXPECT_EQ(rows.value(), wantRows);
}

TEST_F(ServiceTest, SetSliceOwnersJournalsEverySliceItMovesAndOnlyWhenApplied)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	now_ += 10;
	service->setCaller(0);
	ASSERT_TRUE(service->setSliceOwners({{"198.51.100.1", 1, "s1"}, {"198.51.100.1", 3, "s2"}}, 5).ok());
	EXPECT_EQ(backend_.batches, std::vector<size_t>{2}) << "the incremental path, not a full apply";
	int64_t movedAt = now_;
	now_ += 10;
	backend_.failNext = true; // rolled back: never in the history
	EXPECT_FALSE(service->setSliceOwners({{"198.51.100.1", 0, "s3"}, {"198.51.100.1", 2, "s1"}}, 0).ok());

	std::string hash0 = journal::sha256Hex(kFleet).substr(0, 8);
	std::vector<std::string> want = {"file " + hash0, "1 s2>s1 fleet", "3 s3>s2 fleet"};
	EXPECT_EQ(historyLines(*service), want);
	ASSERT_EQ(listener_.owned.size(), 3u); // the file, then one SliceOwnerChanged per slice
	EXPECT_EQ(listener_.owned[1].generation, 2u); // the failed try took no generation
	EXPECT_EQ(listener_.owned[2].uid, std::optional<uint32_t>(0));

	// OwnerAt: s3 before the batch, s2 (s3 draining) from its second on, from the journal.
	uint16_t port = 1024 + 3 * 2048;
	Answer<journal::AnswerAt> before = service->ownerAt("198.51.100.1", port, movedAt - 1);
	ASSERT_TRUE(before.ok()) << before.failure().message;
	EXPECT_EQ(before.value().answer.server, "s3");
	EXPECT_EQ(before.value().until, movedAt);
	Answer<journal::AnswerAt> after = service->ownerAt("198.51.100.1", port, now_);
	ASSERT_TRUE(after.ok()) << after.failure().message;
	EXPECT_EQ(after.value().answer.server, "s2");
	EXPECT_EQ(after.value().answer.previous, "s3");
	EXPECT_EQ(after.value().generation, 2u);
}

TEST_F(ServiceTest, OwnerAtAnswersFromTheJournalWithTheIntervalAndOwnerNowNamesTheDrain)
{
	int64_t t0 = now_;
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	now_ += 10;
	ASSERT_TRUE(service->setSliceOwner("198.51.100.1", 0, "s2").ok());
	uint16_t port = 1024 + 8 * 5; // slice 0, the sixth inside address's block
	Answer<LiveOwner> live = service->ownerNow("198.51.100.1", port);
	ASSERT_TRUE(live.ok());
	EXPECT_EQ(live.value().now.server, "s2");
	EXPECT_EQ(live.value().now.previous, "s1");
	EXPECT_EQ(live.value().now.inside, "100.64.1.5");
	EXPECT_EQ(live.value().now.drainUntil, now_ + 60);
	ASSERT_TRUE(live.value().draining.has_value());
	EXPECT_EQ(live.value().draining->server, "s1");
	EXPECT_EQ(live.value().draining->inside, "100.64.1.5");

	Answer<journal::AnswerAt> before = service->ownerAt("198.51.100.1", port, t0 + 9);
	ASSERT_TRUE(before.ok()) << before.failure().message;
	EXPECT_EQ(before.value().answer.server, "s1");
	EXPECT_EQ(before.value().from, t0);
	EXPECT_EQ(before.value().until, t0 + 10);
	Answer<journal::AnswerAt> after = service->ownerAt("198.51.100.1", port, t0 + 10);
	ASSERT_TRUE(after.ok());
	EXPECT_EQ(after.value().answer.server, "s2");
	EXPECT_EQ(after.value().answer.previous, "s1");
	EXPECT_EQ(after.value().answer.inside, "100.64.1.5");
	EXPECT_EQ(after.value().until, 0);
	EXPECT_EQ(service->ownerAt("198.51.100.1", port, t0 - 1).failure().fault, Fault::NotFound);
}

TEST_F(ServiceTest, OwnerAtAMomentToComeIsNotFoundAndOneBeforeTheJournalNamesItsStart)
{
	int64_t t0 = now_;
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	now_ += 100;
	uint16_t port = 1024 + 8 * 5;
	// To come: not an answer "until now", whatever the width of the number.
	for (uint64_t when : {uint64_t{4000000000}, uint64_t(now_ + 6), uint64_t{9223372036854775807u},
			      std::numeric_limits<uint64_t>::max()}) {
		Answer<journal::AnswerAt> future = service->ownerAt("198.51.100.1", port, when);
		ASSERT_FALSE(future.ok()) << when << ": " << future.value().answer.server;
		EXPECT_EQ(future.failure().fault, Fault::NotFound);
		EXPECT_NE(future.failure().message.find(" is in the future (now is 2023-11-14T22:15:00Z)"),
			  std::string::npos) << future.failure().message;
	}
	EXPECT_EQ(service->ownerAt("198.51.100.1", port, 4000000000).failure().message,
		  "2096-10-02T07:06:40Z is in the future (now is 2023-11-14T22:15:00Z)");
	EXPECT_EQ(service->ownerAt("198.51.100.1", port, std::numeric_limits<uint64_t>::max()).failure().message,
		  "Unix time 18446744073709551615 is in the future (now is 2023-11-14T22:15:00Z)");
	// A few seconds ahead: a clock a little off, answered as now.
	for (int64_t ahead : {0, 1, 5}) {
		Answer<journal::AnswerAt> near = service->ownerAt("198.51.100.1", port, uint64_t(now_ + ahead));
		ASSERT_TRUE(near.ok()) << ahead << ": " << near.failure().message;
		EXPECT_EQ(near.value().answer.server, "s1");
		EXPECT_EQ(near.value().from, t0);
		EXPECT_EQ(near.value().until, 0);
	}
	// Before the journal: when it begins, not the moment asked again.
	Answer<journal::AnswerAt> early = service->ownerAt("198.51.100.1", port, 1000);
	ASSERT_FALSE(early.ok());
	EXPECT_EQ(early.failure().fault, Fault::NotFound);
	EXPECT_EQ(early.failure().message, "the ownership journal " + stateDir() +
						   "/journal begins at 2023-11-14T22:13:20Z: 1970-01-01T00:16:40Z is before it");
}

// The names in the state directory that are journal segments, sorted.
std::vector<std::string> segmentNames(const std::string &dir)
{
	std::vector<std::string> names;
	for (const auto &e : fs::directory_iterator(dir))
		if (e.path().filename().string().starts_with("journal"))
			names.push_back(e.path().filename().string());
	std::sort(names.begin(), names.end());
	return names;
}

// A segment as an older portsliced left it: a checkpoint of file `hash` at `seconds`, applied.
void writeOldSegment(const std::string &path, int64_t seconds, const std::string &hash)
{
	journal::Record checkpoint{.kind = journal::Record::Kind::File, .timeUs = seconds * 1000000, .generation = 1,
				   .why = "checkpoint"};
	checkpoint.hash = hash;
	journal::Record applied{.kind = journal::Record::Kind::Outcome, .timeUs = seconds * 1000000, .generation = 1,
				.applied = true};
	std::ofstream(path) << journal::encode(checkpoint) << journal::encode(applied);
}

TEST_F(ServiceTest, AReloadOnANewDayRotatesTheJournalAndDeletesWhatTheDaysNoLongerKeep)
{
	const int64_t day = 86400;
	now_ = 19700 * day + 3600; // 2023-12-09T01:00:00Z
	auto options = [&] {
		return Service::Options{configPath(), stateDir(), std::chrono::seconds(60), [this] { return now_; }, 2};
	};
	auto service = std::make_unique<Service>(options(), backend_, listener_);
	ASSERT_TRUE(service->start().ok());
	int64_t started = now_;
	// Two segments of ten and six days ago, and the file only the older names.
	std::string oldHash = journal::sha256Hex("# an old file\n");
	std::ofstream(stateDir() + "/files/" + oldHash + ".toml") << "# an old file\n";
	writeOldSegment(stateDir() + "/journal-20231129T010000Z", now_ - 10 * day, oldHash);
	writeOldSegment(stateDir() + "/journal-20231203T010000Z", now_ - 6 * day, journal::sha256Hex(kFleet));
	ASSERT_EQ(segmentNames(stateDir()).size(), 3u);

	// Three days on, the server only reloads (a new file: a file record, no move).
	now_ += 3 * day;
	std::string moved = kFleet;
	moved.replace(moved.find("s1 = 0, s2 = 1, s3 = [2, 3]"), 27, "s1 = [0, 3], s2 = 1, s3 = 2");
	writeConfig(moved);
	Answer<uint64_t> reloaded = service->reload();
	ASSERT_TRUE(reloaded.ok()) << reloaded.failure().message;
	// The segment begun at the start is rotated; the hand-made ones are older
	// than two days and have a later segment: deleted, with the file only they named.
	std::vector<std::string> want = {"journal", "journal-20231209T010000Z"};
	EXPECT_EQ(segmentNames(stateDir()), want);
	EXPECT_FALSE(fs::exists(stateDir() + "/files/" + oldHash + ".toml"));
	EXPECT_TRUE(fs::exists(stateDir() + "/files/" + journal::sha256Hex(moved) + ".toml"));
	// Both answers stand: the start's from the rotated segment, the reload's from the new one.
	uint16_t port = 1024 + 3 * 2048;
	Answer<journal::AnswerAt> before = service->ownerAt("198.51.100.1", port, started + 10);
	ASSERT_TRUE(before.ok()) << before.failure().message;
	EXPECT_EQ(before.value().answer.server, "s3");
	EXPECT_EQ(before.value().until, now_);
	Answer<journal::AnswerAt> after = service->ownerAt("198.51.100.1", port, now_);
	ASSERT_TRUE(after.ok()) << after.failure().message;
	EXPECT_EQ(after.value().answer.server, "s1");
	std::string hash0 = journal::sha256Hex(kFleet).substr(0, 8), hash1 = journal::sha256Hex(moved).substr(0, 8);
	EXPECT_EQ(historyLines(*service), (std::vector<std::string>{"file " + hash0, "file " + hash1, "3 s3>s1 file"}));

	// An idle daemon: its timer rotates on the next day, with a checkpoint
	// (the answer holds on), and expires the segments the days let go.
	now_ += 3 * day;
	service->rotateJournal();
	want = {"journal", "journal-20231212T010000Z"};
	EXPECT_EQ(segmentNames(stateDir()), want);
	Answer<journal::AnswerAt> idle = service->ownerAt("198.51.100.1", port, now_);
	ASSERT_TRUE(idle.ok()) << idle.failure().message;
	EXPECT_EQ(idle.value().answer.server, "s1");
	EXPECT_EQ(historyLines(*service), (std::vector<std::string>{"file " + hash1, "3 s3>s1 file"}));
	// The same day again: nothing more.
	now_ += 60;
	service->rotateJournal();
	EXPECT_EQ(segmentNames(stateDir()), want);
}

// Issue 10.6: the state directory is never silently wrong.

TEST_F(ServiceTest, ADamagedStateFileStopsTheStartNamingFileAndOffsetAndAppliesNothing)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	ASSERT_TRUE(service->setSliceOwner("198.51.100.1", 1, "s1").ok());
	std::string whole = stateFile();
	std::string path = stateDir() + "/owners";
	size_t calls = backend_.calls.size();
	// Cut at a line boundary (the end record lost), and emptied: what today's
	// file accepted as "no overrides, generation 0".
	std::string cut = whole.substr(0, whole.rfind("end "));
	for (const std::string &damaged : {cut, std::string()}) {
		std::ofstream(path, std::ios::trunc) << damaged;
		auto restarted = makeService();
		Answer<uint64_t> started = restarted->start();
		ASSERT_FALSE(started.ok()) << "accepted:\n" << damaged;
		EXPECT_EQ(started.failure().fault, Fault::InvalidConfig);
		EXPECT_NE(started.failure().message.find(path + ": offset " + std::to_string(damaged.size()) + ": "),
			  std::string::npos)
			<< started.failure().message;
		EXPECT_EQ(restarted->generation(), 0u);
		EXPECT_EQ(restarted->currentPlan(), nullptr);
		EXPECT_EQ(backend_.calls.size(), calls); // the kernel keeps what it has
	}
}

TEST_F(ServiceTest, AStartThatChangesNothingAppliesTheSameGenerationAndWritesNothing)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	ASSERT_TRUE(service->setSliceOwner("198.51.100.1", 1, "s1").ok());
	ASSERT_EQ(service->generation(), 2u);
	std::string owners = stateDir() + "/owners", journal = stateDir() + "/journal";
	struct stat before{}, journalBefore{};
	ASSERT_EQ(::stat(owners.c_str(), &before), 0);
	ASSERT_EQ(::stat(journal.c_str(), &journalBefore), 0);

	auto restarted = makeService();
	Answer<uint64_t> started = restarted->start();
	ASSERT_TRUE(started.ok()) << started.failure().message;
	EXPECT_EQ(started.value(), 2u);
	EXPECT_EQ(backend_.calls.back().generation, 2u); // applied again in full: the kernel may have lost it
	EXPECT_FALSE(backend_.calls.back().incremental);
	EXPECT_EQ(restarted->currentPlan()->addresses.at(0).mySlices, (std::vector<uint32_t>{0, 1}));
	struct stat after{}, journalAfter{};
	ASSERT_EQ(::stat(owners.c_str(), &after), 0);
	ASSERT_EQ(::stat(journal.c_str(), &journalAfter), 0);
	EXPECT_EQ(after.st_ino, before.st_ino); // not replaced
	EXPECT_EQ(journalAfter.st_size, journalBefore.st_size);

	// It goes on from there as any start would.
	ASSERT_TRUE(restarted->setSliceOwner("198.51.100.1", 2, "s1").ok());
	EXPECT_EQ(restarted->generation(), 3u);
	std::vector<std::string> lines = historyLines(*restarted);
	ASSERT_FALSE(lines.empty());
	EXPECT_EQ(lines.back(), "2 s3>s1 set-owner");

	// A file that changed is a new generation, kept.
	writeConfig(std::string(kFleet) + "# a comment\n");
	auto changed = makeService();
	ASSERT_TRUE(changed->start().ok());
	EXPECT_EQ(changed->generation(), 4u);
	EXPECT_EQ(StateStore(stateDir()).load()->generation, 4u);
}

TEST_F(ServiceTest, AStartAfterACrashBeforeTheOutcomeWasJournaledIsANewGeneration)
{
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	ASSERT_TRUE(service->setSliceOwner("198.51.100.1", 1, "s1").ok());
	// The crash: generation 2 kept in owners and journaled, its outcome not.
	std::string journal = stateDir() + "/journal";
	std::string text;
	{
		std::ifstream in(journal);
		std::stringstream all;
		all << in.rdbuf();
		text = all.str();
	}
	size_t last = text.rfind('\n', text.size() - 2) + 1;
	ASSERT_NE(text.find("\tapplied", last), std::string::npos) << text.substr(last);
	std::ofstream(journal, std::ios::trunc) << text.substr(0, last);

	auto restarted = makeService();
	ASSERT_TRUE(restarted->start().ok());
	EXPECT_EQ(restarted->generation(), 3u); // not generation 2 again: the journal never said it was applied
	EXPECT_EQ(StateStore(stateDir()).load()->generation, 3u);
	std::vector<std::string> lines = historyLines(*restarted);
	ASSERT_FALSE(lines.empty());
	// The move reaches the journal with generation 3's file record.
	EXPECT_EQ(lines.back(), "1 s2>s1 file") << ::testing::PrintToString(lines);
	EXPECT_EQ(restarted->currentPlan()->addresses.at(0).mySlices, (std::vector<uint32_t>{0, 1}));
}

TEST_F(ServiceTest, TheGenerationNeverGoesBelowTheKernelsOrTheFilesAndNeverWraps)
{
	fs::create_directories(stateDir());
	Persisted persisted;
	persisted.generation = 5;
	std::ofstream(stateDir() + "/owners") << encodeOwners(persisted, "0");
	backend_.kernelGeneration = 9;
	auto service = makeService();
	ASSERT_TRUE(service->start().ok());
	EXPECT_EQ(service->generation(), 10u);
	EXPECT_EQ(StateStore(stateDir()).load()->generation, 10u);

	backend_.kernelGeneration = 3; // the table's comment is older than the file
	auto restarted = makeService();
	ASSERT_TRUE(restarted->start().ok());
	EXPECT_GE(restarted->generation(), 10u);

	persisted.generation = std::numeric_limits<uint64_t>::max();
	std::ofstream(stateDir() + "/owners", std::ios::trunc) << encodeOwners(persisted, "0");
	size_t calls = backend_.calls.size();
	auto last = makeService();
	Answer<uint64_t> started = last->start();
	ASSERT_FALSE(started.ok());
	EXPECT_NE(started.failure().message.find("generation 18446744073709551615 is the largest there is"),
		  std::string::npos)
		<< started.failure().message;
	EXPECT_EQ(backend_.calls.size(), calls);
	EXPECT_EQ(StateStore(stateDir()).load()->generation, std::numeric_limits<uint64_t>::max());
}

TEST_F(ServiceTest, ADrainEndThatCannotBeKeptIsTriedAgainWithBackoffAndSaidOnce)
{
	auto service = makeService(std::chrono::seconds(5));
	ASSERT_TRUE(service->start().ok());
	ASSERT_TRUE(service->setSliceOwner("198.51.100.1", 1, "s1").ok());
	ASSERT_EQ(service->generation(), 2u);
	// The temporary file's path taken by a directory: the owners file cannot be replaced.
	fs::create_directories(stateDir() + "/owners.tmp/blocked");
	size_t logs = listener_.logs.size();
	now_ += 5; // the deadline
	int64_t t0 = now_;
	std::vector<int64_t> worked;
	for (; now_ <= t0 + 20; ++now_) {
		if (now_ == t0 + 7)
			fs::remove_all(stateDir() + "/owners.tmp"); // fixed between the tries at t0+6 and t0+14
		uint64_t before = service->generation();
		service->expireDrains(); // the daemon's timer: every second
		if (service->generation() != before)
			worked.push_back(now_ - t0);
	}
	// Tried at t0, t0+2, t0+6, t0+14: the fourth try worked.
	EXPECT_EQ(worked, std::vector<int64_t>{14});
	EXPECT_EQ(service->generation(), 3u);
	EXPECT_TRUE(service->drains().empty());
	EXPECT_EQ(listener_.failures.size(), 1u); // one ApplyFailed, not one per try
	std::vector<std::string> said(listener_.logs.begin() + static_cast<std::ptrdiff_t>(logs), listener_.logs.end());
	auto count = [&](const std::string &what) {
		return std::count_if(said.begin(), said.end(),
				     [&](const std::string &line) { return line.find(what) != std::string::npos; });
	};
	EXPECT_EQ(count("could not be kept"), 1) << ::testing::PrintToString(said);
	EXPECT_EQ(count("ending drain of"), 1) << ::testing::PrintToString(said);
	EXPECT_EQ(count("kept and applied now, at try 4"), 1) << ::testing::PrintToString(said);
	EXPECT_EQ(StateStore(stateDir()).load()->generation, 3u);
}

} // namespace
} // namespace portslice::service

TEST(QuoteInput, QuotesAtMost200CharactersWithControlCharactersEscaped)
{
	using portslice::service::quoteInput;
	EXPECT_EQ(quoteInput("s9"), "\"s9\"");
	EXPECT_EQ(quoteInput("a\nb\x1b\"\\"), "\"a\\nb\\x1b\\\"\\\\\"");
	EXPECT_EQ(quoteInput(std::string(5000, 'x')), "\"" + std::string(200, 'x') + "\"... (5000 bytes)");
	// Escapes count: 100 of 150 newlines fill the 200 characters.
	std::string escaped;
	for (int i = 0; i < 100; i++)
		escaped += "\\n";
	EXPECT_EQ(quoteInput(std::string(150, '\n')), "\"" + escaped + "\"... (150 bytes)");
	// A UTF-8 character is never cut.
	std::string accents;
	for (int i = 0; i < 150; i++)
		accents += "\xc3\xa9";
	EXPECT_EQ(quoteInput(accents), "\"" + accents.substr(0, 200) + "\"... (300 bytes)");
}
