// SPDX-License-Identifier: MIT
// The table as nft text: `portslicectl dump`, equal to `nft -s list table inet portslice` after apply.
#pragma once

#include <string>
#include <vector>

#include "nft/model.h"

namespace portslice::nft {

struct Chain {
	std::string name;
	std::string hook;     // "" for a regular chain
	std::string type;     // "filter" or "nat"
	std::string priority; // as nft prints it: "raw", "srcnat + 10"
	int priorityValue = 0;
	std::vector<std::string> rules; // each as nft prints it
};

// The fixed chains and rules of a model; they depend only on the uplink and
// the shapes in use.
std::vector<Chain> chains(const TableModel &model);

std::string formatElement(const Set &set, const Element &element);
// With `plan`, the port sets that `model` leaves empty (buildModel(…, false))
// are built from it one at a time, so a large table is never held whole.
std::string render(const TableModel &model, const plan::Plan *plan = nullptr);

} // namespace portslice::nft
