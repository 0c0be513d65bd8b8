// SPDX-License-Identifier: MIT
// Geofeed tags (RFC 8805): country an ISO 3166-1 alpha-2 code, region an ISO 3166-2 code of it, city plain text.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace portslice::config {

// nullopt when `country` is an ISO 3166-1 alpha-2 code (data/iso3166.txt);
// otherwise what is wrong, with the code meant when it can tell.
std::optional<std::string> checkCountry(std::string_view country);
// nullopt when `region` is an ISO 3166-2 code of the country tag (nullopt: the
// address has none). With a country tag that is no country (checkCountry's
// error), only whether `region` is a code of any country.
std::optional<std::string> checkRegion(std::optional<std::string_view> country, std::string_view region);
// nullopt when `city` is text a geofeed line can hold (no control characters).
std::optional<std::string> checkCity(std::string_view city);

} // namespace portslice::config
