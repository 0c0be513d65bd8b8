// SPDX-License-Identifier: MIT
// A small streaming JSON writer: deterministic output for `plan --json`, stats and D-Bus replies.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace portslice {

class JsonWriter {
public:
	JsonWriter &beginObject();
	JsonWriter &endObject();
	JsonWriter &beginArray();
	JsonWriter &endArray();
	JsonWriter &key(std::string_view name);
	JsonWriter &value(std::string_view text);
	JsonWriter &value(const char *text) { return value(std::string_view(text)); }
	JsonWriter &value(uint64_t number);
	JsonWriter &value(int64_t number);
	JsonWriter &value(uint32_t number) { return value(uint64_t{number}); }
	JsonWriter &value(int32_t number) { return value(int64_t{number}); }
	JsonWriter &value(uint16_t number) { return value(uint64_t{number}); }
	JsonWriter &value(bool flag);
	JsonWriter &null();

	const std::string &str() const { return out_; }
	// The text written since the last take(), forgotten here; the nesting
	// is kept, so a long document can be consumed in pieces.
	std::string take()
	{
		std::string out = std::move(out_);
		out_.clear();
		return out;
	}

private:
	void separate();
	void indent();

	std::string out_;
	std::vector<bool> first_; // per open container: no element yet
	bool afterKey_ = false;
};

std::string jsonEscape(std::string_view text);

} // namespace portslice
