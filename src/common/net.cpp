// SPDX-License-Identifier: MIT
// Strict parsers and formatters for the address types of net.h.
#include "common/net.h"

#include <arpa/inet.h>
#include <charconv>
#include <cstdio>

namespace portslice {

namespace {

std::optional<uint32_t> parseNumber(std::string_view text, uint32_t max, int base = 10)
{
	if (text.empty() || text.size() > 10)
		return std::nullopt;
	uint32_t v = 0;
	auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v, base);
	if (ec != std::errc() || end != text.data() + text.size() || v > max)
		return std::nullopt;
	return v;
}

} // namespace

std::optional<Ipv4> Ipv4::parse(std::string_view text)
{
	uint32_t value = 0;
	for (int i = 0; i < 4; i++) {
		size_t dot = text.find('.');
		std::string_view part = i < 3 ? text.substr(0, dot) : text;
		if ((i < 3 && dot == std::string_view::npos) || part.empty() || part.size() > 3)
			return std::nullopt;
		// No leading zeros: "010" is octal to some tools and decimal to others.
		if (part.size() > 1 && part[0] == '0')
			return std::nullopt;
		auto octet = parseNumber(part, 255);
		if (!octet)
			return std::nullopt;
		value = value << 8 | *octet;
		if (i < 3)
			text.remove_prefix(dot + 1);
	}
	return Ipv4{value};
}

std::string Ipv4::str() const
{
	char buf[16];
	std::snprintf(buf, sizeof(buf), "%u.%u.%u.%u", value >> 24, (value >> 16) & 0xff,
		      (value >> 8) & 0xff, value & 0xff);
	return buf;
}

uint32_t Ipv4::networkOrder() const
{
	return htonl(value);
}

std::optional<Prefix> Prefix::parse(std::string_view text)
{
	size_t slash = text.find('/');
	auto address = Ipv4::parse(text.substr(0, slash));
	if (!address)
		return std::nullopt;
	uint32_t length = 32;
	if (slash != std::string_view::npos) {
		auto len = parseNumber(text.substr(slash + 1), 32);
		if (!len)
			return std::nullopt;
		length = *len;
	}
	uint32_t mask = prefixMask(static_cast<uint8_t>(length));
	if ((address->value & ~mask) != 0)
		return std::nullopt;
	return Prefix{*address, static_cast<uint8_t>(length)};
}

std::string Prefix::str() const
{
	return address.str() + "/" + std::to_string(length);
}

std::optional<Mac> Mac::parse(std::string_view text)
{
	Mac mac;
	if (text.size() != 17)
		return std::nullopt;
	for (int i = 0; i < 6; i++) {
		if (i < 5 && text[i * 3 + 2] != ':')
			return std::nullopt;
		auto byte = parseNumber(text.substr(i * 3, 2), 255, 16);
		if (!byte)
			return std::nullopt;
		mac.bytes[i] = static_cast<uint8_t>(*byte);
	}
	return mac;
}

std::string Mac::str() const
{
	char buf[18];
	std::snprintf(buf, sizeof(buf), "%02x:%02x:%02x:%02x:%02x:%02x", bytes[0], bytes[1],
		      bytes[2], bytes[3], bytes[4], bytes[5]);
	return buf;
}

} // namespace portslice
