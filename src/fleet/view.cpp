// SPDX-License-Identifier: MIT
// Key names and value JSON of the fleet's key space, and the View they make up.
#include "fleet/view.h"

#include <nlohmann/json.hpp>

namespace portslice::fleet {

using nlohmann::json;

std::string memberKey(std::string_view prefix, std::string_view server)
{
	return std::string(prefix) + "/members/" + std::string(server);
}

std::string liveKey(std::string_view prefix)
{
	return std::string(prefix) + "/live";
}

std::string leaderKey(std::string_view prefix)
{
	return std::string(prefix) + "/leader";
}

std::string ownerKey(std::string_view prefix, Ipv4 address, uint32_t slice)
{
	return std::string(prefix) + "/owners/" + address.str() + "/" + std::to_string(slice);
}

std::string encodeMember(const Member &member)
{
	return json{{"address", member.address}, {"since", member.since}, {"version", member.version}}.dump();
}

std::string encodeLive(const Live &live)
{
	return json{{"servers", live.servers}, {"since", live.since}}.dump();
}

std::string encodeOwner(const OwnerKey &owner)
{
	return json{{"owner", owner.owner}, {"previous", owner.previous}, {"until", owner.until}}.dump();
}

namespace {

std::optional<json> parseObject(std::string_view value)
{
	json j = json::parse(value, nullptr, false);
	if (j.is_discarded() || !j.is_object())
		return std::nullopt;
	return j;
}

} // namespace

std::optional<Member> decodeMember(std::string_view value)
{
	std::optional<json> j = parseObject(value);
	if (!j)
		return std::nullopt;
	Member m;
	if (auto it = j->find("address"); it != j->end() && it->is_string())
		m.address = it->get<std::string>();
	if (auto it = j->find("since"); it != j->end() && it->is_number_integer())
		m.since = it->get<int64_t>();
	if (auto it = j->find("version"); it != j->end() && it->is_string())
		m.version = it->get<std::string>();
	return m;
}

std::optional<Live> decodeLive(std::string_view value)
{
	std::optional<json> j = parseObject(value);
	if (!j)
		return std::nullopt;
	auto servers = j->find("servers");
	if (servers == j->end() || !servers->is_array())
		return std::nullopt;
	Live live;
	for (const json &s : *servers) {
		if (!s.is_string())
			return std::nullopt;
		live.servers.insert(s.get<std::string>());
	}
	if (auto it = j->find("since"); it != j->end() && it->is_number_integer())
		live.since = it->get<int64_t>();
	return live;
}

std::optional<OwnerKey> decodeOwner(std::string_view value)
{
	std::optional<json> j = parseObject(value);
	if (!j)
		return std::nullopt;
	auto owner = j->find("owner");
	if (owner == j->end() || !owner->is_string() || owner->get<std::string>().empty())
		return std::nullopt;
	OwnerKey k;
	k.owner = owner->get<std::string>();
	if (auto it = j->find("previous"); it != j->end() && it->is_string())
		k.previous = it->get<std::string>();
	if (auto it = j->find("previous"); it != j->end() && !it->is_string())
		return std::nullopt;
	if (auto it = j->find("until"); it != j->end()) {
		if (!it->is_number_integer())
			return std::nullopt; // "soon", 1.5: not a moment
		k.until = it->get<int64_t>();
	}
	return k;
}

namespace {

// "owners/198.51.100.1/3" -> (address, slice).
std::optional<std::pair<uint32_t, uint32_t>> ownerPath(std::string_view rest)
{
	size_t slash = rest.find('/');
	if (slash == std::string_view::npos)
		return std::nullopt;
	std::optional<Ipv4> ip = Ipv4::parse(rest.substr(0, slash));
	std::string_view slice = rest.substr(slash + 1);
	if (!ip || slice.empty() || slice.size() > 5)
		return std::nullopt;
	uint32_t n = 0;
	for (char c : slice) {
		if (c < '0' || c > '9')
			return std::nullopt;
		n = n * 10 + static_cast<uint32_t>(c - '0');
	}
	return std::pair{ip->value, n};
}

} // namespace

std::string View::put(std::string_view prefix, std::string_view key, std::string_view value, int64_t modRevision,
		      int64_t lease)
{
	if (!key.starts_with(prefix) || key.size() <= prefix.size() || key[prefix.size()] != '/')
		return "not under the prefix";
	std::string_view rest = key.substr(prefix.size() + 1);
	if (rest == "live") {
		std::optional<Live> l = decodeLive(value);
		if (!l)
			return "not {\"servers\": [...], \"since\": UNIX}";
		live = std::move(*l);
		liveModRevision = modRevision;
	} else if (rest == "leader") {
		leader = std::string(value);
	} else if (rest.starts_with("members/")) {
		std::optional<Member> m = decodeMember(value);
		if (!m)
			return "not {\"address\": ..., \"since\": UNIX, \"version\": ...}";
		m->lease = lease;
		members[std::string(rest.substr(8))] = std::move(*m);
	} else if (rest.starts_with("owners/")) {
		std::optional<std::pair<uint32_t, uint32_t>> where = ownerPath(rest.substr(7));
		if (!where)
			return "not owners/ADDRESS/SLICE";
		std::optional<OwnerKey> o = decodeOwner(value);
		if (!o) {
			owners.erase(*where);
			return "not {\"owner\": SERVER, \"previous\": SERVER or \"\", \"until\": UNIX or 0}";
		}
		if (std::string why = checkOwner(*where, *o); !why.empty()) {
			owners.erase(*where);
			return why;
		}
		owners[*where] = std::move(*o);
	} else {
		return "not a key of fleet mode";
	}
	return {};
}

std::string View::checkOwner(std::pair<uint32_t, uint32_t> where, const OwnerKey &key) const
{
	if (!table)
		return {};
	Ipv4 ip{where.first};
	const config::Address *address = table->findAddress(ip);
	if (!address)
		return ip.str() + " is not a shared address of the file";
	if (where.second >= address->sliceCount())
		return "slice " + std::to_string(where.second) + " of " + ip.str() + " does not exist (it has " +
		       std::to_string(address->sliceCount()) + ")";
	if (!table->findServer(key.owner))
		return "owner \"" + key.owner + "\" is not a server of the file";
	if (!key.previous.empty() && !table->findServer(key.previous))
		return "previous \"" + key.previous + "\" is not a server of the file";
	return {};
}

void View::erase(std::string_view prefix, std::string_view key)
{
	if (!key.starts_with(prefix) || key.size() <= prefix.size() || key[prefix.size()] != '/')
		return;
	std::string_view rest = key.substr(prefix.size() + 1);
	if (rest == "live") {
		live.reset();
		liveModRevision = 0;
	} else if (rest == "leader") {
		leader.clear();
	} else if (rest.starts_with("members/")) {
		members.erase(std::string(rest.substr(8)));
	} else if (rest.starts_with("owners/")) {
		if (auto where = ownerPath(rest.substr(7)))
			owners.erase(*where);
	}
}

} // namespace portslice::fleet
