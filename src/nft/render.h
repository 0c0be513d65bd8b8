// SPDX-License-Identifier: MIT
// The table as nft text: `portslicectl dump`, equal to `nft -s list table inet portslice` after apply.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "nft/model.h"

namespace portslice::nft {

// The text forms nft prints: "ip saddr", "typeof ip saddr . th sport",
// "ct zone set ip saddr & 255.255.255.0 map @zone_saddr_24".
const char *selectorText(Selector s);
std::string declaration(const Set &set);
std::string formatRule(const Rule &rule);
std::string formatElement(const Set &set, const Element &element);
std::string formatKey(const Element &element); // the key alone: "198.51.100.1 . 1024-3071"
// With `plan`, the port sets that `model` leaves empty (buildModel(…, false))
// are built from it one at a time, so a large table is never held whole, in
// the order a full replace adds them. Sets nft lists sorted are sorted here;
// a concatenated interval set, which nft lists in the order its elements
// were added, is listed in the model's order (see NftApplier::orderAsListed).
// With `order`, each concatenated interval set's elements are put in the
// order it gives before they are listed. `expectedBytes` is reserved up
// front: a text of 17 MB that grows by doubling holds 16 MB more while it
// is copied.
using ElementOrder = std::function<void(const Set &set, std::vector<Element> &elements)>;
std::string render(const TableModel &model, const plan::Plan *plan = nullptr, const ElementOrder &order = {},
		   size_t expectedBytes = 0);

} // namespace portslice::nft
