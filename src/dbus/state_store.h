// SPDX-License-Identifier: MIT
// The orchestration overlay (SetSliceOwner changes) and the generation, kept in the state directory, written atomically.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/net.h"
#include "common/result.h"
#include "config/config.h"

namespace portslice::dbus {

struct OwnerOverride {
	Ipv4 address;
	uint32_t slice = 0;
	std::string server;
	auto operator<=>(const OwnerOverride &) const = default;
};

using Overlay = std::vector<OwnerOverride>; // sorted by (address, slice), unique

// Set `server` as owner of (address, slice) in `overlay`, keeping it sorted.
void setOverride(Overlay &overlay, Ipv4 address, uint32_t slice, const std::string &server);

struct OverlayResult {
	config::Config config;
	Overlay kept;                      // the entries that still change something
	std::vector<std::string> dropped;  // why each other entry was dropped, for the log
};

// Lay the overlay over a config from the file. Entries that name an address,
// slice or server the file no longer has are dropped (the file is the
// operator's word); entries the file now agrees with are retired.
OverlayResult applyOverlay(const config::Config &file, const Overlay &overlay);

// What the state directory keeps: the overlay, and the last generation, so
// that generations keep growing across restarts (the table's comment only
// changes with a full replace).
struct Persisted {
	Overlay overlay;
	uint64_t generation = 0;
	bool operator==(const Persisted &) const = default;
};

class StateStore {
public:
	explicit StateStore(std::string dir) : dir_(std::move(dir)) {}

	const std::string &dir() const { return dir_; }
	std::string path() const { return dir_ + "/owners"; }

	// A missing file is an empty overlay; a damaged one is an error naming its line.
	Result<Persisted> load() const;
	// Write a temporary file, fsync it, rename it over the old one, fsync the
	// directory: after a crash the file is either the old or the new one.
	Status save(const Persisted &state) const;

private:
	std::string dir_;
};

} // namespace portslice::dbus
