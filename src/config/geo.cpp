// SPDX-License-Identifier: MIT
// The ISO 3166 lists embedded from data/iso3166.txt, read once into hash sets; the tag checks.
#include "config/geo.h"

#include <cctype>
#include <cstddef>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace portslice::config {

extern const char *const kIso3166[];
extern const size_t kIso3166Count;

namespace {

struct Iso3166 {
	std::unordered_map<std::string, std::string> names;   // DE -> Germany
	std::unordered_set<std::string> subdivisions;         // DE-BE, GB-ENG, ...
	std::unordered_map<std::string, std::string> byName;  // germany -> DE
};

std::string lower(std::string_view s)
{
	std::string out;
	for (char c : s)
		out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
	return out;
}

std::string upper(std::string_view s)
{
	std::string out;
	for (char c : s)
		out += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
	return out;
}

const Iso3166 &iso()
{
	static const Iso3166 table = [] {
		Iso3166 t;
		for (size_t i = 0; i < kIso3166Count; i++) {
			std::string_view line = kIso3166[i];
			size_t tab1 = line.find('\t'), tab2 = line.find('\t', tab1 + 1);
			std::string code(line.substr(0, tab1));
			std::string name(line.substr(tab1 + 1, tab2 - tab1 - 1));
			t.names[code] = name;
			t.byName[lower(name)] = code;
			std::string_view subs = line.substr(tab2 + 1);
			while (!subs.empty()) {
				size_t space = subs.find(' ');
				t.subdivisions.emplace(subs.substr(0, space));
				subs = space == std::string_view::npos ? std::string_view() : subs.substr(space + 1);
			}
		}
		return t;
	}();
	return table;
}

} // namespace

std::optional<std::string> checkCountry(std::string_view country)
{
	const Iso3166 &t = iso();
	if (t.names.contains(std::string(country)))
		return std::nullopt;
	std::string text = "country '" + std::string(country.substr(0, 200)) +
			   "' is not an ISO 3166-1 alpha-2 code (RFC 8805 geofeeds need one, such as DE or GB)";
	if (auto it = t.names.find(upper(country)); it != t.names.end())
		text += "; did you mean '" + it->first + "' (" + it->second + ")?";
	else if (auto byName = t.byName.find(lower(country)); byName != t.byName.end())
		text += "; did you mean '" + byName->second + "' (" + t.names.at(byName->second) + ")?";
	else if (upper(country) == "UK")
		text += "; did you mean 'GB' (United Kingdom)?";
	return text;
}

std::optional<std::string> checkRegion(std::optional<std::string_view> countryTag, std::string_view region)
{
	const Iso3166 &t = iso();
	std::string r(region);
	std::string country(countryTag.value_or(""));
	const std::string quoted = "region '" + std::string(region.substr(0, 200)) + "'";
	if (countryTag && !t.names.contains(country)) {
		// The country's own error says what is wrong; a region can only
		// be checked against a country there is.
		if (t.subdivisions.contains(r))
			return std::nullopt;
		return quoted + " is not an ISO 3166-2 code of any country (such as GB-ENG or DE-BE)";
	}
	if (t.subdivisions.contains(r) && r.starts_with(country + "-"))
		return std::nullopt;
	std::string text = quoted + " is not an ISO 3166-2 code of " +
			   (!countryTag ? std::string("the address's country (it has no 'country' tag)")
					: "country '" + country + "'") +
			   " (such as GB-ENG or DE-BE)";
	std::string guess = upper(region);
	if (!guess.starts_with(country + "-") && !country.empty())
		guess = country + "-" + guess;
	if (t.subdivisions.contains(guess) && guess != r)
		text += "; did you mean '" + guess + "'?";
	return text;
}

std::optional<std::string> checkCity(std::string_view city)
{
	for (char c : city)
		if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
			return "city '" + std::string(city.substr(0, 200)) +
			       "' holds a control character (a line break would split the geofeed's line)";
	return std::nullopt;
}

} // namespace portslice::config
