// SPDX-License-Identifier: MIT
#include "common/quote.h"

namespace portslice {

std::string quoteInput(std::string_view input, char quote)
{
	std::string out = quote ? std::string(1, quote) : std::string();
	size_t used = 0; // characters between the quotes
	size_t i = 0;
	for (; i < input.size(); i++) {
		auto c = static_cast<unsigned char>(input[i]);
		std::string piece;
		if (!quote && (c == '\n' || c == '\t'))
			piece = static_cast<char>(c); // a message's own lines
		else switch (c) {
		case '\n':
			piece = "\\n";
			break;
		case '\r':
			piece = "\\r";
			break;
		case '\t':
			piece = "\\t";
			break;
		case '\\':
			piece = "\\\\";
			break;
		default:
			if (c < 0x20 || c == 0x7f) {
				static const char hex[] = "0123456789abcdef";
				piece = std::string("\\x") + hex[c >> 4] + hex[c & 15];
			} else if (c >= 0x80) {
				// A UTF-8 sequence goes whole or not at all.
				size_t n = 1;
				while (i + n < input.size() && (static_cast<unsigned char>(input[i + n]) & 0xc0) == 0x80 &&
				       n < 4)
					n++;
				piece.assign(input.substr(i, n));
			} else if (quote && c == static_cast<unsigned char>(quote)) {
				piece = std::string("\\") + quote;
			} else {
				piece = static_cast<char>(c);
			}
		}
		if (used + piece.size() > kQuoteLimit)
			break;
		out += piece;
		used += piece.size();
		i += piece.size() > 1 && c >= 0x80 ? piece.size() - 1 : 0;
	}
	if (quote)
		out += quote;
	if (i < input.size())
		out += "... (" + std::to_string(input.size()) + " bytes)";
	return out;
}

} // namespace portslice
