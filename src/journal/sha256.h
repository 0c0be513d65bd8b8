// SPDX-License-Identifier: MIT
// SHA-256 (FIPS 180-4) of a byte string, as 64 lower-case hex digits: the name of a kept config file.
#pragma once

#include <string>
#include <string_view>

namespace portslice::journal {

std::string sha256Hex(std::string_view data);

} // namespace portslice::journal
