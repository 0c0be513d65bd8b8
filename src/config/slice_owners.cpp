// SPDX-License-Identifier: MIT
// SliceOwners of slice_owners.h: binary search over the slices, copy-on-write of the name table.
#include "config/slice_owners.h"

#include <algorithm>
#include <stdexcept>

namespace portslice::config {

SliceOwners::SliceOwners(std::initializer_list<std::pair<uint32_t, std::string_view>> owners)
{
	for (const auto &[slice, server] : owners)
		assign(slice, server);
}

std::vector<SliceOwners::Entry>::iterator SliceOwners::lowerBound(uint32_t slice)
{
	// The loader adds slices in ascending order: try the end first.
	if (entries_.empty() || entries_.back().slice < slice)
		return entries_.end();
	return std::lower_bound(entries_.begin(), entries_.end(), slice,
				[](const Entry &e, uint32_t s) { return e.slice < s; });
}

SliceOwners::const_iterator SliceOwners::find(uint32_t slice) const
{
	auto it = const_cast<SliceOwners *>(this)->lowerBound(slice);
	if (it == entries_.end() || it->slice != slice)
		return end();
	return { this, &*it };
}

const std::string &SliceOwners::at(uint32_t slice) const
{
	auto it = find(slice);
	if (it == end())
		throw std::out_of_range("slice " + std::to_string(slice) + " has no owner");
	return it->second;
}

uint32_t SliceOwners::nameIndex(std::string_view server)
{
	if (names_) {
		const Names &names = *names_;
		if (lastName_ < names.size() && names[lastName_] == server)
			return lastName_;
		for (uint32_t i = 0; i < names.size(); i++)
			if (names[i] == server)
				return lastName_ = i;
	}
	// New to the table, which others may share: this map gets its own.
	auto copy = names_ ? std::make_shared<Names>(*names_) : std::make_shared<Names>();
	copy->emplace_back(server);
	names_ = std::move(copy);
	return lastName_ = static_cast<uint32_t>(names_->size() - 1);
}

std::pair<SliceOwners::const_iterator, bool> SliceOwners::emplace(uint32_t slice, std::string_view server)
{
	auto it = lowerBound(slice);
	if (it != entries_.end() && it->slice == slice)
		return { const_iterator{ this, &*it }, false };
	uint32_t name = nameIndex(server);
	it = entries_.insert(it, Entry{ slice, name });
	return { const_iterator{ this, &*it }, true };
}

void SliceOwners::assign(uint32_t slice, std::string_view server)
{
	uint32_t name = nameIndex(server);
	auto it = lowerBound(slice);
	if (it != entries_.end() && it->slice == slice)
		it->name = name;
	else
		entries_.insert(it, Entry{ slice, name });
}

SliceOwners::Ref SliceOwners::operator[](uint32_t slice)
{
	emplace(slice, std::string_view{});
	return Ref{ *this, slice };
}

size_t SliceOwners::erase(uint32_t slice)
{
	auto it = lowerBound(slice);
	if (it == entries_.end() || it->slice != slice)
		return 0;
	entries_.erase(it);
	return 1;
}

bool SliceOwners::operator==(const SliceOwners &other) const
{
	return size() == other.size() && std::equal(begin(), end(), other.begin(), [](const value_type &a, const value_type &b) {
		       return a.first == b.first && a.second == b.second;
	       });
}

} // namespace portslice::config
