// SPDX-License-Identifier: MIT
// The wire encoding of the model's keys, elements and set user data: pure functions, the bytes nft itself sends.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "nft/model.h"

namespace portslice::nft {

inline constexpr uint32_t kHostOrder = 1;
inline constexpr uint32_t kBigEndian = 2;

// How nft loads and types one selector.
struct SelectorInfo {
	uint32_t type;  // nft datatype id (ipv4_addr 7, inet_service 13, mark 19, uid 24, ifname 41, integer 4)
	uint32_t len;   // bytes, unpadded
	uint32_t order; // kHostOrder or kBigEndian
	// typeof user data: nft expression type (payload 7, meta 9, ct 12) and its two fields.
	uint32_t exprType;
	uint32_t u0;
	std::optional<uint32_t> u1;
};
SelectorInfo selectorInfo(Selector s);

inline uint32_t pad4(uint32_t n) { return (n + 3) & ~3u; }

// A concatenation with an address carries its host-order integers in network
// order (nft inserts hton on the rule side, and stores elements likewise).
bool convertsToBigEndian(const std::vector<Selector> &parts);
uint32_t concatType(const std::vector<Selector> &parts); // nft's TYPE_BITS concatenation
uint32_t concatLen(const std::vector<Selector> &parts);

// nftnl_udata TLVs: u8 type, u8 length, value.
class Udata {
public:
	void u32(uint8_t type, uint32_t v);
	void nest(uint8_t type, const Udata &inner);
	void str(uint8_t type, const std::string &s);
	const std::string &bytes() const { return buf_; }

private:
	std::string buf_;
};

enum UdataSet : uint8_t {
	kUdKeyByteorder = 0,
	kUdDataByteorder = 1,
	kUdKeyTypeof = 3,
	kUdDataTypeof = 4,
	kUdDataInterval = 6,
};

// The user data nft stores with a set: byte orders, typeof expressions.
std::string setUserData(const Set &set);

// One element as the kernel takes it (NFTA_LIST_ELEM).
struct WireElem {
	uint32_t flags = 0; // NFT_SET_ELEM_INTERVAL_END
	std::string key;
	std::string keyEnd;
	std::string data;
	std::string objref;
	std::string chain; // a verdict map's element: jump to this chain
	bool gotoChain = false; // ... or go to it

	bool operator<(const WireElem &o) const;
	bool operator==(const WireElem &o) const;
	size_t size() const; // upper bound of its netlink attributes
};

// The elements of a set as nft sends them. A single-field interval set (the
// kernel's rbtree) takes each range as a start element and an end element at
// hi + 1, plus a closing end element at 0 when no range starts there.
// `forDelete`: keys only. `head`: `elements` begin the set (false: they are a
// later piece of it, which takes no closing end element).
std::vector<WireElem> wireElements(const Set &set, const std::vector<Element> &elements, bool forDelete,
				   bool head = true);

// The kernel elements to delete (keys) and to add so that a set holding
// `before`'s elements holds `after`'s (same declaration): a changed value is
// deleted and added again.
struct WireDelta {
	std::vector<WireElem> del, add;
};
WireDelta elementDelta(const Set &before, const Set &after);

bool sameElements(const std::vector<Element> &a, const std::vector<Element> &b);

// The reverse of wireElements: the elements of `set` that the kernel's
// `wire` elements hold (a single-field interval set's start and end elements
// paired into ranges). An element whose bytes do not fit the declaration is
// skipped and counted into *malformed.
std::vector<Element> decodeElements(const Set &set, const std::vector<WireElem> &wire, size_t *malformed);

} // namespace portslice::nft
