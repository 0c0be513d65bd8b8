// SPDX-License-Identifier: MIT
// The orchestration overlay file: one "ADDRESS SLICE SERVER" line per moved slice and one "drain" line per draining old owner, replaced atomically.
#include "service/state_store.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <fcntl.h>
#include <fstream>
#include <optional>
#include <sstream>
#include <sys/stat.h>
#include <unistd.h>

#include "common/handle.h"

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
std::optional<T> wholeNumber(const std::string &text)
{
	T value{};
	auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
	if (text.empty() || ec != std::errc() || end != text.data() + text.size())
		return std::nullopt;
	return value;
}

std::optional<uint32_t> number32(const std::string &text) { return wholeNumber<uint32_t>(text); }
std::optional<int64_t> number64(const std::string &text) { return wholeNumber<int64_t>(text); }

} // namespace

Result<Persisted> StateStore::load() const
{
	std::ifstream in(path());
	if (!in) {
		if (errno == ENOENT)
			return Persisted{};
		return Error(errno, "reading " + path());
	}
	Persisted state;
	Overlay &overlay = state.overlay;
	std::string line;
	for (uint32_t number = 1; std::getline(in, line); ++number) {
		if (line.empty() || line[0] == '#')
			continue;
		std::istringstream words(line);
		std::string address, slice, server, extra;
		words >> address >> slice >> server >> extra;
		if (address == "drain") {
			// drain ADDRESS SLICE PREVIOUS UNTIL
			std::vector<std::string> w;
			std::istringstream all(line);
			for (std::string word; all >> word;)
				w.push_back(word);
			auto ip = w.size() == 5 ? Ipv4::parse(w[1]) : std::nullopt;
			std::optional<uint32_t> index = ip ? number32(w[2]) : std::nullopt;
			std::optional<int64_t> until = ip ? number64(w[4]) : std::nullopt;
			if (!ip || !index || !until)
				return Error(path() + ":" + std::to_string(number) +
					     ": expected \"drain ADDRESS SLICE PREVIOUS UNTIL\"; fix or delete the line, then restart");
			setDrain(state.drains, SliceDrain{*ip, *index, w[3], *until});
			continue;
		}
		if (address == "generation" && server.empty()) {
			auto [end, ec] = std::from_chars(slice.data(), slice.data() + slice.size(), state.generation);
			if (ec == std::errc() && end == slice.data() + slice.size())
				continue;
		}
		auto ip = Ipv4::parse(address);
		uint32_t index = 0;
		auto [end, ec] = std::from_chars(slice.data(), slice.data() + slice.size(), index);
		if (!ip || ec != std::errc() || end != slice.data() + slice.size() || server.empty() || !extra.empty())
			return Error(path() + ":" + std::to_string(number) +
				     ": expected \"ADDRESS SLICE SERVER\"; fix or delete the line, then restart");
		setOverride(overlay, *ip, index, server);
	}
	return state;
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
	std::string text = "# portsliced: slice owners set over D-Bus (SetSliceOwner), laid over the config file.\n"
			   "# ADDRESS SLICE SERVER; drain ADDRESS SLICE PREVIOUS UNTIL (Unix time). Written by the daemon;"
			   " edit only while it is stopped.\n"
			   "generation " + std::to_string(state.generation) + "\n";
	for (const OwnerOverride &o : state.overlay)
		text += o.address.str() + " " + std::to_string(o.slice) + " " + o.server + "\n";
	// drain ADDRESS SLICE PREVIOUS UNTIL: the old owner drains until Unix time UNTIL.
	for (const SliceDrain &d : state.drains)
		text += "drain " + d.address.str() + " " + std::to_string(d.slice) + " " + d.previous + " " +
			std::to_string(d.until) + "\n";

	if (::mkdir(dir_.c_str(), 0700) < 0 && errno != EEXIST)
		return Error(errno, "creating state directory " + dir_);
	std::string tmp = path() + ".tmp";
	UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
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
