// SPDX-License-Identifier: MIT
// The fleet's key space in etcd (docs/architecture.md, "Fleet mode"): key names, value JSON, and the view a fleetd builds from a range and a watch.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>

#include "fleet/ownership.h"

namespace portslice::fleet {

// PREFIX/members/SERVER: bound to the server's lease.
struct Member {
	std::string address;
	int64_t since = 0; // Unix seconds: when this lease was granted
	std::string version;
	int64_t lease = 0;
};

// PREFIX/live: the servers that own their slices now, written by the leader.
struct Live {
	std::set<std::string> servers;
	int64_t since = 0;
};

std::string memberKey(std::string_view prefix, std::string_view server);
std::string liveKey(std::string_view prefix);
std::string leaderKey(std::string_view prefix);
std::string ownerKey(std::string_view prefix, Ipv4 address, uint32_t slice);

std::string encodeMember(const Member &member);
std::string encodeLive(const Live &live);
std::string encodeOwner(const OwnerKey &owner);
// nullopt when the value is not the JSON the key should hold.
std::optional<Member> decodeMember(std::string_view value);
std::optional<Live> decodeLive(std::string_view value);
std::optional<OwnerKey> decodeOwner(std::string_view value);

// What etcd holds under the prefix, as of `revision`.
struct View {
	std::map<std::string, Member> members;
	std::optional<Live> live;
	int64_t liveModRevision = 0; // 0: no live key
	OwnerKeys owners;
	std::string leader; // "" when none
	int64_t revision = 0;
	// The fleet table: when set, an owners/ key whose address, slice,
	// owner or previous owner the file does not have is ignored too (the
	// file's owner decides), with the reason.
	const config::Config *table = nullptr;

	// One key of the prefix put or deleted (`key` is the whole key). Keys
	// that are not the fleet's, or values it cannot read, are ignored (an
	// owners/ key put so is as if deleted): the returned text says why
	// (empty when taken).
	std::string put(std::string_view prefix, std::string_view key, std::string_view value, int64_t modRevision,
			int64_t lease);
	void erase(std::string_view prefix, std::string_view key);

private:
	// Why the file cannot have this owners/ key ("" when it can, or with no table).
	std::string checkOwner(std::pair<uint32_t, uint32_t> where, const OwnerKey &key) const;
};

} // namespace portslice::fleet
