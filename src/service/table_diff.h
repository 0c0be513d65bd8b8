// SPDX-License-Identifier: MIT
// Two listings of table inet portslice (`nft -s list table` syntax) compared object by object and element by element.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace portslice::service {

// One line per difference, naming the object and the element or statement:
// "set my_ports: element 198.51.100.1 . 1024-3071 missing from the kernel".
// Element order does not count (the kernel lists a delta's elements its own
// way); the order of a chain's rules does. Empty when the tables are equal.
// `elements` false: the objects and their statements only (the caller
// compares the elements itself).
std::vector<std::string> compareTables(std::string_view plan, std::string_view live, bool elements = true);

} // namespace portslice::service
