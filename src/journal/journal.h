// SPDX-License-Identifier: MIT
// The ownership journal (docs/operations.md, "Answering an abuse report"): one checksummed line per record, appended and flushed, rotated by age, never rewritten.
#pragma once

#include <cstdint>
#include <sys/types.h>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/handle.h"
#include "common/net.h"
#include "common/result.h"

namespace portslice::journal {

// Who holds one slice: its owner, and the previous owner still draining
// (until `until`, Unix seconds; 0: as long as the file says).
struct SliceState {
	std::string owner;    // "" : nobody
	std::string previous; // "" : no drain
	int64_t until = 0;
	bool operator==(const SliceState &) const = default;
};

struct SliceKey {
	uint32_t address = 0; // Ipv4::value
	uint32_t slice = 0;
	auto operator<=>(const SliceKey &) const = default;
};

// Every slice of the fleet (or a subset), sorted by key.
using Ownership = std::vector<std::pair<SliceKey, SliceState>>;

// What a record says. A change (File, Move) takes effect only when an
// Outcome with its generation says `applied`: the journal is written
// before the kernel changes, the outcome after.
struct Record {
	enum class Kind { File, Move, Outcome };
	Kind kind = Kind::Move;
	int64_t timeUs = 0; // Unix time in microseconds, UTC
	uint64_t generation = 0;
	std::string why; // File: "file" or "checkpoint"; Move: "set-owner", "drain end", "fleet", "file"
	std::optional<uint32_t> uid; // the D-Bus caller who asked for it, when one did

	// File: the hash (SHA-256) of the applied file, kept as files/HASH.toml,
	// and every slice whose state differs from what that file says.
	std::string hash;
	Ownership exceptions;

	// Move: one slice; `after` is its whole state once applied, `old` who held it before.
	SliceKey key;
	std::string old;
	SliceState after;

	// Outcome: whether the change of `generation` reached the kernel.
	bool applied = false;
	std::string detail; // why not, for a failure

	bool operator==(const Record &) const = default;
};

// One line, ending in '\n': CRC-32 of the rest, then tab-separated fields.
std::string encode(const Record &record);
// The record of one line (without its '\n'), or why it is damaged.
Result<Record> decode(std::string_view line);

// RFC 3339, UTC, with microseconds: 2026-11-29T09:40:00.123456Z.
std::string formatTime(int64_t timeUs);
// Whole seconds: 2026-11-29T09:40:00Z.
std::string formatSeconds(int64_t seconds);
// RFC 3339 (any offset, optional fraction) or Unix seconds, as Unix microseconds.
std::optional<int64_t> parseTime(std::string_view text);

struct Damaged {
	std::string file;
	uint64_t offset = 0; // byte offset of the damaged line in `file`
	std::string reason;
	size_t before = 0; // its place among the good records: Scan::records[before] is the next one
	std::string str() const; // "FILE: damaged record at offset N: REASON"
};

struct Scan {
	std::vector<Record> records; // oldest first, over all segments
	std::vector<Damaged> damaged;
};

// STATE_DIR/journal (the segment being written), STATE_DIR/journal-STAMP
// (rotated segments, each starting with a checkpoint), STATE_DIR/files/HASH.toml.
class Journal {
public:
	Journal(std::string dir, int keepDays) : dir_(std::move(dir)), keepDays_(keepDays) {}

	const std::string &dir() const { return dir_; }
	std::string path() const { return dir_ + "/journal"; }
	std::string filePath(const std::string &hash) const { return dir_ + "/files/" + hash + ".toml"; }
	int keepDays() const { return keepDays_; }

	// Append the records in one write, then fdatasync: on return they are on disk.
	Status append(const std::vector<Record> &records);
	// Keep a copy of an applied file's text under files/ (once per hash; written atomically).
	Status keepFile(const std::string &hash, std::string_view text);

	// When the segment being written began on an earlier UTC day than `nowUs`:
	// rename it to journal-STAMP, and delete the segments and kept files older
	// than keepDays (the next segment's checkpoint makes them unneeded).
	// Returns true when it rotated: the caller must then start the new segment
	// with a checkpoint. `keepHashes`: files still applied or about to be
	// (empty ones ignored), never deleted.
	Result<bool> rotateIfDue(int64_t nowUs, const std::vector<std::string> &keepHashes);
	Result<bool> rotateIfDue(int64_t nowUs, const std::string &keepHash)
	{
		return rotateIfDue(nowUs, std::vector<std::string>{ keepHash });
	}

	// Every record of every segment, oldest first; damaged lines are listed, never skipped silently.
	Scan scan() const;
	// At start: when the segment being written holds a damaged line (most
	// often its last, cut short by a crash while appending), it is closed as
	// it is, renamed as a rotated segment, and the next record (the start's
	// file, with the whole state) begins a new one. Returns the damaged lines
	// (to be logged; they stay where they are, reported by every scan), none
	// when all is well.
	Result<std::vector<Damaged>> sealIfDamaged(int64_t nowUs);
	// The last record of the segment being written; none when it is empty,
	// missing or its last line is damaged.
	std::optional<Record> last() const;

private:
	std::vector<std::string> segments() const; // rotated ones (oldest first), then the current one
	// Rename the segment being written to journal-STAMP (the time of its first record).
	Status closeSegment(int64_t firstUs, int64_t nowUs);
	std::string dir_;
	int keepDays_;
	std::optional<int64_t> firstUs_; // time of the current segment's first record, once known
	// The segment being written, kept open between appends while the path
	// still names it (same inode) and every write went in whole: an append
	// is then a stat, a write and an fdatasync. Its size after our last
	// append: another size means someone else wrote, and the end is looked at.
	UniqueFd out_;
	UniqueFd outDir_; // dir_ (O_PATH): the path is checked by a one-name lookup
	dev_t outDev_ = 0;
	ino_t outIno_ = 0;
	off_t outSize_ = 0;
};

} // namespace portslice::journal
