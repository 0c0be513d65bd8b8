// SPDX-License-Identifier: MIT
// Who owns each slice in fleet mode: a pure function of the file, the `live` servers and the owners/ keys, the same on every server.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "config/config.h"

namespace portslice::fleet {

// PREFIX/owners/ADDRESS/SLICE: an explicit move.
struct OwnerKey {
	std::string owner;
	std::string previous; // "" when none
	// Unix seconds the previous owner drains until; 0: no deadline from the
	// writer (fleetd drains a live previous owner for its --drain-seconds).
	int64_t until = 0;
	auto operator<=>(const OwnerKey &) const = default;
};

// (shared address, slice) -> its owners/ key.
using OwnerKeys = std::map<std::pair<uint32_t, uint32_t>, OwnerKey>;

// The rendezvous score of `server` for slice `slice` of `address`: FNV-1a 64
// of the address and slice (4 bytes each, network order) and the server's
// name, through the splitmix64 finalizer. Fixed bytes in, fixed number out,
// so every machine ranks the same (never std::hash).
uint64_t rendezvousScore(Ipv4 address, uint32_t slice, std::string_view server);

class Ownership {
public:
	// `config`: the fleet table (every server reads the same file).
	Ownership(const config::Config &config, const std::set<std::string> &live, const OwnerKeys &keys);

	// The owner of slice `slice` of config.addresses[address], as an index
	// into config.servers; -1 when the slice has no owner in the file, no
	// live key, and so nothing to hand over. In order:
	//   its owners/ key if it names a live server;
	//   else the file's owner if it is live;
	//   else the live server of the address's data centre with the highest
	//   rendezvousScore (ties: the smaller name);
	//   else (no live server there) the file's owner: nothing moves.
	int32_t owner(size_t address, uint32_t slice) const;

	// Every slice of every address, owner(address, slice) for each.
	std::vector<std::vector<int32_t>> all() const;

	bool live(int32_t server) const { return server >= 0 && live_[static_cast<size_t>(server)]; }

private:
	const config::Config &config_;
	const OwnerKeys &keys_;
	std::unordered_map<std::string_view, int32_t> serverIndex_;
	std::vector<bool> live_;                                    // per config.servers
	std::unordered_map<std::string_view, std::vector<int32_t>> liveIn_; // data centre -> live servers
};

} // namespace portslice::fleet
