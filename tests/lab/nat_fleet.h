// SPDX-License-Identifier: MIT
// The generated fleet of docs/performance.md as TOML, shared by tests/bench/apply_bench and the nat lab tests.
#pragma once

#include <cstdint>
#include <string>

#include "common/net.h"

namespace portslice::testing {

// docs/performance.md "Generated fleets": 31 servers, N shared addresses of
// 198.18.0.0/15 (one 2048-port slice each per server), N stateless sources of
// a /28 with block 128 (one whole slice each), inside addresses in 100.64.0.0/10.
inline std::string generatedFleet(uint32_t n, uint32_t block = 128)
{
	std::string t;
	t.reserve(n * 400);
	t += "[server]\nname = \"s1\"\nuplink = \"eth0\"\n\n[defaults]\nport_range = \"1024-65535\"\nslice_size = 2048\n\n";
	t += "[[datacenters]]\nname = \"dc1\"\n\n";
	for (int s = 1; s <= 31; s++)
		t += "[[servers]]\nname = \"s" + std::to_string(s) + "\"\naddress = \"192.0.2." + std::to_string(10 + s) +
		     "\"\ndatacenter = \"dc1\"\n\n";
	std::string slices = "{ ";
	for (int s = 1; s <= 31; s++)
		slices += (s > 1 ? ", s" : "s") + std::to_string(s) + " = " + std::to_string(s - 1);
	slices += " }";
	for (uint32_t i = 0; i < n; i++) {
		Ipv4 a{(198u << 24 | 18u << 16) + i};
		t += "[[addresses]]\naddress = \"" + a.str() + "\"\ndatacenter = \"dc1\"\ntags = { id = \"a" +
		     std::to_string(i) + "\" }\nslices = " + slices + "\n\n";
	}
	for (uint32_t i = 0; i < n; i++) {
		Ipv4 p{(100u << 24 | 64u << 16) + i * 16};
		t += "[[sources]]\nname = \"src" + std::to_string(i) + "\"\nmatch = { saddr = \"" + p.str() +
		     "/28\" }\nwant = { id = \"a" + std::to_string(i) + "\" }\nnat = \"stateless\"\nblock = " +
		     std::to_string(block) + "\n\n";
	}
	return t;
}

} // namespace portslice::testing
