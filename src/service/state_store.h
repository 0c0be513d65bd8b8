// SPDX-License-Identifier: MIT
// The orchestration overlay (SetSliceOwner changes) and the generation, kept in the state directory, written atomically.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/net.h"
#include "common/result.h"
#include "config/config.h"

namespace portslice::service {

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

// A slice that moved away from `previous` over D-Bus: until `until` (Unix
// time, seconds) the plan names `previous` as the slice's draining previous
// owner, so flows it opened before the move finish (docs/operations.md).
struct SliceDrain {
	Ipv4 address;
	uint32_t slice = 0;
	std::string previous;
	int64_t until = 0;
	auto operator<=>(const SliceDrain &) const = default;
};

using Drains = std::vector<SliceDrain>; // sorted by (address, slice), unique

// Set or replace the drain of (drain.address, drain.slice), keeping `drains` sorted.
void setDrain(Drains &drains, SliceDrain drain);
// Forget the drain of (address, slice), if any.
void clearDrain(Drains &drains, Ipv4 address, uint32_t slice);

struct DrainResult {
	Drains kept;                       // still draining, laid over the config
	std::vector<std::string> dropped;  // why each other entry was dropped, for the log
};

// Name each drain's previous owner as `previous` of its slice in `config`
// (over what the file says). Drains whose deadline is not after `now`, or
// that name an address, slice or server the config no longer has, or whose
// previous owner owns the slice again, are dropped.
DrainResult applyDrains(config::Config &config, const Drains &drains, int64_t now);

// Lay the overlay over a config from the file. Entries that name an address,
// slice or server the file no longer has are dropped (the file is the
// operator's word); entries the file now agrees with are retired. The
// config is taken (and returned in the result), not copied.
OverlayResult applyOverlay(config::Config file, const Overlay &overlay);

// What the state directory keeps: the overlay, and the last generation, so
// that generations keep growing across restarts (the table's comment only
// changes with a full replace).
struct Persisted {
	Overlay overlay;
	uint64_t generation = 0;
	Drains drains;
	// SHA-256 of the config file applied as `generation` ("" when not known:
	// a file of the format before version 2). With the overlay and drains it
	// says what `generation` is: a start that finds them all unchanged
	// applies the same generation and writes nothing.
	std::string fileHash;
	bool operator==(const Persisted &) const = default;
};

// The owners file as read: what it keeps, in which form it was, and which
// portsliced wrote it.
struct Loaded {
	enum class Form { Missing, Legacy, Current };
	Persisted state;
	Form form = Form::Missing;
	std::string writer; // PORTSLICE_VERSION of the daemon that wrote it ("" : Legacy, Missing)
};

// The owners file, format 2 (docs/operations.md "The state directory"):
//   portslice-owners 2
//   # comments
//   writer VERSION
//   generation G
//   file SHA256                      (when known)
//   ADDRESS SLICE SERVER             (one per moved slice)
//   drain ADDRESS SLICE PREVIOUS UNTIL
//   end FNV1A64                      (of every byte before this line, 16 hex digits)
// Nothing may follow the end record. A file without the header line is the
// format before version 2 (no checksum): read as such, rewritten in format 2
// by the next write.
inline constexpr int kOwnersFormat = 2;
std::string encodeOwners(const Persisted &state, std::string_view writer);
// `path` names the file in errors: "PATH: offset N: WHAT".
Result<Loaded> decodeOwners(std::string_view text, const std::string &path);

class StateStore {
public:
	explicit StateStore(std::string dir) : dir_(std::move(dir)) {}

	const std::string &dir() const { return dir_; }
	std::string path() const { return dir_ + "/owners"; }

	// A missing file is an empty overlay. A damaged one (empty, cut short,
	// changed after it was written, a line that does not parse), or a path
	// that is not a regular file (a FIFO is refused, never waited on), is an
	// error naming the file and the byte offset.
	Result<Loaded> read() const;
	Result<Persisted> load() const;
	// Write a temporary file, fsync it, rename it over the old one, fsync the
	// directory: after a crash the file is either the old or the new one.
	Status save(const Persisted &state) const;

private:
	std::string dir_;
};

} // namespace portslice::service
