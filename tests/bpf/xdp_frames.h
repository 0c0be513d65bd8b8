// SPDX-License-Identifier: MIT
// Frame builders for the XDP tests and benchmark: Ethernet, IPv4 (with options), TCP, UDP, ICMP, IPIP, with real checksums.
#pragma once

#include <cstdint>
#include <vector>

#include "common/net.h"

namespace portslice::xdptest {

using Bytes = std::vector<uint8_t>;

inline constexpr uint16_t kEthIpv4 = 0x0800;
inline constexpr uint16_t kEthArp = 0x0806;
inline constexpr uint16_t kEthIpv6 = 0x86dd;
inline constexpr uint8_t kProtoIcmp = 1;
inline constexpr uint8_t kProtoIpip = 4;
inline constexpr uint8_t kProtoTcp = 6;
inline constexpr uint8_t kProtoUdp = 17;
inline constexpr uint16_t kDf = 0x4000;
inline constexpr uint16_t kMf = 0x2000;

inline void put16(Bytes &b, uint16_t v)
{
	b.push_back(static_cast<uint8_t>(v >> 8));
	b.push_back(static_cast<uint8_t>(v));
}

inline void put32(Bytes &b, uint32_t v)
{
	put16(b, static_cast<uint16_t>(v >> 16));
	put16(b, static_cast<uint16_t>(v));
}

// RFC 1071 one's-complement sum over bytes (big-endian words).
inline uint16_t checksum(const uint8_t *p, size_t n, uint32_t sum = 0)
{
	for (size_t i = 0; i + 1 < n; i += 2)
		sum += static_cast<uint32_t>(p[i] << 8 | p[i + 1]);
	if (n & 1)
		sum += static_cast<uint32_t>(p[n - 1] << 8);
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return static_cast<uint16_t>(~sum);
}

inline Bytes ethernet(const Mac &dst, const Mac &src, uint16_t type, const Bytes &payload)
{
	Bytes b(dst.bytes.begin(), dst.bytes.end());
	b.insert(b.end(), src.bytes.begin(), src.bytes.end());
	put16(b, type);
	b.insert(b.end(), payload.begin(), payload.end());
	return b;
}

struct IpOptions {
	uint8_t tos = 0;
	uint16_t id = 0x1234;
	uint16_t fragOff = kDf; // flags and offset, host order
	uint8_t ttl = 61;
	Bytes options;          // multiple of 4 bytes
};

inline Bytes ipv4(Ipv4 src, Ipv4 dst, uint8_t proto, const Bytes &payload, const IpOptions &o = {})
{
	Bytes b;
	size_t hlen = 20 + o.options.size();
	b.push_back(static_cast<uint8_t>(0x40 | (hlen / 4)));
	b.push_back(o.tos);
	put16(b, static_cast<uint16_t>(hlen + payload.size()));
	put16(b, o.id);
	put16(b, o.fragOff);
	b.push_back(o.ttl);
	b.push_back(proto);
	put16(b, 0);
	put32(b, src.value);
	put32(b, dst.value);
	b.insert(b.end(), o.options.begin(), o.options.end());
	uint16_t c = checksum(b.data(), hlen);
	b[10] = static_cast<uint8_t>(c >> 8);
	b[11] = static_cast<uint8_t>(c);
	b.insert(b.end(), payload.begin(), payload.end());
	return b;
}

// L4 checksums are left zero: the forwarder never reads or changes them.
inline Bytes tcp(uint16_t sport, uint16_t dport, uint8_t flags = 0x12, size_t payload = 0)
{
	Bytes b;
	put16(b, sport);
	put16(b, dport);
	put32(b, 1000);
	put32(b, 2000);
	b.push_back(0x50);
	b.push_back(flags);
	put16(b, 65535);
	put16(b, 0);
	put16(b, 0);
	b.resize(b.size() + payload, 0xab);
	return b;
}

inline Bytes udp(uint16_t sport, uint16_t dport, size_t payload = 8)
{
	Bytes b;
	put16(b, sport);
	put16(b, dport);
	put16(b, static_cast<uint16_t>(8 + payload));
	put16(b, 0);
	b.resize(b.size() + payload, 0xcd);
	return b;
}

inline Bytes icmp(uint8_t type, uint8_t code, uint32_t rest, const Bytes &body)
{
	Bytes b;
	b.push_back(type);
	b.push_back(code);
	put16(b, 0);
	put32(b, rest);
	b.insert(b.end(), body.begin(), body.end());
	uint16_t c = checksum(b.data(), b.size());
	b[2] = static_cast<uint8_t>(c >> 8);
	b[3] = static_cast<uint8_t>(c);
	return b;
}

// RFC 792: an ICMP error quotes the IP header and the first 8 bytes after it.
inline Bytes quote(const Bytes &ipPacket)
{
	size_t hlen = (ipPacket[0] & 0xf) * 4u;
	return Bytes(ipPacket.begin(), ipPacket.begin() + static_cast<long>(std::min(ipPacket.size(), hlen + 8)));
}

// What the forwarder must transmit for `frame`: a new Ethernet header and an
// outer IPv4 header (tos, id and DF of the inner packet, TTL 64, IPIP),
// computed here independently of the BPF code.
// `ttl`: the outer TTL, FWD_OUTER_TTL (64) or, sent on a second time, FWD_OUTER_TTL_LAST (63).
inline Bytes encapsulated(const Bytes &frame, const Mac &dst, const Mac &src, Ipv4 outerSrc, Ipv4 outerDst,
			  uint8_t ttl = 64)
{
	Bytes inner(frame.begin() + 14, frame.end());
	uint16_t innerLen = static_cast<uint16_t>(inner[2] << 8 | inner[3]);
	IpOptions o;
	o.tos = inner[1];
	o.id = static_cast<uint16_t>(inner[4] << 8 | inner[5]);
	o.fragOff = static_cast<uint16_t>((inner[6] << 8 | inner[7]) & kDf);
	o.ttl = ttl;
	Bytes outer = ipv4(outerSrc, outerDst, kProtoIpip, inner, o);
	// The outer length counts the inner packet's own length, not trailing padding.
	outer[2] = static_cast<uint8_t>((innerLen + 20) >> 8);
	outer[3] = static_cast<uint8_t>(innerLen + 20);
	outer[10] = outer[11] = 0;
	uint16_t c = checksum(outer.data(), 20);
	outer[10] = static_cast<uint8_t>(c >> 8);
	outer[11] = static_cast<uint8_t>(c);
	return ethernet(dst, src, kEthIpv4, outer);
}

inline Mac mac(const char *text)
{
	return *Mac::parse(text);
}

inline Ipv4 ip(const char *text)
{
	return *Ipv4::parse(text);
}

} // namespace portslice::xdptest
