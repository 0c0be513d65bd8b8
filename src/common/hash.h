// SPDX-License-Identifier: MIT
// FNV-1a, the one hash of the project: conntrack zones (32 bits; they must never renumber), plan hashes and object hashes (64 bits).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace portslice {

// Fed piece by piece; equal bytes give equal values on every machine.
template<class T, T Basis, T Prime>
class Fnv1a {
public:
	constexpr void add(const void *data, size_t size)
	{
		const auto *p = static_cast<const uint8_t *>(data);
		for (size_t i = 0; i < size; i++)
			h_ = (h_ ^ p[i]) * Prime;
	}
	constexpr void add(std::string_view s)
	{
		for (char c : s)
			h_ = (h_ ^ static_cast<uint8_t>(c)) * Prime;
	}
	constexpr T value() const { return h_; }

private:
	T h_ = Basis;
};

using Fnv1a32 = Fnv1a<uint32_t, 2166136261u, 16777619u>;
using Fnv1a64 = Fnv1a<uint64_t, 14695981039346656037ull, 1099511628211ull>;

constexpr uint32_t fnv1a32(std::string_view s)
{
	Fnv1a32 h;
	h.add(s);
	return h.value();
}

constexpr uint64_t fnv1a64(std::string_view s)
{
	Fnv1a64 h;
	h.add(s);
	return h.value();
}

} // namespace portslice
