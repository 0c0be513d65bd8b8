// SPDX-License-Identifier: MIT
// Caller input as an error message quotes it, the same way in every program and on the bus.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace portslice {

// In quotes (double by default), at most kQuoteLimit characters between them
// (a longer input is cut, "..." and its length in bytes follow the closing
// quote), control characters, the quote and backslashes escaped (\n, \x1b),
// so that no input can forge a log line or fill a journal or a terminal.
// The contract: "Error messages quote the caller's input at most 200
// characters long" — command-line arguments and config file values included.
// quote '\0': no quotes, for a text that is all input (a parser's message).
inline constexpr size_t kQuoteLimit = 200;
std::string quoteInput(std::string_view input, char quote = '"');

} // namespace portslice
