// SPDX-License-Identifier: MIT
// IPv4 addresses, prefixes and MAC addresses as plain values (host byte order), with strict parsing.
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace portslice {

struct Ipv4 {
	uint32_t value = 0; // host byte order

	static std::optional<Ipv4> parse(std::string_view text);
	std::string str() const;
	uint32_t networkOrder() const;
	auto operator<=>(const Ipv4 &) const = default;
};

// The netmask of a prefix length, host byte order: 24 -> 0xffffff00, 0 -> 0.
constexpr uint32_t prefixMask(uint8_t length)
{
	return length == 0 ? 0 : ~uint32_t{0} << (32 - (length > 32 ? 32 : length));
}

struct Prefix {
	Ipv4 address; // network address, host bits zero
	uint8_t length = 32;

	// "100.64.1.0/24" or a bare address (a /32). Host bits set is an error.
	static std::optional<Prefix> parse(std::string_view text);
	std::string str() const;
	uint64_t size() const { return uint64_t{1} << (32 - length); }
	Ipv4 first() const { return address; }
	Ipv4 last() const { return Ipv4{address.value + static_cast<uint32_t>(size() - 1)}; }
	bool contains(Ipv4 a) const { return a.value >= first().value && a.value <= last().value; }
	auto operator<=>(const Prefix &) const = default;
};

struct Mac {
	std::array<uint8_t, 6> bytes{};

	static std::optional<Mac> parse(std::string_view text);
	std::string str() const;
	auto operator<=>(const Mac &) const = default;
};

} // namespace portslice
