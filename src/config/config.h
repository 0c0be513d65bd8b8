// SPDX-License-Identifier: MIT
// The validated fleet configuration of docs/config.md: plain structs, no toml++ type leaks out of this module.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/net.h"
#include "config/slice_owners.h"

namespace portslice::config {

// The name of a config file, shared by every Location of one load (a fleet
// has four per address and source: a copy each was 48 bytes of heap).
class FileName {
public:
	FileName() = default;
	FileName(std::string name) : name_(std::make_shared<const std::string>(std::move(name))) {}
	FileName(const char *name) : FileName(std::string(name)) {}
	const std::string &str() const { return name_ ? *name_ : empty(); }
	operator const std::string &() const { return str(); }

private:
	static const std::string &empty();
	std::shared_ptr<const std::string> name_;
};

// Where a key or table stands in its file; line and column count from 1.
struct Location {
	FileName file;
	uint32_t line = 0;
	uint32_t column = 0;
};

struct Diagnostic {
	enum class Severity { Error, Warning };
	Severity severity = Severity::Error;
	Location where;
	std::string message;

	// "FILE:LINE:COL: error: message", as compilers print it.
	std::string str() const;
};

bool hasErrors(const std::vector<Diagnostic> &diagnostics);
// In the order of the file: by line, then column; those of the file as a
// whole (line 0) first; equal positions keep their order.
void sortByPosition(std::vector<Diagnostic> &diagnostics);

struct PortRange {
	uint16_t lo = 1024;
	uint16_t hi = 65535; // inclusive
	uint32_t size() const { return uint32_t{hi} - lo + 1; }
	auto operator<=>(const PortRange &) const = default;
};

struct Datacenter {
	std::string name;
	std::optional<Ipv4> gateway;
	Location where;
};

struct Server {
	std::string name;
	Ipv4 address;
	std::string datacenter;
	std::optional<Mac> mac;
	Location where;
};

// Tags (key = value), read-only and shared between copies: the loader gives
// every equal set one map (a fleet's addresses mostly carry a few tag sets,
// and a source's want is often an address's tags), and a plan's copy is a
// reference, not a second map.
class Tags {
public:
	using Map = std::map<std::string, std::string>;
	using const_iterator = Map::const_iterator;

	Tags() = default;
	explicit Tags(std::shared_ptr<const Map> map) : map_(std::move(map)) {}

	const_iterator begin() const { return map().begin(); }
	const_iterator end() const { return map().end(); }
	const_iterator find(const std::string &key) const { return map().find(key); }
	size_t size() const { return map().size(); }
	bool empty() const { return map().empty(); }
	const Map &map() const { return map_ ? *map_ : none(); }
	bool operator==(const Tags &other) const { return map_ == other.map_ || map() == other.map(); }

private:
	static const Map &none();
	std::shared_ptr<const Map> map_;
};

struct Address {
	Ipv4 address;
	std::string datacenter;
	Tags tags;
	PortRange portRange;
	uint32_t sliceSize = 2048;
	// slice index -> server name. Kept per slice so that a SetSliceOwner
	// overlay is a single assignment.
	SliceOwners owners;
	// slice index -> server that owned it before a handover still draining
	// (key `previous`, same shape as `slices`).
	SliceOwners previous;
	Location where;
	Location slicesWhere;

	uint32_t sliceCount() const { return portRange.size() / sliceSize; }
	PortRange slice(uint32_t index) const
	{
		uint16_t lo = static_cast<uint16_t>(portRange.lo + index * sliceSize);
		return PortRange{lo, static_cast<uint16_t>(lo + sliceSize - 1)};
	}
};

enum class NatMode { Conntrack, Stateless };

struct Match {
	std::optional<Prefix> saddr;
	std::optional<std::string> iifname;
	std::optional<uint32_t> mark;
	std::optional<uint32_t> cgroup; // net_cls classid (meta cgroup)
	std::optional<uint32_t> uid;
	auto operator<=>(const Match &) const = default;
};

struct Source {
	std::string name;
	Match match;
	Tags want;
	NatMode nat = NatMode::Conntrack;
	std::optional<uint32_t> block; // stateless: ports per inside address
	uint32_t weight = 1;
	std::optional<uint16_t> zone;
	Location where;
	Location blockWhere;
};

// [conntrack]: optional sysctl tuning; absent keys leave the kernel's value.
// The largest values of [conntrack] the kernel accepts (see config.cpp).
inline constexpr int64_t kConntrackMaxLimit = 0x7fffffff;
inline constexpr int64_t kConntrackBucketsLimit = 0x7fffffff / 8;
inline constexpr int64_t kConntrackTimeoutLimit = 0x7fffffff / 1000;
// A server's name is in the table's comment, which the kernel keeps to 256 bytes.
inline constexpr size_t kServerNameLimit = 64;

struct ConntrackTuning {
	std::optional<uint32_t> max;             // net.netfilter.nf_conntrack_max
	std::optional<uint32_t> buckets;         // net.netfilter.nf_conntrack_buckets
	std::optional<uint32_t> tcpEstablished;  // seconds
	std::optional<uint32_t> tcpTimeWait;     // seconds
	std::optional<uint32_t> udp;             // seconds
	std::optional<uint32_t> udpStream;       // seconds
	bool empty() const
	{
		return !max && !buckets && !tcpEstablished && !tcpTimeWait && !udp && !udpStream;
	}
};

// [fleet]: fleet mode through etcd (docs/architecture.md, "Fleet mode"); read by portslice-fleetd and
// portslicectl set-owner --fleet, ignored by portsliced's plan.
struct Fleet {
	std::vector<std::string> etcd; // endpoint URLs, http:// or https://, tried in turn
	std::string prefix;            // the fleet's key space, "/portslice/lab1" (no trailing '/')
	uint32_t leaseSeconds = 2;
	uint32_t returnHomeSeconds = 60;
	// TLS to etcd: a CA bundle to verify the endpoints (default: the system's),
	// and a client certificate and key (PEM) when etcd asks for one.
	std::string caFile;
	std::string certFile;
	std::string keyFile;
	Location where;
};

// "http://HOST[:PORT]" or "https://HOST[:PORT]" (the scheme in any case, an
// optional trailing '/'): empty when `url` is one, else what is wrong with
// it. `normal` (when given) gets the URL as fleetd and portslicectl use it:
// the scheme in lower case, no trailing '/', and etcd's client port 2379
// when none is given (not HTTP's 80 or 443).
std::string checkEtcdUrl(std::string_view url, std::string *normal = nullptr);
inline constexpr unsigned kEtcdDefaultPort = 2379;

struct Config {
	std::string file;
	std::string serverName;
	std::string uplink;
	Location serverWhere;
	PortRange defaultPortRange;
	uint32_t defaultSliceSize = 2048;
	std::vector<Datacenter> datacenters;
	std::vector<Server> servers;
	std::vector<Address> addresses;
	std::vector<Source> sources;
	ConntrackTuning conntrack;
	std::optional<Fleet> fleet;

	const Server *findServer(std::string_view name) const;
	const Datacenter *findDatacenter(std::string_view name) const;
	Address *findAddress(Ipv4 address);
	const Address *findAddress(Ipv4 address) const;
};

struct LoadResult {
	std::optional<Config> config; // set only when there is no error
	std::vector<Diagnostic> diagnostics;
	size_t chunks = 1; // how many pieces toml++ parsed the text in (see loadString)
	bool ok() const { return config.has_value(); }
};

// Parse and validate a file. Every error of the file is reported, not just the
// first. The fleet-wide rules are checked here; the rules that depend on which
// server plans (stateless blocks fitting its share) are checked by the planner.
//
// A big file is parsed in chunks of about `chunkBytes`, cut at its top-level
// table headers, so that toml++'s document of the whole file never exists at
// once; the result, diagnostics included, is the same as with one chunk
// (which the loader falls back to whenever it cannot be sure of that).
// chunkBytes 0: kChunkBytes, or a kMaxChunks-th of the text if that is more
// (each chunk's document freed in a heap full of holes costs time in malloc:
// reloading a 100k-source file in 200 chunks took 3 times as long as in one;
// docs/performance.md, "Memory").
inline constexpr size_t kChunkBytes = 256 * 1024;
inline constexpr size_t kMaxChunks = 16;
LoadResult loadFile(const std::string &path);
// The bytes of a file, read into one string of its size (a config file of
// 10,000 addresses is 5 MB: no stream buffer and copies beside it), or of a
// pipe or character device (--config /dev/stdin) until its end; nullopt with
// errno set when it cannot be read (EISDIR for a directory).
std::optional<std::string> readText(const std::string &path);
LoadResult loadString(std::string_view text, const std::string &name, size_t chunkBytes = 0);

// The fleet-wide rules on an already built Config (after an orchestration
// overlay such as SetSliceOwner): owners known, no slice beyond the range.
std::vector<Diagnostic> validate(const Config &config);

} // namespace portslice::config
