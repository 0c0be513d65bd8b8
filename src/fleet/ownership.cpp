// SPDX-License-Identifier: MIT
// The ownership function of fleet mode (docs/architecture.md, "Fleet mode"), rendezvous hashing among the live servers of an address's data centre.
#include "fleet/ownership.h"

namespace portslice::fleet {

uint64_t rendezvousScore(Ipv4 address, uint32_t slice, std::string_view server)
{
	uint64_t h = 14695981039346656037ull;
	auto mix = [&h](uint8_t byte) {
		h ^= byte;
		h *= 1099511628211ull;
	};
	for (int shift = 24; shift >= 0; shift -= 8)
		mix(static_cast<uint8_t>(address.value >> shift));
	for (int shift = 24; shift >= 0; shift -= 8)
		mix(static_cast<uint8_t>(slice >> shift));
	for (char c : server)
		mix(static_cast<uint8_t>(c));
	// FNV's last bytes barely reach the high bits: finish with splitmix64.
	h ^= h >> 30;
	h *= 0xbf58476d1ce4e5b9ull;
	h ^= h >> 27;
	h *= 0x94d049bb133111ebull;
	h ^= h >> 31;
	return h;
}

Ownership::Ownership(const config::Config &config, const std::set<std::string> &live, const OwnerKeys &keys)
	: config_(config), keys_(keys), live_(config.servers.size(), false)
{
	for (size_t i = 0; i < config.servers.size(); i++) {
		const config::Server &s = config.servers[i];
		serverIndex_.emplace(s.name, static_cast<int32_t>(i));
		if (live.count(s.name)) {
			live_[i] = true;
			liveIn_[s.datacenter].push_back(static_cast<int32_t>(i));
		}
	}
}

int32_t Ownership::owner(size_t addressIndex, uint32_t slice) const
{
	const config::Address &a = config_.addresses[addressIndex];
	if (!keys_.empty()) {
		auto key = keys_.find({a.address.value, slice});
		if (key != keys_.end()) {
			auto s = serverIndex_.find(key->second.owner);
			if (s != serverIndex_.end() && live_[static_cast<size_t>(s->second)])
				return s->second;
		}
	}
	auto inFile = a.owners.find(slice);
	if (inFile == a.owners.end())
		return -1;
	auto fileOwner = serverIndex_.find(inFile->second);
	int32_t fallback = fileOwner == serverIndex_.end() ? -1 : fileOwner->second;
	if (fallback >= 0 && live_[static_cast<size_t>(fallback)])
		return fallback;
	auto candidates = liveIn_.find(a.datacenter);
	if (candidates == liveIn_.end())
		return fallback;
	int32_t best = -1;
	uint64_t bestScore = 0;
	for (int32_t c : candidates->second) {
		const std::string &name = config_.servers[static_cast<size_t>(c)].name;
		uint64_t score = rendezvousScore(a.address, slice, name);
		if (best < 0 || score > bestScore ||
		    (score == bestScore && name < config_.servers[static_cast<size_t>(best)].name)) {
			best = c;
			bestScore = score;
		}
	}
	return best;
}

std::vector<std::vector<int32_t>> Ownership::all() const
{
	std::vector<std::vector<int32_t>> out(config_.addresses.size());
	for (size_t i = 0; i < config_.addresses.size(); i++) {
		uint32_t n = config_.addresses[i].sliceCount();
		out[i].resize(n);
		for (uint32_t s = 0; s < n; s++)
			out[i][s] = owner(i, s);
	}
	return out;
}

} // namespace portslice::fleet
