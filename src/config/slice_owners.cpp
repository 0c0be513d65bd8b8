// SPDX-License-Identifier: MIT
// SliceOwners of slice_owners.h: binary search over the slices, copy-on-write of the slices and of the name table.
#include "config/slice_owners.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>

namespace portslice::config {

SliceOwners::SliceOwners(std::initializer_list<std::pair<uint32_t, std::string_view>> owners)
{
	for (const auto &[slice, server] : owners)
		assign(slice, server);
}

const std::vector<SliceOwners::Entry> &SliceOwners::list() const
{
	static const std::vector<Entry> none;
	return entries_ ? *entries_ : none;
}

std::vector<SliceOwners::Entry> &SliceOwners::own()
{
	if (!entries_)
		entries_ = std::make_shared<std::vector<Entry>>();
	else if (entries_.use_count() > 1)
		entries_ = std::make_shared<std::vector<Entry>>(*entries_);
	return *entries_;
}

size_t SliceOwners::lowerBound(uint32_t slice) const
{
	const std::vector<Entry> &entries = list();
	// The loader adds slices in ascending order: try the end first.
	if (entries.empty() || entries.back().slice < slice)
		return entries.size();
	return static_cast<size_t>(std::lower_bound(entries.begin(), entries.end(), slice,
						    [](const Entry &e, uint32_t s) { return e.slice < s; }) -
				   entries.begin());
}

SliceOwners::const_iterator SliceOwners::find(uint32_t slice) const
{
	size_t at = lowerBound(slice);
	if (at == list().size() || list()[at].slice != slice)
		return end();
	return { this, list().data() + at };
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

SliceOwners::Entry SliceOwners::entry(uint32_t slice, uint32_t name)
{
	if (slice > UINT16_MAX || name > UINT16_MAX)
		throw std::out_of_range("slice " + std::to_string(slice) + " of server #" + std::to_string(name) +
					": beyond any port range or fleet");
	return Entry{ static_cast<uint16_t>(slice), static_cast<uint16_t>(name) };
}

std::pair<SliceOwners::const_iterator, bool> SliceOwners::emplace(uint32_t slice, std::string_view server)
{
	size_t at = lowerBound(slice);
	if (at < list().size() && list()[at].slice == slice)
		return { const_iterator{ this, list().data() + at }, false };
	Entry e = entry(slice, nameIndex(server));
	std::vector<Entry> &entries = own();
	entries.insert(entries.begin() + static_cast<ptrdiff_t>(at), e);
	return { const_iterator{ this, entries.data() + at }, true };
}

void SliceOwners::assign(uint32_t slice, std::string_view server)
{
	Entry e = entry(slice, nameIndex(server));
	size_t at = lowerBound(slice);
	std::vector<Entry> &entries = own();
	if (at < entries.size() && entries[at].slice == slice)
		entries[at].name = e.name;
	else
		entries.insert(entries.begin() + static_cast<ptrdiff_t>(at), e);
}

SliceOwners::Ref SliceOwners::operator[](uint32_t slice)
{
	emplace(slice, std::string_view{});
	return Ref{ *this, slice };
}

size_t SliceOwners::erase(uint32_t slice)
{
	size_t at = lowerBound(slice);
	if (at == list().size() || list()[at].slice != slice)
		return 0;
	std::vector<Entry> &entries = own();
	entries.erase(entries.begin() + static_cast<ptrdiff_t>(at));
	return 1;
}

bool SliceOwners::operator==(const SliceOwners &other) const
{
	return size() == other.size() && std::equal(begin(), end(), other.begin(), [](const value_type &a, const value_type &b) {
		       return a.first == b.first && a.second == b.second;
	       });
}

} // namespace portslice::config
