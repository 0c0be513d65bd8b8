// SPDX-License-Identifier: MIT
// JsonWriter: two-space indented JSON, keys in the order the caller writes them.
#include "common/json.h"

#include <cstdio>

namespace portslice {

std::string jsonEscape(std::string_view text)
{
	std::string out;
	out.reserve(text.size() + 2);
	for (char c : text) {
		switch (c) {
		case '"': out += "\\\""; break;
		case '\\': out += "\\\\"; break;
		case '\n': out += "\\n"; break;
		case '\t': out += "\\t"; break;
		case '\r': out += "\\r"; break;
		default:
			if (static_cast<unsigned char>(c) < 0x20) {
				char buf[8];
				std::snprintf(buf, sizeof(buf), "\\u%04x", c);
				out += buf;
			} else {
				out += c;
			}
		}
	}
	return out;
}

void JsonWriter::indent()
{
	out_ += '\n';
	out_.append(first_.size() * 2, ' ');
}

void JsonWriter::separate()
{
	if (afterKey_) {
		afterKey_ = false;
		return;
	}
	if (first_.empty())
		return;
	if (!first_.back())
		out_ += ',';
	first_.back() = false;
	indent();
}

JsonWriter &JsonWriter::beginObject()
{
	separate();
	out_ += '{';
	first_.push_back(true);
	return *this;
}

JsonWriter &JsonWriter::endObject()
{
	bool empty = first_.back();
	first_.pop_back();
	if (!empty)
		indent();
	out_ += '}';
	if (first_.empty())
		out_ += '\n';
	return *this;
}

JsonWriter &JsonWriter::beginArray()
{
	separate();
	out_ += '[';
	first_.push_back(true);
	return *this;
}

JsonWriter &JsonWriter::endArray()
{
	bool empty = first_.back();
	first_.pop_back();
	if (!empty)
		indent();
	out_ += ']';
	if (first_.empty())
		out_ += '\n';
	return *this;
}

JsonWriter &JsonWriter::key(std::string_view name)
{
	separate();
	out_ += '"';
	out_ += jsonEscape(name);
	out_ += "\": ";
	afterKey_ = true;
	return *this;
}

JsonWriter &JsonWriter::value(std::string_view text)
{
	separate();
	out_ += '"';
	out_ += jsonEscape(text);
	out_ += '"';
	return *this;
}

JsonWriter &JsonWriter::value(uint64_t number)
{
	separate();
	out_ += std::to_string(number);
	return *this;
}

JsonWriter &JsonWriter::value(int64_t number)
{
	separate();
	out_ += std::to_string(number);
	return *this;
}

JsonWriter &JsonWriter::value(bool flag)
{
	separate();
	out_ += flag ? "true" : "false";
	return *this;
}

JsonWriter &JsonWriter::null()
{
	separate();
	out_ += "null";
	return *this;
}

} // namespace portslice
