// SPDX-License-Identifier: MIT
// The fleetd status file: JSON, written whole and renamed into place, read and worded by portslicectl status.
#include "fleet/status.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

namespace portslice::fleet {

using nlohmann::json;

std::string encodeStatus(const LinkStatus &s)
{
	json j{{"server", s.server},
	       {"pid", s.pid},
	       {"updated", s.updated},
	       {"lease_seconds", s.leaseSeconds},
	       {"etcd_reachable", s.etcdReachable},
	       {"endpoint", s.endpoint},
	       {"error", s.error},
	       {"last_contact", s.lastContact},
	       {"lease", s.lease},
	       {"leader", s.leader},
	       {"live", s.live},
	       {"live_servers", s.liveServers},
	       {"members", s.members},
	       {"revision", s.revision},
	       {"applied_revision", s.appliedRevision},
	       {"applied_generation", s.appliedGeneration},
	       {"apply_error", s.applyError}};
	return j.dump(1) + "\n";
}

std::optional<LinkStatus> decodeStatus(const std::string &text)
{
	json j = json::parse(text, nullptr, false);
	if (j.is_discarded() || !j.is_object())
		return std::nullopt;
	try {
		LinkStatus s;
		s.server = j.value("server", "");
		s.pid = j.value("pid", int64_t{0});
		s.updated = j.value("updated", int64_t{0});
		s.leaseSeconds = j.value("lease_seconds", int64_t{0});
		s.etcdReachable = j.value("etcd_reachable", false);
		s.endpoint = j.value("endpoint", "");
		s.error = j.value("error", "");
		s.lastContact = j.value("last_contact", int64_t{0});
		s.lease = j.value("lease", int64_t{0});
		s.leader = j.value("leader", "");
		s.live = j.value("live", false);
		s.liveServers = j.value("live_servers", std::vector<std::string>{});
		s.members = j.value("members", std::vector<std::string>{});
		s.revision = j.value("revision", int64_t{0});
		s.appliedRevision = j.value("applied_revision", int64_t{0});
		s.appliedGeneration = j.value("applied_generation", uint64_t{0});
		s.applyError = j.value("apply_error", "");
		return s;
	} catch (const json::exception &) {
		return std::nullopt;
	}
}

Status writeStatusFile(const std::string &path, const LinkStatus &status)
{
	// A temporary file of this call's own (fleetd's threads both write the
	// status): with one shared PATH.tmp, one writer truncated what another
	// was about to rename, and that rename found no file.
	std::string tmp = path + ".tmp.XXXXXX";
	int fd = ::mkstemp(tmp.data());
	if (fd < 0)
		return Error(errno, "creating a temporary file beside " + path);
	auto failed = [&](const std::string &what) {
		int err = errno;
		if (fd >= 0)
			::close(fd);
		::unlink(tmp.c_str());
		return Error(err, what);
	};
	// Readable by portslicectl status for the members of group portslice, as the file always was.
	if (::fchmod(fd, 0644) != 0)
		return failed("setting the mode of " + tmp);
	std::string text = encodeStatus(status);
	for (size_t done = 0; done < text.size();) {
		ssize_t n = ::write(fd, text.data() + done, text.size() - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return failed("writing " + tmp);
		done += static_cast<size_t>(n);
	}
	if (::close(fd) != 0) {
		fd = -1;
		return failed("writing " + tmp);
	}
	fd = -1;
	if (std::rename(tmp.c_str(), path.c_str()) != 0)
		return failed("renaming " + tmp + " to " + path);
	return {};
}

Result<LinkStatus> readStatusFile(const std::string &path)
{
	std::ifstream in(path);
	if (!in)
		return Error(errno, "reading " + path);
	std::stringstream text;
	text << in.rdbuf();
	std::optional<LinkStatus> s = decodeStatus(text.str());
	if (!s)
		return Error(path + " is not a fleetd status file");
	return *s;
}

namespace {

std::string join(const std::vector<std::string> &names)
{
	std::string out;
	for (const std::string &n : names)
		out += (out.empty() ? "" : ", ") + n;
	return out.empty() ? "none" : out;
}

} // namespace

std::string describeStatus(const LinkStatus &s, int64_t now)
{
	std::string out;
	int64_t age = now - s.updated;
	int64_t stale = 3 * std::max<int64_t>(s.leaseSeconds, 1) + 5;
	if (age > stale) {
		out += "fleet: unknown: portslice-fleetd has not written its status for " + std::to_string(age) +
		       " s (pid " + std::to_string(s.pid) + " is not running?); no fleet move can happen\n";
		return out;
	}
	if (s.etcdReachable) {
		out += "fleet: etcd reachable (" + s.endpoint + ")\n";
	} else {
		out += "fleet: etcd unreachable: " + s.error + "\n";
		out += "fleet: no move can happen; the applied state stays";
		if (s.lastContact)
			out += " (last answer from etcd " + std::to_string(now - s.lastContact) + " s ago)";
		out += "\n";
	}
	out += "fleet leader: " + (s.leader.empty() ? std::string("none") : s.leader) + "\n";
	out += "fleet live: " + join(s.liveServers) + (s.live ? "" : " (this server is not live)") + "\n";
	out += "fleet revision: " + std::to_string(s.appliedRevision) + " applied (generation " +
	       std::to_string(s.appliedGeneration) + "), " + std::to_string(s.revision) + " seen\n";
	if (!s.applyError.empty()) {
		out += "fleet apply error: " + s.applyError + "\n";
		if (!s.lease)
			out += "fleet: this server is no member (its portsliced does not take the fleet's owners); its "
			       "slices are with the others\n";
	}
	return out;
}

} // namespace portslice::fleet
