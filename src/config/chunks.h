// SPDX-License-Identifier: MIT
// Cutting a TOML text at its top-level table headers, so that the loader parses a big fleet a piece at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace portslice::config {

// A table header (`[a]`, `[[a]]`, `[a.b]`...) that stands at the start of a
// line outside any string, array or inline table.
struct Header {
	size_t offset = 0;  // of the start of its line (before any indentation)
	uint32_t line = 0;  // counting from 1
	std::string key;    // the first key of the header, unquoted
	bool array = false; // [[...]]
	bool dotted = false; // more than one key: [a.b]
};

// Every table header of `text` in file order. nullopt when the scanner cannot
// be sure of them (a header it cannot read, such as one with an escape in a
// quoted key, or a closing bracket with nothing open): the caller then parses
// the text as one piece and lets toml++ judge it.
std::optional<std::vector<Header>> scanHeaders(std::string_view text);

struct Chunk {
	std::string_view text;
	uint32_t firstLine = 1; // of `text` in the whole file
	// The top-level keys its headers define (before the first header of the
	// first chunk, the text may define others: see LoadResult of config.cpp).
	std::vector<std::string> keys;
};

// Cut `text` into chunks of at least `chunkBytes` (except the last), each
// beginning at a header of a top-level key (not a dotted one), such that
// parsing the chunks one by one means what parsing the whole text means:
// every key but an array of tables `[[a]]` is defined in one chunk only, and
// the dotted headers `[a.b]` follow the `[a]` or `[[a]]` they extend within
// their chunk. nullopt when that cannot be guaranteed; one chunk when the text
// is small.
std::optional<std::vector<Chunk>> splitChunks(std::string_view text, size_t chunkBytes);

} // namespace portslice::config
