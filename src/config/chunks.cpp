// SPDX-License-Identifier: MIT
// The header scanner of chunks.h: a lexer for just enough of TOML to know where a line starts a new table.
#include "config/chunks.h"

#include <map>

namespace portslice::config {

namespace {

bool isBare(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

class Scanner {
public:
	explicit Scanner(std::string_view text) : t_(text) {}

	std::optional<std::vector<Header>> run()
	{
		std::vector<Header> headers;
		int depth = 0; // open [ and { of values
		bool lineStart = true;
		while (i_ < t_.size()) {
			if (lineStart) {
				lineStart = false;
				size_t start = i_;
				skipBlanks();
				if (depth == 0 && i_ < t_.size() && t_[i_] == '[') {
					auto h = header(start);
					if (!h)
						return std::nullopt;
					headers.push_back(std::move(*h));
					lineStart = true; // header() stopped after the line's newline
				}
				continue;
			}
			char c = t_[i_];
			switch (c) {
			case '\n':
				i_++;
				line_++;
				lineStart = true;
				break;
			case '#':
				while (i_ < t_.size() && t_[i_] != '\n')
					i_++;
				break;
			case '"':
				if (t_.substr(i_, 3) == "\"\"\"")
					multiLine('"', true);
				else
					singleLine('"', true);
				break;
			case '\'':
				if (t_.substr(i_, 3) == "'''")
					multiLine('\'', false);
				else
					singleLine('\'', false);
				break;
			case '[':
			case '{':
				depth++;
				i_++;
				break;
			case ']':
			case '}':
				// A stray closer: toml++ will reject the text, and this
				// scanner no longer knows where values end.
				if (depth == 0)
					return std::nullopt;
				depth--;
				i_++;
				break;
			default:
				i_++;
			}
		}
		return headers;
	}

private:
	void skipBlanks()
	{
		while (i_ < t_.size() && (t_[i_] == ' ' || t_[i_] == '\t'))
			i_++;
	}

	// "..." or '...': ends at its quote or, unterminated, before the newline.
	void singleLine(char quote, bool escapes)
	{
		i_++;
		while (i_ < t_.size() && t_[i_] != '\n') {
			if (escapes && t_[i_] == '\\' && i_ + 1 < t_.size() && t_[i_ + 1] != '\n') {
				i_ += 2;
				continue;
			}
			if (t_[i_++] == quote)
				return;
		}
	}

	// """...""" or '''...''': up to two more quotes right before the closing
	// three belong to the string ("""a""""" is `a""`).
	void multiLine(char quote, bool escapes)
	{
		i_ += 3;
		while (i_ < t_.size()) {
			char c = t_[i_];
			if (c == '\n') {
				line_++;
				i_++;
			} else if (escapes && c == '\\') {
				i_++; // the escaped character is taken next round if it is a newline
				if (i_ < t_.size() && t_[i_] != '\n')
					i_++;
			} else if (c == quote && t_.substr(i_, 3) == std::string(3, quote)) {
				i_ += 3;
				for (int extra = 0; extra < 2 && i_ < t_.size() && t_[i_] == quote; extra++)
					i_++;
				return;
			} else {
				i_++;
			}
		}
	}

	// One key of a header: bare, "basic" without escapes, or 'literal'.
	std::optional<std::string> key()
	{
		if (i_ >= t_.size())
			return std::nullopt;
		char c = t_[i_];
		if (c == '"' || c == '\'') {
			size_t end = i_ + 1;
			while (end < t_.size() && t_[end] != c && t_[end] != '\n' && !(c == '"' && t_[end] == '\\'))
				end++;
			if (end >= t_.size() || t_[end] != c)
				return std::nullopt;
			std::string k(t_.substr(i_ + 1, end - i_ - 1));
			i_ = end + 1;
			return k;
		}
		size_t start = i_;
		while (i_ < t_.size() && isBare(t_[i_]))
			i_++;
		if (i_ == start)
			return std::nullopt;
		return std::string(t_.substr(start, i_ - start));
	}

	// At the '[' of a header; on success stops after its line.
	std::optional<Header> header(size_t lineOffset)
	{
		Header h;
		h.offset = lineOffset;
		h.line = line_;
		i_++;
		if (i_ < t_.size() && t_[i_] == '[') {
			h.array = true;
			i_++;
		}
		for (int n = 0;; n++) {
			skipBlanks();
			auto k = key();
			if (!k)
				return std::nullopt;
			if (n == 0)
				h.key = std::move(*k);
			else
				h.dotted = true;
			skipBlanks();
			if (i_ < t_.size() && t_[i_] == '.') {
				i_++;
				continue;
			}
			break;
		}
		for (int closers = h.array ? 2 : 1; closers > 0; closers--) {
			if (i_ >= t_.size() || t_[i_] != ']')
				return std::nullopt;
			i_++;
		}
		skipBlanks();
		if (i_ < t_.size() && t_[i_] == '#')
			while (i_ < t_.size() && t_[i_] != '\n')
				i_++;
		if (i_ < t_.size() && t_[i_] == '\r')
			i_++;
		if (i_ < t_.size()) {
			if (t_[i_] != '\n')
				return std::nullopt;
			i_++;
			line_++;
		}
		return h;
	}

	std::string_view t_;
	size_t i_ = 0;
	uint32_t line_ = 1;
};

} // namespace

std::optional<std::vector<Header>> scanHeaders(std::string_view text)
{
	return Scanner(text).run();
}

std::optional<std::vector<Chunk>> splitChunks(std::string_view text, size_t chunkBytes)
{
	if (text.size() <= chunkBytes)
		return std::vector<Chunk>{ Chunk{ text, 1, {} } };
	auto headers = scanHeaders(text);
	if (!headers)
		return std::nullopt;
	// Per top-level key: defined by [[key]] only (true), or once by [key].
	std::map<std::string, bool, std::less<>> kinds;
	std::vector<Chunk> chunks{ Chunk{ text, 1, {} } };
	size_t chunkStart = 0;
	const std::string *section = nullptr; // the key of the last top-level header
	for (const Header &h : *headers) {
		if (h.dotted) {
			if (!section || *section != h.key)
				return std::nullopt;
			continue;
		}
		auto [it, inserted] = kinds.emplace(h.key, h.array);
		if (!inserted && !(it->second && h.array))
			return std::nullopt; // [a] twice, or [a] and [[a]]: toml++ says which error
		section = &it->first;
		if (h.offset - chunkStart >= chunkBytes) {
			chunks.back().text = text.substr(chunkStart, h.offset - chunkStart);
			chunks.push_back(Chunk{ text.substr(h.offset), h.line, {} });
			chunkStart = h.offset;
		}
		std::vector<std::string> &keys = chunks.back().keys;
		if (keys.empty() || keys.back() != h.key)
			keys.push_back(h.key);
	}
	return chunks;
}

} // namespace portslice::config
