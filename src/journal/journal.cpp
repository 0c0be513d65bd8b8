// SPDX-License-Identifier: MIT
// Journal records as checksummed text lines, and the segment files they live in.
#include "journal/journal.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <ctime>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/handle.h"

namespace portslice::journal {

namespace {

uint32_t crc32(std::string_view data)
{
	static const std::array<uint32_t, 256> table = [] {
		std::array<uint32_t, 256> t{};
		for (uint32_t i = 0; i < 256; i++) {
			uint32_t c = i;
			for (int k = 0; k < 8; k++)
				c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
			t[i] = c;
		}
		return t;
	}();
	uint32_t c = 0xffffffffu;
	for (char ch : data)
		c = table[(c ^ static_cast<unsigned char>(ch)) & 0xff] ^ (c >> 8);
	return c ^ 0xffffffffu;
}

std::string hex8(uint32_t v)
{
	char buffer[9];
	std::snprintf(buffer, sizeof(buffer), "%08x", v);
	return buffer;
}

// A name in a field: "-" when empty; bytes that separate fields percent-encoded.
std::string escape(std::string_view text)
{
	if (text.empty())
		return "-";
	std::string out;
	for (char c : text) {
		auto u = static_cast<unsigned char>(c);
		if (u <= 0x20 || u == 0x7f || c == '%' || c == ',' || c == ';' || c == '=' || c == '/' ||
		    (c == '-' && text.size() == 1)) {
			char buffer[4];
			std::snprintf(buffer, sizeof(buffer), "%%%02X", u);
			out += buffer;
		} else {
			out += c;
		}
	}
	return out;
}

std::optional<std::string> unescape(std::string_view text)
{
	if (text == "-")
		return std::string();
	std::string out;
	for (size_t i = 0; i < text.size(); i++) {
		if (text[i] != '%') {
			out += text[i];
			continue;
		}
		unsigned value = 0;
		if (i + 2 >= text.size())
			return std::nullopt;
		auto [p, ec] = std::from_chars(text.data() + i + 1, text.data() + i + 3, value, 16);
		if (ec != std::errc() || p != text.data() + i + 3)
			return std::nullopt;
		out += static_cast<char>(value);
		i += 2;
	}
	return out;
}

template<class T>
std::optional<T> number(std::string_view text)
{
	T value{};
	auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
	if (ec != std::errc() || p != text.data() + text.size() || text.empty())
		return std::nullopt;
	return value;
}

std::vector<std::string_view> split(std::string_view text, char separator)
{
	std::vector<std::string_view> parts;
	size_t at = 0;
	for (;;) {
		size_t next = text.find(separator, at);
		parts.push_back(text.substr(at, next == std::string_view::npos ? std::string_view::npos : next - at));
		if (next == std::string_view::npos)
			return parts;
		at = next + 1;
	}
}

std::string stateFields(const SliceState &s, char separator)
{
	return escape(s.owner) + separator + escape(s.previous) + separator + std::to_string(s.until);
}

std::string keyText(const SliceKey &key)
{
	return Ipv4{key.address}.str() + "/" + std::to_string(key.slice);
}

std::optional<SliceKey> parseKey(std::string_view address, std::string_view slice)
{
	std::optional<Ipv4> ip = Ipv4::parse(address);
	std::optional<uint32_t> index = number<uint32_t>(slice);
	if (!ip || !index)
		return std::nullopt;
	return SliceKey{ip->value, *index};
}

std::optional<SliceState> parseState(std::string_view owner, std::string_view previous, std::string_view until)
{
	std::optional<std::string> o = unescape(owner), p = unescape(previous);
	std::optional<int64_t> u = number<int64_t>(until);
	if (!o || !p || !u)
		return std::nullopt;
	return SliceState{*o, *p, *u};
}

Error bad(const std::string &what)
{
	return Error(what);
}

int64_t dayOf(int64_t timeUs)
{
	int64_t seconds = timeUs / 1000000;
	return (seconds >= 0 ? seconds : seconds - 86399) / 86400;
}

Status writeAll(int fd, std::string_view data, const std::string &path)
{
	while (!data.empty()) {
		ssize_t n = ::write(fd, data.data(), data.size());
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return Error(errno, "writing " + path);
		}
		data.remove_prefix(static_cast<size_t>(n));
	}
	return {};
}

Status syncDir(const std::string &dir)
{
	UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
	if (!fd.isValid())
		return Error(errno, "opening " + dir);
	if (::fsync(fd.get()) < 0)
		return Error(errno, "syncing " + dir);
	return {};
}

Status makeDir(const std::string &dir)
{
	if (::mkdir(dir.c_str(), 0750) < 0 && errno != EEXIST)
		return Error(errno, "creating " + dir);
	return {};
}

std::optional<std::string> readWhole(const std::string &path)
{
	// O_NONBLOCK and a regular file only: a FIFO in the state directory is never waited on.
	UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
	struct stat st {};
	if (!fd.isValid() || ::fstat(fd.get(), &st) < 0 || !S_ISREG(st.st_mode))
		return std::nullopt;
	std::string text;
	char buffer[65536];
	for (;;) {
		ssize_t n = ::read(fd.get(), buffer, sizeof(buffer));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		text.append(buffer, static_cast<size_t>(n));
	}
	return text;
}

} // namespace

std::string Damaged::str() const
{
	return file + ": damaged record at offset " + std::to_string(offset) + ": " + reason;
}

std::string encode(const Record &r)
{
	std::string body = formatTime(r.timeUs) + "\t" + std::to_string(r.generation) + "\t";
	std::string uid = r.uid ? std::to_string(*r.uid) : "-";
	switch (r.kind) {
	case Record::Kind::File: {
		std::string exceptions;
		for (const auto &[key, state] : r.exceptions)
			exceptions += (exceptions.empty() ? "" : ";") + keyText(key) + "=" + stateFields(state, ',');
		body += "file\t" + escape(r.why) + "\t" + uid + "\t" + r.hash + "\t" +
			(exceptions.empty() ? "-" : exceptions);
		break;
	}
	case Record::Kind::Move:
		body += "move\t" + escape(r.why) + "\t" + uid + "\t" + Ipv4{r.key.address}.str() + "\t" +
			std::to_string(r.key.slice) + "\t" + escape(r.old) + "\t" + stateFields(r.after, '\t');
		break;
	case Record::Kind::Outcome:
		body += (r.applied ? "applied\t" : "failed\t") + escape(r.detail);
		break;
	}
	return hex8(crc32(body)) + "\t" + body + "\n";
}

Result<Record> decode(std::string_view line)
{
	if (line.size() < 9 || line[8] != '\t')
		return bad("no checksum");
	std::string_view body = line.substr(9);
	std::optional<uint32_t> crc;
	{
		uint32_t value = 0;
		auto [p, ec] = std::from_chars(line.data(), line.data() + 8, value, 16);
		if (ec == std::errc() && p == line.data() + 8)
			crc = value;
	}
	if (!crc)
		return bad("no checksum");
	if (*crc != crc32(body))
		return bad("checksum mismatch");
	std::vector<std::string_view> f = split(body, '\t');
	if (f.size() < 4)
		return bad("too few fields");
	Record r;
	std::optional<int64_t> time = parseTime(f[0]);
	std::optional<uint64_t> generation = number<uint64_t>(f[1]);
	if (!time || !generation)
		return bad("bad time or generation");
	r.timeUs = *time;
	r.generation = *generation;
	auto readWhyUid = [&](std::string_view why, std::string_view uid) {
		std::optional<std::string> w = unescape(why);
		if (!w)
			return false;
		r.why = *w;
		if (uid != "-") {
			std::optional<uint32_t> u = number<uint32_t>(uid);
			if (!u)
				return false;
			r.uid = *u;
		}
		return true;
	};
	if (f[2] == "file" && f.size() == 7) {
		r.kind = Record::Kind::File;
		if (!readWhyUid(f[3], f[4]) || f[5].size() != 64)
			return bad("bad file record");
		r.hash = std::string(f[5]);
		if (f[6] != "-") {
			for (std::string_view entry : split(f[6], ';')) {
				size_t eq = entry.find('=');
				size_t slash = entry.find('/');
				if (eq == std::string_view::npos || slash == std::string_view::npos || slash > eq)
					return bad("bad exception '" + std::string(entry) + "'");
				std::vector<std::string_view> s = split(entry.substr(eq + 1), ',');
				std::optional<SliceKey> key = parseKey(entry.substr(0, slash), entry.substr(slash + 1, eq - slash - 1));
				std::optional<SliceState> state = s.size() == 3 ? parseState(s[0], s[1], s[2]) : std::nullopt;
				if (!key || !state)
					return bad("bad exception '" + std::string(entry) + "'");
				r.exceptions.emplace_back(*key, *state);
			}
		}
		return r;
	}
	if (f[2] == "move" && f.size() == 11) {
		r.kind = Record::Kind::Move;
		std::optional<SliceKey> key = parseKey(f[5], f[6]);
		std::optional<std::string> old = unescape(f[7]);
		std::optional<SliceState> after = parseState(f[8], f[9], f[10]);
		if (!readWhyUid(f[3], f[4]) || !key || !old || !after)
			return bad("bad move record");
		r.key = *key;
		r.old = *old;
		r.after = *after;
		return r;
	}
	if ((f[2] == "applied" || f[2] == "failed") && f.size() == 4) {
		r.kind = Record::Kind::Outcome;
		r.applied = f[2] == "applied";
		std::optional<std::string> detail = unescape(f[3]);
		if (!detail)
			return bad("bad outcome record");
		r.detail = *detail;
		return r;
	}
	return bad("unknown record kind '" + std::string(f[2]) + "'");
}

std::string formatTime(int64_t timeUs)
{
	int64_t seconds = timeUs >= 0 ? timeUs / 1000000 : -((-timeUs + 999999) / 1000000);
	int64_t micros = timeUs - seconds * 1000000;
	time_t t = static_cast<time_t>(seconds);
	tm parts{};
	::gmtime_r(&t, &parts);
	char buffer[64];
	std::snprintf(buffer, sizeof(buffer), "%04d-%02d-%02dT%02d:%02d:%02d.%06lldZ", parts.tm_year + 1900,
		      parts.tm_mon + 1, parts.tm_mday, parts.tm_hour, parts.tm_min, parts.tm_sec,
		      static_cast<long long>(micros));
	return buffer;
}

std::string formatSeconds(int64_t seconds)
{
	std::string text = formatTime(seconds * 1000000);
	return text.substr(0, 19) + "Z";
}

std::optional<int64_t> parseTime(std::string_view text)
{
	if (!text.empty() && std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
		std::optional<int64_t> seconds = number<int64_t>(text);
		if (!seconds || *seconds > 253402300799) // 9999-12-31T23:59:59Z
			return std::nullopt;
		return *seconds * 1000000;
	}
	// YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)
	if (text.size() < 20 || text[4] != '-' || text[7] != '-' || (text[10] != 'T' && text[10] != 't' && text[10] != ' ') ||
	    text[13] != ':' || text[16] != ':')
		return std::nullopt;
	auto two = [&](size_t at) { return number<int>(text.substr(at, 2)); };
	std::optional<int> year = number<int>(text.substr(0, 4)), month = two(5), day = two(8), hour = two(11),
			   minute = two(14), second = two(17);
	if (!year || !month || !day || !hour || !minute || !second || *month < 1 || *month > 12 || *day < 1 ||
	    *day > 31 || *hour > 23 || *minute > 59 || *second > 60)
		return std::nullopt;
	size_t at = 19;
	int64_t micros = 0;
	if (at < text.size() && text[at] == '.') {
		size_t digits = 0;
		for (at++; at < text.size() && text[at] >= '0' && text[at] <= '9'; at++, digits++)
			if (digits < 6)
				micros = micros * 10 + (text[at] - '0');
		if (digits == 0)
			return std::nullopt;
		for (; digits < 6; digits++)
			micros *= 10;
	}
	int64_t offset = 0;
	if (at < text.size() && (text[at] == 'Z' || text[at] == 'z') && at + 1 == text.size()) {
		offset = 0;
	} else if (at + 6 == text.size() && (text[at] == '+' || text[at] == '-') && text[at + 3] == ':') {
		std::optional<int> oh = two(at + 1), om = two(at + 4);
		if (!oh || !om || *oh > 23 || *om > 59)
			return std::nullopt;
		offset = (*oh * 3600 + *om * 60) * (text[at] == '+' ? 1 : -1);
	} else {
		return std::nullopt;
	}
	tm parts{};
	parts.tm_year = *year - 1900;
	parts.tm_mon = *month - 1;
	parts.tm_mday = *day;
	parts.tm_hour = *hour;
	parts.tm_min = *minute;
	parts.tm_sec = std::min(*second, 59);
	time_t t = ::timegm(&parts);
	// timegm normalises 2026-02-31 to March: such a date is not one.
	tm back{};
	::gmtime_r(&t, &back);
	if (back.tm_mday != *day || back.tm_mon != *month - 1)
		return std::nullopt;
	return (static_cast<int64_t>(t) - offset) * 1000000 + micros;
}

Status Journal::append(const std::vector<Record> &records)
{
	if (records.empty())
		return {};
	std::string text;
	for (const Record &r : records)
		text += encode(r);
	struct stat st {};
	if (out_.isValid() && (::fstatat(outDir_.get(), "journal", &st, 0) != 0 || st.st_dev != outDev_ ||
			       st.st_ino != outIno_ || !S_ISREG(st.st_mode)))
		out_.reset(); // moved or removed by someone else: the path is opened anew
	bool ours = out_.isValid() && st.st_size == outSize_; // it ends where our last append did
	if (!out_.isValid()) {
		if (Status made = makeDir(dir_); !made)
			return made;
		// O_NONBLOCK: a FIFO at the path (with no reader) fails the open instead of blocking it.
		UniqueFd fd(::open(path().c_str(), O_WRONLY | O_APPEND | O_CREAT | O_NONBLOCK | O_CLOEXEC, 0640));
		if (!fd.isValid())
			return Error(errno, "opening " + path());
		if (::fstat(fd.get(), &st) < 0)
			return Error(errno, "reading " + path());
		if (!S_ISREG(st.st_mode))
			return Error(path() + " is not a regular file; remove it");
		UniqueFd dir(::open(dir_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
		if (!dir.isValid())
			return Error(errno, "opening " + dir_);
		out_ = std::move(fd);
		outDir_ = std::move(dir);
		outDev_ = st.st_dev;
		outIno_ = st.st_ino;
	}
	bool created = st.st_size == 0;
	if (created) {
		firstUs_ = records.front().timeUs;
	} else if (!ours) {
		// A line torn by a crash stays a damaged record; the next starts on its own line.
		char last = '\n';
		UniqueFd in(::open(path().c_str(), O_RDONLY | O_CLOEXEC));
		if (in.isValid() && ::pread(in.get(), &last, 1, st.st_size - 1) == 1 && last != '\n')
			text.insert(text.begin(), '\n');
	}
	if (Status written = writeAll(out_.get(), text, path()); !written) {
		out_.reset(); // perhaps a torn line: the next append looks at the end again
		return written;
	}
	if (::fdatasync(out_.get()) < 0) {
		int error = errno;
		out_.reset();
		return Error(error, "flushing " + path());
	}
	outSize_ = st.st_size + static_cast<off_t>(text.size());
	if (created)
		return syncDir(dir_);
	return {};
}

Status Journal::keepFile(const std::string &hash, std::string_view text)
{
	std::string files = dir_ + "/files";
	std::string target = filePath(hash);
	if (::access(target.c_str(), F_OK) == 0)
		return {};
	if (Status made = makeDir(dir_); !made)
		return made;
	if (Status made = makeDir(files); !made)
		return made;
	std::string temporary = target + ".tmp";
	{
		UniqueFd fd(::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640));
		if (!fd.isValid())
			return Error(errno, "creating " + temporary);
		if (Status written = writeAll(fd.get(), text, temporary); !written)
			return written;
		if (::fsync(fd.get()) < 0)
			return Error(errno, "flushing " + temporary);
	}
	if (::rename(temporary.c_str(), target.c_str()) < 0)
		return Error(errno, "renaming " + temporary);
	return syncDir(files);
}

std::vector<std::string> Journal::segments() const
{
	std::vector<std::string> rotated;
	if (DIR *d = ::opendir(dir_.c_str())) {
		while (dirent *e = ::readdir(d)) {
			std::string name = e->d_name;
			if (name.starts_with("journal-") && !name.ends_with(".tmp"))
				rotated.push_back(dir_ + "/" + name);
		}
		::closedir(d);
	}
	std::sort(rotated.begin(), rotated.end()); // journal-YYYYMMDDTHHMMSSZ: by time
	rotated.push_back(path());
	return rotated;
}

Scan Journal::scan() const
{
	Scan scan;
	for (const std::string &segment : segments()) {
		std::optional<std::string> text = readWhole(segment);
		if (!text)
			continue;
		size_t at = 0;
		while (at < text->size()) {
			size_t end = text->find('\n', at);
			bool torn = end == std::string::npos;
			std::string_view line(text->data() + at, (torn ? text->size() : end) - at);
			if (!line.empty()) {
				Result<Record> r = torn ? Result<Record>(Error("no end of line (torn write)")) : decode(line);
				if (r)
					scan.records.push_back(std::move(*r));
				else
					scan.damaged.push_back({segment, at, r.error().message(), scan.records.size()});
			}
			at = torn ? text->size() : end + 1;
		}
	}
	return scan;
}

std::optional<Record> Journal::last() const
{
	std::optional<std::string> text = readWhole(path());
	if (!text || text->empty() || text->back() != '\n')
		return std::nullopt; // none, or torn
	size_t begin = text->rfind('\n', text->size() - 2);
	begin = begin == std::string::npos ? 0 : begin + 1;
	Result<Record> record = decode(std::string_view(*text).substr(begin, text->size() - 1 - begin));
	if (!record)
		return std::nullopt;
	return std::move(*record);
}

Status Journal::closeSegment(int64_t firstUs, int64_t nowUs)
{
	std::string stamp = formatTime(firstUs);
	std::string name = "journal-" + stamp.substr(0, 4) + stamp.substr(5, 2) + stamp.substr(8, 2) + "T" +
			   stamp.substr(11, 2) + stamp.substr(14, 2) + stamp.substr(17, 2) + "Z";
	std::string target = dir_ + "/" + name;
	if (::access(target.c_str(), F_OK) == 0)
		target += "-" + std::to_string(nowUs);
	if (::rename(path().c_str(), target.c_str()) < 0)
		return Error(errno, "rotating " + path());
	firstUs_.reset();
	out_.reset();
	return {};
}

Result<std::vector<Damaged>> Journal::sealIfDamaged(int64_t nowUs)
{
	std::optional<std::string> text = readWhole(path());
	if (!text || text->empty())
		return std::vector<Damaged>();
	std::vector<Damaged> damaged;
	for (size_t at = 0; at < text->size();) {
		size_t end = text->find('\n', at);
		bool torn = end == std::string::npos;
		std::string_view line(text->data() + at, (torn ? text->size() : end) - at);
		if (!line.empty()) {
			Result<Record> r = torn ? Result<Record>(Error("no end of line (torn write)")) : decode(line);
			if (!r)
				damaged.push_back({path(), at, r.error().message()});
		}
		at = torn ? text->size() : end + 1;
	}
	if (damaged.empty())
		return damaged;
	Result<Record> first = decode(std::string_view(*text).substr(0, text->find('\n')));
	if (Status moved = closeSegment(first ? first->timeUs : nowUs, nowUs); !moved)
		return moved.error();
	if (Status synced = syncDir(dir_); !synced)
		return synced.error();
	return damaged;
}

Result<bool> Journal::rotateIfDue(int64_t nowUs, const std::vector<std::string> &keepHashes)
{
	if (!firstUs_) {
		std::optional<std::string> text = readWhole(path());
		if (!text || text->empty())
			return false;
		Result<Record> first = decode(std::string_view(*text).substr(0, text->find('\n')));
		// A damaged first line: rotate it away all the same (by the file's age, now).
		firstUs_ = first ? first->timeUs : int64_t{0};
	}
	if (dayOf(*firstUs_) >= dayOf(nowUs))
		return false;
	if (Status moved = closeSegment(*firstUs_, nowUs); !moved)
		return moved.error();

	// Old segments: a segment can go when the next one began before the limit
	// (every record it holds is older, and the next starts with a checkpoint).
	int64_t limitUs = nowUs - int64_t{keepDays_} * 86400 * 1000000;
	std::vector<std::string> all = segments();
	all.pop_back(); // the current one does not exist yet
	for (size_t i = 0; i + 1 < all.size(); i++) {
		std::optional<std::string> next = readWhole(all[i + 1]);
		if (!next)
			continue;
		Result<Record> first = decode(std::string_view(*next).substr(0, next->find('\n')));
		if (first && first->timeUs <= limitUs)
			::unlink(all[i].c_str());
	}
	// Kept files no remaining record names.
	Scan remaining = scan();
	std::vector<std::string> named = keepHashes;
	for (const Record &r : remaining.records)
		if (r.kind == Record::Kind::File)
			named.push_back(r.hash);
	std::string files = dir_ + "/files";
	if (DIR *d = ::opendir(files.c_str())) {
		std::vector<std::string> gone;
		while (dirent *e = ::readdir(d)) {
			std::string kept = e->d_name;
			if (!kept.ends_with(".toml"))
				continue;
			std::string hash = kept.substr(0, kept.size() - 5);
			if (std::find(named.begin(), named.end(), hash) == named.end() && remaining.damaged.empty())
				gone.push_back(files + "/" + kept);
		}
		::closedir(d);
		for (const std::string &g : gone)
			::unlink(g.c_str());
	}
	return syncDir(dir_) ? Result<bool>(true) : Result<bool>(Error(errno, "syncing " + dir_));
}

} // namespace portslice::journal
