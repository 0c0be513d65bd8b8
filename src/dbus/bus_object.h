// SPDX-License-Identifier: MIT
// The org.portslice.Egress1 object: the generated adaptor's methods and properties, answered by the Service.
#pragma once

#include <functional>
#include <vector>

#include <sdbus-c++/sdbus-c++.h>

#include "dbus/egress1_adaptor.h"
#include "service/service.h"

namespace portslice::dbus {

using service::Service;

inline constexpr const char *kBusName = "org.portslice.Egress1";
inline constexpr const char *kObjectPath = "/org/portslice/Egress1";
inline constexpr const char *kInterface = "org.portslice.Egress1";

class BusObject final : public sdbus::AdaptorInterfaces<org::portslice::Egress1_adaptor> {
public:
	BusObject(sdbus::IConnection &connection, Service &service);
	~BusObject();

	void announceApplied(uint64_t generation);
	void announceApplyFailed(const std::string &error);
	void announceChanged(const std::vector<std::string> &names);
	// SliceOwnerChanged for each change of owner among `changes`.
	void announceOwners(const std::vector<journal::Change> &changes);
	// The announcements above wait here, in order, until this sends them:
	// the serve loop calls it once the reply of the call that made them
	// is out, so that a caller does not wait for its signals (a
	// connection's messages reach the bus in the order they are sent).
	void flushAnnouncements();

private:
	// Queue `emit` (a signal named `what`) for flushAnnouncements.
	void announce(std::string what, std::function<void()> emit);
	void logCaller(const char *member);
	uint64_t Reload() override;
	uint64_t SetSliceOwner(const std::string &address, const uint32_t &slice, const std::string &server) override;
	uint64_t SetSliceOwners(const std::vector<sdbus::Struct<std::string, uint32_t, std::string>> &moves,
				const uint32_t &drainSeconds) override;
	uint64_t SetSliceOwnersDrains(const std::vector<sdbus::Struct<std::string, uint32_t, std::string, uint32_t>> &moves)
		override;
	std::string Plan() override;
	std::string Dump() override;
	std::tuple<std::string, std::string> Owner(const std::string &address, const uint16_t &port) override;
	std::vector<sdbus::Struct<std::string, std::string, std::string, uint64_t>> Stats() override;
	std::vector<sdbus::Struct<std::string, uint32_t, std::string, std::string, uint64_t>> Owners() override;
	std::tuple<std::string, std::string, uint64_t, uint64_t> OwnerAt(const std::string &address, const uint16_t &port,
									 const uint64_t &when) override;
	std::map<std::string, std::string> OwnerDetails(const std::string &address, const uint16_t &port,
							const uint64_t &when) override;
	std::vector<sdbus::Struct<uint64_t, uint64_t, std::string, uint32_t, std::string, std::string, std::string,
				  std::string, std::string>>
	History(const uint64_t &since) override;
	std::vector<std::string> Audit() override;
	// The uid of the caller of the method being answered, if the bus tells it.
	std::optional<uint32_t> callerUid();
	// SetSliceOwners and SetSliceOwnersDrains: the moves, journaled as the
	// fleet's when portslice-fleetd calls, else as set-owner.
	uint64_t moveSlices(const std::vector<service::OwnerMove> &moves, uint32_t drainSeconds);

	std::string Server() override;
	uint64_t Generation() override;
	std::string State() override;
	std::string LastError() override;

	Service &service_;
	std::vector<std::function<void()>> announcements_;
	// The last caller's unique bus name and uid: asking the bus is a round
	// trip to it, and a unique name is never given to another connection.
	std::string lastSender_;
	uint32_t lastUid_ = 0;
};

} // namespace portslice::dbus
