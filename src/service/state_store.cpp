// SPDX-License-Identifier: MIT
// The orchestration overlay file: a header, one "ADDRESS SLICE SERVER" line per moved slice, one "drain" line per draining old owner, an end record with a checksum; replaced atomically.
#include "service/state_store.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <fcntl.h>
#include <cstdio>
#include <optional>
#include <sys/stat.h>
#include <unistd.h>

#include "common/handle.h"
#include "common/hash.h"
#include "common/version.h"

namespace portslice::service {

void setOverride(Overlay &overlay, Ipv4 address, uint32_t slice, const std::string &server)
{
	auto less = [](const OwnerOverride &o, std::pair<Ipv4, uint32_t> key) {
		return std::pair{o.address, o.slice} < key;
	};
	auto it = std::lower_bound(overlay.begin(), overlay.end(), std::pair{address, slice}, less);
	if (it != overlay.end() && it->address == address && it->slice == slice)
		it->server = server;
	else
		overlay.insert(it, OwnerOverride{address, slice, server});
}

void setDrain(Drains &drains, SliceDrain drain)
{
	auto less = [](const SliceDrain &d, std::pair<Ipv4, uint32_t> key) { return std::pair{d.address, d.slice} < key; };
	auto it = std::lower_bound(drains.begin(), drains.end(), std::pair{drain.address, drain.slice}, less);
	if (it != drains.end() && it->address == drain.address && it->slice == drain.slice)
		*it = std::move(drain);
	else
		drains.insert(it, std::move(drain));
}

void clearDrain(Drains &drains, Ipv4 address, uint32_t slice)
{
	std::erase_if(drains, [&](const SliceDrain &d) { return d.address == address && d.slice == slice; });
}

DrainResult applyDrains(config::Config &config, const Drains &drains, int64_t now)
{
	DrainResult result;
	for (const SliceDrain &d : drains) {
		std::string what = "drain of " + d.address.str() + " slice " + std::to_string(d.slice) + " by " + d.previous;
		config::Address *address = config.findAddress(d.address);
		if (d.until <= now)
			result.dropped.push_back(what + ": its deadline has passed");
		else if (!address)
			result.dropped.push_back(what + ": the config no longer has this address");
		else if (d.slice >= address->sliceCount())
			result.dropped.push_back(what + ": the address has only " +
						 std::to_string(address->sliceCount()) + " slices now");
		else if (!config.findServer(d.previous))
			result.dropped.push_back(what + ": the config no longer has this server");
		else if (auto owner = address->owners.find(d.slice);
			 owner != address->owners.end() && owner->second == d.previous)
			result.dropped.push_back(what + ": it owns the slice again");
		else {
			address->previous[d.slice] = d.previous;
			result.kept.push_back(d);
		}
	}
	return result;
}

OverlayResult applyOverlay(config::Config file, const Overlay &overlay)
{
	OverlayResult result{std::move(file), {}, {}};
	for (const OwnerOverride &o : overlay) {
		config::Address *address = result.config.findAddress(o.address);
		std::string what = o.address.str() + " slice " + std::to_string(o.slice) + " -> " + o.server;
		if (!address) {
			result.dropped.push_back(what + ": the config no longer has this address");
			continue;
		}
		if (o.slice >= address->sliceCount()) {
			result.dropped.push_back(what + ": the address has only " +
						 std::to_string(address->sliceCount()) + " slices now");
			continue;
		}
		if (!result.config.findServer(o.server)) {
			result.dropped.push_back(what + ": the config no longer has this server");
			continue;
		}
		auto current = address->owners.find(o.slice);
		if (current != address->owners.end() && current->second == o.server) {
			result.dropped.push_back(what + ": the config file says the same now");
			continue;
		}
		address->owners[o.slice] = o.server;
		result.kept.push_back(o);
	}
	return result;
}

namespace {

template<class T>
std::optional<T> wholeNumber(std::string_view text)
{
	T value{};
	auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
	if (text.empty() || ec != std::errc() || end != text.data() + text.size())
		return std::nullopt;
	return value;
}

std::vector<std::string_view> wordsOf(std::string_view line)
{
	std::vector<std::string_view> words;
	size_t at = 0;
	while (at < line.size()) {
		while (at < line.size() && (line[at] == ' ' || line[at] == '\t'))
			++at;
		size_t end = at;
		while (end < line.size() && line[end] != ' ' && line[end] != '\t')
			++end;
		if (end > at)
			words.push_back(line.substr(at, end - at));
		at = end;
	}
	return words;
}

std::string hex16(uint64_t value)
{
	char text[17];
	std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(value));
	return text;
}

bool isHex(std::string_view text, size_t size)
{
	return text.size() == size && std::all_of(text.begin(), text.end(), [](char c) {
		return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
	});
}

// FNV-1a (64 bits) of the bytes before the end record.
uint64_t checksumOf(std::string_view text)
{
	Fnv1a64 h;
	h.add(text);
	return h.value();
}

constexpr std::string_view kHeader = "portslice-owners";

Error damaged(const std::string &path, size_t offset, const std::string &what)
{
	return Error(path + ": offset " + std::to_string(offset) + ": " + what +
		     "; portsliced does not start on a damaged state file: restore it from a backup, or stop "
		     "portsliced and delete it to start from the config file alone (its slice owner changes and "
		     "drains are then lost)");
}

// One record of either form into `state`: "" or why the line is not one.
std::string parseRecord(std::string_view line, bool current, Loaded &loaded, bool &sawGeneration)
{
	std::vector<std::string_view> w = wordsOf(line);
	Persisted &state = loaded.state;
	if (w.empty())
		return current ? "an empty line (the daemon writes none)" : "";
	if (w[0] == "generation" && w.size() == 2) {
		std::optional<uint64_t> generation = wholeNumber<uint64_t>(w[1]);
		if (!generation)
			return "expected \"generation N\", N from 0 to 18446744073709551615";
		if (sawGeneration)
			return "a second generation record";
		sawGeneration = true;
		state.generation = *generation;
		return "";
	}
	if (current && w[0] == "file") {
		if (w.size() != 2 || !isHex(w[1], 64))
			return "expected \"file SHA256\" (64 hex digits)";
		state.fileHash = std::string(w[1]);
		return "";
	}
	if (current && w[0] == "writer") {
		if (w.size() != 2)
			return "expected \"writer VERSION\"";
		loaded.writer = std::string(w[1]);
		return "";
	}
	if (w[0] == "drain") {
		// drain ADDRESS SLICE PREVIOUS UNTIL
		std::optional<Ipv4> ip = w.size() == 5 ? Ipv4::parse(std::string(w[1])) : std::nullopt;
		std::optional<uint32_t> slice = ip ? wholeNumber<uint32_t>(w[2]) : std::nullopt;
		std::optional<int64_t> until = slice ? wholeNumber<int64_t>(w[4]) : std::nullopt;
		if (!until)
			return "expected \"drain ADDRESS SLICE PREVIOUS UNTIL\"";
		setDrain(state.drains, SliceDrain{*ip, *slice, std::string(w[3]), *until});
		return "";
	}
	std::optional<Ipv4> ip = w.size() == 3 ? Ipv4::parse(std::string(w[0])) : std::nullopt;
	std::optional<uint32_t> slice = ip ? wholeNumber<uint32_t>(w[1]) : std::nullopt;
	if (!slice)
		return "expected \"ADDRESS SLICE SERVER\"";
	setOverride(state.overlay, *ip, *slice, std::string(w[2]));
	return "";
}

} // namespace

std::string encodeOwners(const Persisted &state, std::string_view writer)
{
	std::string text = std::string(kHeader) + " " + std::to_string(kOwnersFormat) + "\n" +
			   "# portsliced: slice owners set over D-Bus (SetSliceOwner), laid over the config file;\n"
			   "# ADDRESS SLICE SERVER; drain ADDRESS SLICE PREVIOUS UNTIL (Unix time). Written by the daemon\n"
			   "# with a checksum in its end record: an edited file is refused (docs/operations.md).\n";
	text += "writer " + std::string(writer) + "\n";
	text += "generation " + std::to_string(state.generation) + "\n";
	if (!state.fileHash.empty())
		text += "file " + state.fileHash + "\n";
	for (const OwnerOverride &o : state.overlay)
		text += o.address.str() + " " + std::to_string(o.slice) + " " + o.server + "\n";
	for (const SliceDrain &d : state.drains)
		text += "drain " + d.address.str() + " " + std::to_string(d.slice) + " " + d.previous + " " +
			std::to_string(d.until) + "\n";
	text += "end " + hex16(checksumOf(text)) + "\n";
	return text;
}

Result<Loaded> decodeOwners(std::string_view text, const std::string &path)
{
	Loaded loaded;
	if (text.empty())
		return damaged(path, 0, "the file is empty (even a state with nothing in it has a generation)");
	loaded.form = text.substr(0, kHeader.size()) == kHeader.substr(0, std::min(text.size(), kHeader.size()))
			      ? Loaded::Form::Current
			      : Loaded::Form::Legacy;
	bool current = loaded.form == Loaded::Form::Current;
	bool sawGeneration = false;
	size_t at = 0;
	for (uint32_t number = 1; at < text.size(); ++number) {
		size_t newline = text.find('\n', at);
		if (newline == std::string_view::npos)
			return damaged(path, at, "the last line has no end of line: the file was cut short");
		std::string_view line = text.substr(at, newline - at);
		std::string where = "line " + std::to_string(number) + ": ";
		if (current && number == 1) {
			std::vector<std::string_view> w = wordsOf(line);
			std::optional<int> format = w.size() == 2 && w[0] == kHeader ? wholeNumber<int>(w[1]) : std::nullopt;
			if (!format)
				return damaged(path, at, where + "expected the header \"" + std::string(kHeader) + " " +
							    std::to_string(kOwnersFormat) + "\"");
			if (*format != kOwnersFormat)
				return damaged(path, at, where + "format " + std::to_string(*format) +
							    ", which this portsliced does not read (it reads " +
							    std::to_string(kOwnersFormat) + " and the headerless one before)");
		} else if (line.substr(0, 1) == "#") {
			// a comment
		} else if (current && wordsOf(line).size() && wordsOf(line)[0] == "end") {
			std::vector<std::string_view> w = wordsOf(line);
			if (w.size() != 2 || !isHex(w[1], 16))
				return damaged(path, at, where + "expected the end record \"end CHECKSUM\" (16 hex digits)");
			std::string expected = hex16(checksumOf(text.substr(0, at)));
			if (w[1] != expected)
				return damaged(path, at, where + "the checksum of bytes 0 to " + std::to_string(at) + " is " +
							    expected + ", the end record says " + std::string(w[1]) +
							    ": the file was changed after portsliced wrote it");
			if (newline + 1 != text.size())
				return damaged(path, newline + 1, "data after the end record");
			if (!sawGeneration)
				return damaged(path, at, where + "no generation record before the end record");
			return loaded;
		} else if (std::string why = parseRecord(line, current, loaded, sawGeneration); !why.empty()) {
			return damaged(path, at, where + why);
		}
		at = newline + 1;
	}
	if (current)
		return damaged(path, text.size(), "no end record: the file ends without one (it was cut short)");
	// The format before version 2 has no end record: a file cut at a line
	// boundary is found only when the cut took its generation line, which
	// every portsliced wrote near the top.
	if (!sawGeneration)
		return damaged(path, text.size(),
			       "no generation record (a file of the format before version 2, cut short?)");
	return loaded;
}

Result<Loaded> StateStore::read() const
{
	// O_NONBLOCK: a FIFO put at the path must not hold the start until
	// something writes into it; fstat then refuses it.
	UniqueFd fd(::open(path().c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
	if (!fd.isValid()) {
		if (errno == ENOENT)
			return Loaded{};
		return Error(errno, "reading " + path());
	}
	struct stat st{};
	if (::fstat(fd.get(), &st) < 0)
		return Error(errno, "reading " + path());
	if (!S_ISREG(st.st_mode)) {
		std::string kind = S_ISFIFO(st.st_mode)  ? "a FIFO"
				   : S_ISDIR(st.st_mode) ? "a directory"
				   : S_ISSOCK(st.st_mode) ? "a socket"
				   : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device"
									       : "not a file";
		return Error(path() + ": offset 0: " + kind +
			     ", not a regular file; portsliced keeps its state in a regular file it writes itself: "
			     "remove this one (or give another --state-dir) and start again");
	}
	std::string text;
	char buffer[65536];
	for (;;) {
		ssize_t n = ::read(fd.get(), buffer, sizeof(buffer));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return Error(errno, "reading " + path());
		if (n == 0)
			break;
		text.append(buffer, static_cast<size_t>(n));
	}
	return decodeOwners(text, path());
}

Result<Persisted> StateStore::load() const
{
	Result<Loaded> loaded = read();
	if (!loaded)
		return loaded.error();
	return std::move(loaded->state);
}

namespace {

Status writeAll(int fd, const std::string &text, const std::string &what)
{
	size_t done = 0;
	while (done < text.size()) {
		ssize_t n = ::write(fd, text.data() + done, text.size() - done);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return Error(errno, "writing " + what);
		}
		done += static_cast<size_t>(n);
	}
	return {};
}

} // namespace

Status StateStore::save(const Persisted &state) const
{
	std::string text = encodeOwners(state, PORTSLICE_VERSION);
	if (::mkdir(dir_.c_str(), 0700) < 0 && errno != EEXIST)
		return Error(errno, "creating state directory " + dir_);
	std::string tmp = path() + ".tmp";
	// A fresh file: whatever a crash or someone left at the temporary path
	// (a FIFO would block the open) is replaced, never written through.
	if (::unlink(tmp.c_str()) < 0 && errno != ENOENT)
		return Error(errno, "removing " + tmp);
	UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
	if (!fd.isValid())
		return Error(errno, "creating " + tmp);
	if (Status s = writeAll(fd.get(), text, tmp); !s)
		return s;
	if (::fsync(fd.get()) < 0)
		return Error(errno, "syncing " + tmp);
	fd.reset();
	if (::rename(tmp.c_str(), path().c_str()) < 0)
		return Error(errno, "renaming " + tmp + " to " + path());
	UniqueFd dir(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
	if (!dir.isValid() || ::fsync(dir.get()) < 0)
		return Error(errno, "syncing directory " + dir_);
	return {};
}

} // namespace portslice::service
