// SPDX-License-Identifier: MIT
// log::write: sd_journal_sendv when standard error is systemd's journal stream, "<N>" lines on standard error otherwise.
#include "common/log.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <sys/stat.h>
#include <sys/uio.h>
#include <vector>

#ifdef PORTSLICE_HAVE_JOURNAL
#include <systemd/sd-journal.h>
#endif

namespace portslice::log {

namespace {

// systemd sets JOURNAL_STREAM=DEV:INODE for a unit whose standard error is
// the journal; a redirected standard error (a test, a shell) does not match.
bool stderrIsJournal()
{
	const char *stream = std::getenv("JOURNAL_STREAM");
	if (!stream)
		return false;
	unsigned long long dev = 0, ino = 0;
	if (std::sscanf(stream, "%llu:%llu", &dev, &ino) != 2)
		return false;
	struct stat st {};
	if (::fstat(2, &st) < 0)
		return false;
	return static_cast<unsigned long long>(st.st_dev) == dev && static_cast<unsigned long long>(st.st_ino) == ino;
}

} // namespace

bool toJournal()
{
#ifdef PORTSLICE_HAVE_JOURNAL
	static const bool journal = stderrIsJournal();
	return journal;
#else
	return false;
#endif
}

void write(Priority priority, std::string_view message, const std::vector<Field> &fields)
{
	int p = static_cast<int>(priority);
#ifdef PORTSLICE_HAVE_JOURNAL
	if (toJournal()) {
		std::vector<std::string> texts;
		texts.reserve(3 + fields.size());
		texts.push_back("MESSAGE=" + std::string(message));
		texts.push_back("PRIORITY=" + std::to_string(p));
		texts.push_back(std::string("SYSLOG_IDENTIFIER=") + program_invocation_short_name);
		for (const Field &f : fields)
			texts.push_back(std::string(f.name) + "=" + f.value);
		std::vector<iovec> iov;
		for (std::string &t : texts)
			iov.push_back({t.data(), t.size()});
		if (sd_journal_sendv(iov.data(), static_cast<int>(iov.size())) >= 0)
			return;
		// journald unreachable: standard error is still the journal stream.
	}
#endif
	std::string line = "<" + std::to_string(p) + ">" + std::string(message) + "\n";
	std::fwrite(line.data(), 1, line.size(), stderr);
	std::fflush(stderr);
}

} // namespace portslice::log
