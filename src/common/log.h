// SPDX-License-Identifier: MIT
// The daemons' log: journald with a priority and structured fields under systemd, otherwise standard error with sd-daemon(3) "<N>" prefixes.
#pragma once

#include <vector>
#include <sstream>
#include <string>
#include <string_view>

namespace portslice::log {

// syslog(3) priorities: `journalctl -p err` shows Err and above only.
enum class Priority : int { Err = 3, Warning = 4, Notice = 5, Info = 6, Debug = 7 };

// One journal field beside MESSAGE: an upper-case NAME and its value
// (numbers as decimal text, so `journalctl -o json` can be filtered on them).
struct Field {
	std::string_view name;
	std::string value;
};

// Log one line. Under systemd (standard error is the journal stream that
// $JOURNAL_STREAM names) it goes to journald through sd_journal_send with
// PRIORITY, SYSLOG_IDENTIFIER and the fields; otherwise to standard error as
// "<N>message", which systemd and sd-daemon readers understand.
void write(Priority priority, std::string_view message, const std::vector<Field> &fields = {});

// A line put together with <<, as on std::cerr, written when it ends:
// `log::Line(log::Priority::Err) << "cannot open " << path;`
class Line {
public:
	explicit Line(Priority priority) : priority_(priority) {}
	Line(const Line &) = delete;
	Line &operator=(const Line &) = delete;
	~Line() { write(priority_, out_.str()); }
	template<class T>
	Line &operator<<(const T &value)
	{
		out_ << value;
		return *this;
	}

private:
	Priority priority_;
	std::ostringstream out_;
};

// Whether write() sends to journald (for tests and the start-up line).
bool toJournal();

} // namespace portslice::log
