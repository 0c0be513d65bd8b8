// SPDX-License-Identifier: MIT
// A small etcd v3 client over its gRPC gateway (HTTP/JSON, libcurl): ranges, puts, transactions, leases, a streamed watch.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"

typedef void CURL;

namespace portslice::fleet {

struct EtcdOptions {
	std::vector<std::string> endpoints; // "http://host:2379", tried in turn from the last one that answered
	std::string caFile;                 // https: the CA bundle to verify etcd with (empty: the system's)
	std::string certFile;               // https: client certificate and key, PEM
	std::string keyFile;
	// Every request has both: an unreachable endpoint costs connectTimeout,
	// a stuck one requestTimeout, before the next is tried.
	std::chrono::milliseconds connectTimeout{300};
	std::chrono::milliseconds requestTimeout{1000};
};

struct KeyValue {
	std::string key;
	std::string value;
	int64_t createRevision = 0;
	int64_t modRevision = 0;
	int64_t lease = 0;
};

struct RangeAnswer {
	std::vector<KeyValue> kvs;
	int64_t revision = 0; // of the store when it answered
};

struct TxnAnswer {
	bool succeeded = false;
	int64_t revision = 0;
	std::vector<KeyValue> kvs; // what the range requests of the taken branch read
};

struct WatchEvent {
	bool deleted = false;
	KeyValue kv;
};

std::string base64Encode(std::string_view bytes);
std::string base64Decode(std::string_view text);
// The range_end that makes [key, end) every key starting with `prefix`.
std::string prefixEnd(std::string_view prefix);

class Etcd {
public:
	explicit Etcd(EtcdOptions options);
	~Etcd();
	Etcd(const Etcd &) = delete;
	Etcd &operator=(const Etcd &) = delete;

	// POST `body` to `path` ("/v3/kv/range"): the endpoints in turn until one
	// answers. An etcd error (a compare, a lease not found) is an Error
	// whose message is etcd's; "unavailable" answers try the next endpoint.
	Result<nlohmann::json> post(std::string_view path, const nlohmann::json &body);

	Result<RangeAnswer> range(std::string_view key, std::string_view rangeEnd = {});
	Result<int64_t> put(std::string_view key, std::string_view value, int64_t lease = 0); // -> revision
	Result<int64_t> erase(std::string_view key);                                          // -> revision
	// compare/success/failure as etcd's JSON (keys and values already base64).
	Result<TxnAnswer> txn(const nlohmann::json &compare, const nlohmann::json &success,
			      const nlohmann::json &failure = nlohmann::json::array());
	// -> lease ID; `ttl` gets what etcd granted (it may raise a small TTL).
	Result<int64_t> grant(int64_t seconds, int64_t *ttl);
	// -> the TTL left after the refresh; 0: the lease is gone.
	Result<int64_t> keepAlive(int64_t lease);
	Status revoke(int64_t lease);

	// Watch [key, rangeEnd) from `startRevision` until `stop` is set or the
	// stream ends. `onEvents` gets each response's events and the revision
	// they bring the view to. Returns the compacted revision when etcd
	// cancels the watch because `startRevision` was compacted (re-list),
	// 0 otherwise; an Error when no endpoint keeps a stream open.
	Result<int64_t> watch(std::string_view key, std::string_view rangeEnd, int64_t startRevision,
			      const std::function<void(const std::vector<WatchEvent> &, int64_t)> &onEvents,
			      const std::atomic<bool> &stop);

	// The endpoint that answered last.
	const std::string &endpoint() const { return options_.endpoints[current_]; }

private:
	struct Reply {
		long status = 0;
		std::string body;
	};
	// One request to one endpoint; an Error for transport failures only.
	Result<Reply> send(const std::string &url, const std::string &body, bool stream,
			   const std::function<bool(std::string &)> *onData, const std::atomic<bool> *stop);

	EtcdOptions options_;
	CURL *curl_ = nullptr;
	size_t current_ = 0;
};

} // namespace portslice::fleet
