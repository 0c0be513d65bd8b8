// SPDX-License-Identifier: MIT
// The etcd gateway client: JSON bodies, base64 keys, int64 fields as strings, endpoints in turn, a timeout on every request.
#include "fleet/etcd.h"

#include <curl/curl.h>

namespace portslice::fleet {

using nlohmann::json;

namespace {

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int64_t int64Of(const json &j, const char *key)
{
	auto it = j.find(key);
	if (it == j.end())
		return 0; // proto3: a zero is left out
	if (it->is_string()) {
		try {
			return std::stoll(it->get<std::string>());
		} catch (const std::exception &) {
			return 0;
		}
	}
	if (it->is_number_integer())
		return it->get<int64_t>();
	return 0;
}

KeyValue keyValueOf(const json &kv)
{
	KeyValue out;
	out.key = base64Decode(kv.value("key", ""));
	out.value = base64Decode(kv.value("value", ""));
	out.createRevision = int64Of(kv, "create_revision");
	out.modRevision = int64Of(kv, "mod_revision");
	out.lease = int64Of(kv, "lease");
	return out;
}

int64_t headerRevision(const json &j)
{
	auto h = j.find("header");
	return h == j.end() ? 0 : int64Of(*h, "revision");
}

size_t writeBody(char *data, size_t size, size_t count, void *user)
{
	static_cast<std::string *>(user)->append(data, size * count);
	return size * count;
}

struct StreamSink {
	std::string buffer;
	const std::function<bool(std::string &)> *onData;
};

size_t writeStream(char *data, size_t size, size_t count, void *user)
{
	auto *sink = static_cast<StreamSink *>(user);
	sink->buffer.append(data, size * count);
	if (!(*sink->onData)(sink->buffer))
		return 0; // stop: curl ends the transfer with a write error
	return size * count;
}

int progress(void *user, curl_off_t, curl_off_t, curl_off_t, curl_off_t)
{
	const auto *stop = static_cast<const std::atomic<bool> *>(user);
	return stop && stop->load() ? 1 : 0;
}

// Takes the complete JSON objects at the front of `buffer` (the gateway
// streams one object per response, each on its line).
std::vector<std::string> takeObjects(std::string &buffer)
{
	std::vector<std::string> out;
	size_t start = std::string::npos, consumed = 0;
	int depth = 0;
	bool inString = false, escaped = false;
	for (size_t i = 0; i < buffer.size(); i++) {
		char c = buffer[i];
		if (inString) {
			if (escaped)
				escaped = false;
			else if (c == '\\')
				escaped = true;
			else if (c == '"')
				inString = false;
			continue;
		}
		if (c == '"') {
			inString = true;
		} else if (c == '{') {
			if (depth++ == 0)
				start = i;
		} else if (c == '}') {
			if (--depth == 0) {
				out.push_back(buffer.substr(start, i + 1 - start));
				consumed = i + 1;
			}
		}
	}
	buffer.erase(0, consumed);
	return out;
}

std::string etcdMessage(const json &j)
{
	if (auto m = j.find("message"); m != j.end() && m->is_string())
		return m->get<std::string>();
	if (auto m = j.find("error"); m != j.end()) {
		if (m->is_string())
			return m->get<std::string>();
		if (m->is_object())
			return etcdMessage(*m);
	}
	return j.dump();
}

// gRPC code 14 (unavailable: no leader, stopping) or 4 (deadline exceeded) on
// one member: another may answer.
bool tryNext(const json &j)
{
	int64_t code = int64Of(j, "code");
	if (auto e = j.find("error"); e != j.end() && e->is_object())
		code = int64Of(*e, "code");
	return code == 14 || code == 4;
}

} // namespace

std::string base64Encode(std::string_view bytes)
{
	std::string out;
	out.reserve((bytes.size() + 2) / 3 * 4);
	size_t i = 0;
	for (; i + 2 < bytes.size(); i += 3) {
		uint32_t v = uint32_t{static_cast<uint8_t>(bytes[i])} << 16 |
			     uint32_t{static_cast<uint8_t>(bytes[i + 1])} << 8 | static_cast<uint8_t>(bytes[i + 2]);
		out += kAlphabet[v >> 18];
		out += kAlphabet[(v >> 12) & 63];
		out += kAlphabet[(v >> 6) & 63];
		out += kAlphabet[v & 63];
	}
	if (i + 1 == bytes.size()) {
		uint32_t v = uint32_t{static_cast<uint8_t>(bytes[i])} << 16;
		out += kAlphabet[v >> 18];
		out += kAlphabet[(v >> 12) & 63];
		out += "==";
	} else if (i + 2 == bytes.size()) {
		uint32_t v = uint32_t{static_cast<uint8_t>(bytes[i])} << 16 | uint32_t{static_cast<uint8_t>(bytes[i + 1])} << 8;
		out += kAlphabet[v >> 18];
		out += kAlphabet[(v >> 12) & 63];
		out += kAlphabet[(v >> 6) & 63];
		out += '=';
	}
	return out;
}

std::string base64Decode(std::string_view text)
{
	std::string out;
	uint32_t acc = 0;
	int bits = 0;
	for (char c : text) {
		int v;
		if (c >= 'A' && c <= 'Z')
			v = c - 'A';
		else if (c >= 'a' && c <= 'z')
			v = c - 'a' + 26;
		else if (c >= '0' && c <= '9')
			v = c - '0' + 52;
		else if (c == '+' || c == '-')
			v = 62;
		else if (c == '/' || c == '_')
			v = 63;
		else
			continue; // '=' and line breaks
		acc = acc << 6 | static_cast<uint32_t>(v);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out += static_cast<char>((acc >> bits) & 0xff);
		}
	}
	return out;
}

std::string prefixEnd(std::string_view prefix)
{
	std::string end(prefix);
	while (!end.empty()) {
		if (static_cast<uint8_t>(end.back()) < 0xff) {
			end.back() = static_cast<char>(static_cast<uint8_t>(end.back()) + 1);
			return end;
		}
		end.pop_back();
	}
	return std::string(1, '\0'); // every key
}

Etcd::Etcd(EtcdOptions options) : options_(std::move(options)), curl_(curl_easy_init())
{
	if (options_.endpoints.empty())
		options_.endpoints.push_back("http://127.0.0.1:2379");
}

Etcd::~Etcd()
{
	if (curl_)
		curl_easy_cleanup(curl_);
}

Result<Etcd::Reply> Etcd::send(const std::string &url, const std::string &body, bool stream,
			       const std::function<bool(std::string &)> *onData, const std::atomic<bool> *stop)
{
	if (!curl_)
		return Error("libcurl could not make a handle");
	curl_easy_reset(curl_);
	Reply reply;
	StreamSink sink{{}, onData};
	curl_slist *headers = curl_slist_append(nullptr, "Content-Type: application/json");
	// A member cut off from the cluster's leader cancels the watch rather than keeping it silent.
	if (stream)
		headers = curl_slist_append(headers, "Grpc-Metadata-hasleader: true");
	curl_easy_setopt(curl_, CURLOPT_URL, url.c_str());
	curl_easy_setopt(curl_, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(curl_, CURLOPT_POST, 1L);
	curl_easy_setopt(curl_, CURLOPT_POSTFIELDS, body.c_str());
	curl_easy_setopt(curl_, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
	curl_easy_setopt(curl_, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl_, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(options_.connectTimeout.count()));
	if (!stream)
		curl_easy_setopt(curl_, CURLOPT_TIMEOUT_MS, static_cast<long>(options_.requestTimeout.count()));
	curl_easy_setopt(curl_, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(curl_, CURLOPT_TCP_KEEPIDLE, 2L);
	curl_easy_setopt(curl_, CURLOPT_TCP_KEEPINTVL, 1L);
	if (!options_.caFile.empty())
		curl_easy_setopt(curl_, CURLOPT_CAINFO, options_.caFile.c_str());
	if (!options_.certFile.empty()) {
		curl_easy_setopt(curl_, CURLOPT_SSLCERT, options_.certFile.c_str());
		curl_easy_setopt(curl_, CURLOPT_SSLKEY, options_.keyFile.c_str());
	}
	if (stream) {
		curl_easy_setopt(curl_, CURLOPT_WRITEFUNCTION, writeStream);
		curl_easy_setopt(curl_, CURLOPT_WRITEDATA, &sink);
	} else {
		curl_easy_setopt(curl_, CURLOPT_WRITEFUNCTION, writeBody);
		curl_easy_setopt(curl_, CURLOPT_WRITEDATA, &reply.body);
	}
	if (stop) {
		curl_easy_setopt(curl_, CURLOPT_NOPROGRESS, 0L);
		curl_easy_setopt(curl_, CURLOPT_XFERINFOFUNCTION, progress);
		curl_easy_setopt(curl_, CURLOPT_XFERINFODATA, const_cast<std::atomic<bool> *>(stop));
	}
	CURLcode rc = curl_easy_perform(curl_);
	curl_slist_free_all(headers);
	curl_easy_getinfo(curl_, CURLINFO_RESPONSE_CODE, &reply.status);
	if (stream)
		reply.body = std::move(sink.buffer);
	if (rc != CURLE_OK && !(stream && (rc == CURLE_WRITE_ERROR || rc == CURLE_ABORTED_BY_CALLBACK)))
		return Error(std::string(curl_easy_strerror(rc)));
	return reply;
}

Result<json> Etcd::post(std::string_view path, const json &body)
{
	std::string text = body.dump();
	std::string why;
	for (size_t tried = 0; tried < options_.endpoints.size(); tried++) {
		size_t at = (current_ + tried) % options_.endpoints.size();
		std::string base = options_.endpoints[at];
		if (!base.empty() && base.back() == '/')
			base.pop_back();
		Result<Reply> reply = send(base + std::string(path), text, false, nullptr, nullptr);
		if (!reply) {
			why += (why.empty() ? "" : "; ") + options_.endpoints[at] + ": " + reply.error().message();
			continue;
		}
		json j = json::parse(reply->body, nullptr, false);
		if (j.is_discarded() || !j.is_object()) {
			why += (why.empty() ? "" : "; ") + options_.endpoints[at] + ": HTTP " +
			       std::to_string(reply->status) + ", not JSON";
			continue;
		}
		if (reply->status != 200 || j.contains("error")) {
			if (tryNext(j)) {
				why += (why.empty() ? "" : "; ") + options_.endpoints[at] + ": " + etcdMessage(j);
				continue;
			}
			current_ = at;
			return Error("etcd " + options_.endpoints[at] + ": " + etcdMessage(j));
		}
		current_ = at;
		return j;
	}
	return Error("no etcd endpoint answers (" + why + ")");
}

Result<RangeAnswer> Etcd::range(std::string_view key, std::string_view rangeEnd)
{
	json body{{"key", base64Encode(key)}};
	if (!rangeEnd.empty())
		body["range_end"] = base64Encode(rangeEnd);
	Result<json> j = post("/v3/kv/range", body);
	if (!j)
		return j.error();
	RangeAnswer out;
	out.revision = headerRevision(*j);
	if (auto kvs = j->find("kvs"); kvs != j->end() && kvs->is_array())
		for (const json &kv : *kvs)
			out.kvs.push_back(keyValueOf(kv));
	return out;
}

Result<int64_t> Etcd::put(std::string_view key, std::string_view value, int64_t lease)
{
	json body{{"key", base64Encode(key)}, {"value", base64Encode(value)}};
	if (lease)
		body["lease"] = std::to_string(lease);
	Result<json> j = post("/v3/kv/put", body);
	if (!j)
		return j.error();
	return headerRevision(*j);
}

Result<int64_t> Etcd::erase(std::string_view key)
{
	Result<json> j = post("/v3/kv/deleterange", json{{"key", base64Encode(key)}});
	if (!j)
		return j.error();
	return headerRevision(*j);
}

Result<TxnAnswer> Etcd::txn(const json &compare, const json &success, const json &failure)
{
	Result<json> j = post("/v3/kv/txn", json{{"compare", compare}, {"success", success}, {"failure", failure}});
	if (!j)
		return j.error();
	TxnAnswer out;
	out.succeeded = j->value("succeeded", false);
	out.revision = headerRevision(*j);
	if (auto responses = j->find("responses"); responses != j->end() && responses->is_array())
		for (const json &r : *responses)
			if (auto range = r.find("response_range"); range != r.end())
				if (auto kvs = range->find("kvs"); kvs != range->end() && kvs->is_array())
					for (const json &kv : *kvs)
						out.kvs.push_back(keyValueOf(kv));
	return out;
}

Result<int64_t> Etcd::grant(int64_t seconds, int64_t *ttl)
{
	Result<json> j = post("/v3/lease/grant", json{{"TTL", std::to_string(seconds)}});
	if (!j)
		return j.error();
	if (ttl)
		*ttl = int64Of(*j, "TTL");
	int64_t id = int64Of(*j, "ID");
	if (!id)
		return Error("etcd granted no lease: " + j->dump());
	return id;
}

Result<int64_t> Etcd::keepAlive(int64_t lease)
{
	Result<json> j = post("/v3/lease/keepalive", json{{"ID", std::to_string(lease)}});
	if (!j)
		return j.error();
	auto result = j->find("result");
	if (result == j->end())
		return Error("etcd's keep-alive answer has no result: " + j->dump());
	return int64Of(*result, "TTL");
}

Status Etcd::revoke(int64_t lease)
{
	Result<json> j = post("/v3/lease/revoke", json{{"ID", std::to_string(lease)}});
	if (!j)
		return j.error();
	return {};
}

Result<int64_t> Etcd::watch(std::string_view key, std::string_view rangeEnd, int64_t startRevision,
			    const std::function<void(const std::vector<WatchEvent> &, int64_t)> &onEvents,
			    const std::atomic<bool> &stop)
{
	json create{{"key", base64Encode(key)}, {"range_end", base64Encode(rangeEnd)},
		    {"start_revision", std::to_string(startRevision)}};
	std::string body = json{{"create_request", create}}.dump();
	int64_t compacted = 0;
	std::string failure;
	bool created = false;
	std::function<bool(std::string &)> onData = [&](std::string &buffer) {
		for (const std::string &text : takeObjects(buffer)) {
			json j = json::parse(text, nullptr, false);
			if (j.is_discarded())
				continue;
			auto result = j.find("result");
			if (result == j.end()) {
				failure = etcdMessage(j);
				return false;
			}
			if (result->value("created", false))
				created = true;
			if (result->value("canceled", false)) {
				compacted = int64Of(*result, "compact_revision");
				if (!compacted)
					failure = "etcd cancelled the watch: " + result->value("cancel_reason", std::string("no reason given"));
				return false;
			}
			std::vector<WatchEvent> events;
			if (auto list = result->find("events"); list != result->end() && list->is_array()) {
				for (const json &e : *list) {
					WatchEvent ev;
					ev.deleted = e.value("type", std::string()) == "DELETE";
					if (auto kv = e.find("kv"); kv != e.end())
						ev.kv = keyValueOf(*kv);
					events.push_back(std::move(ev));
				}
			}
			int64_t revision = headerRevision(*result);
			if (!events.empty())
				onEvents(events, revision);
		}
		return !stop.load();
	};
	std::string why;
	for (size_t tried = 0; tried < options_.endpoints.size() && !stop.load(); tried++) {
		size_t at = (current_ + tried) % options_.endpoints.size();
		std::string base = options_.endpoints[at];
		if (!base.empty() && base.back() == '/')
			base.pop_back();
		created = false;
		failure.clear();
		Result<Reply> reply = send(base + "/v3/watch", body, true, &onData, &stop);
		if (compacted)
			return compacted;
		if (stop.load())
			return int64_t{0};
		std::string what = !reply ? reply.error().message()
			: !failure.empty() ? failure
			: "the stream ended (HTTP " + std::to_string(reply->status) + ")";
		why += (why.empty() ? "" : "; ") + options_.endpoints[at] + ": " + what;
		if (created) {
			// The stream worked, then ended: the caller resumes from its revision.
			current_ = at;
			return Error("watch on " + options_.endpoints[at] + ": " + what);
		}
	}
	return Error("no etcd endpoint keeps a watch (" + why + ")");
}

} // namespace portslice::fleet
