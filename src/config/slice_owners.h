// SPDX-License-Identifier: MIT
// SliceOwners: slice index -> server name, a std::map's interface over a sorted vector and a shared table of names.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace portslice::config {

// The slices of a shared address and their servers. A fleet file gives every
// address one slice per server (31 in the generated fleets): as a std::map
// that was 31 nodes of about 80 bytes an address; here it is 8 bytes a slice,
// the names living once in a table that the addresses of a load share
// (copied on write when a name is new to it; never changed once shared, so
// copies of a Config may be read from several threads). Copies share the
// slices too, until one of them changes its own.
//
// Reads like std::map<uint32_t, std::string>: find/end/count/at, iteration
// in slice order with `const auto &[slice, server]`, `it->first`,
// `it->second`; `owners[slice] = "s2"` inserts or overwrites.
class SliceOwners {
	// Four bytes a slice (a fleet of 10,000 addresses of 31 slices: 1.2 MB):
	// no port range has more than 65,536 slices, no fleet that many servers.
	struct Entry {
		uint16_t slice;
		uint16_t name; // index into *names_
	};

public:
	using Names = std::vector<std::string>;
	using value_type = std::pair<const uint32_t, const std::string &>;

	class const_iterator {
	public:
		using iterator_category = std::forward_iterator_tag;
		using value_type = SliceOwners::value_type;
		using difference_type = std::ptrdiff_t;
		using reference = value_type; // a pair made on the fly
		struct pointer {
			value_type pair;
			const value_type *operator->() const { return &pair; }
		};

		const_iterator() = default;
		value_type operator*() const { return { at_->slice, (*owners_->names_)[at_->name] }; }
		pointer operator->() const { return pointer{ **this }; }
		const_iterator &operator++()
		{
			++at_;
			return *this;
		}
		const_iterator operator++(int)
		{
			const_iterator old = *this;
			++at_;
			return old;
		}
		bool operator==(const const_iterator &o) const { return at_ == o.at_; }

	private:
		friend class SliceOwners;
		const_iterator(const SliceOwners *owners, const Entry *at) : owners_(owners), at_(at) {}
		const SliceOwners *owners_ = nullptr;
		const Entry *at_ = nullptr;
	};
	using iterator = const_iterator;

	// What `owners[slice]` gives: reads as the name, assigns a server.
	class Ref {
	public:
		Ref &operator=(std::string_view server)
		{
			owners_.assign(slice_, server);
			return *this;
		}
		Ref &operator=(const Ref &other) { return *this = std::string_view(other.str()); }
		const std::string &str() const { return owners_.at(slice_); }
		operator const std::string &() const { return str(); }
		friend bool operator==(const Ref &r, std::string_view server) { return r.str() == server; }

	private:
		friend class SliceOwners;
		Ref(SliceOwners &owners, uint32_t slice) : owners_(owners), slice_(slice) {}
		SliceOwners &owners_;
		uint32_t slice_;
	};

	SliceOwners() = default;
	// Empty, naming servers from `names` where it can (the loader passes the
	// [[servers]] of the file, so that its addresses share one table).
	explicit SliceOwners(std::shared_ptr<const Names> names) : names_(std::move(names)) {}
	SliceOwners(std::initializer_list<std::pair<uint32_t, std::string_view>> owners);

	const_iterator begin() const { return { this, list().data() }; }
	const_iterator end() const { return { this, list().data() + list().size() }; }
	size_t size() const { return list().size(); }
	bool empty() const { return list().empty(); }
	const_iterator find(uint32_t slice) const;
	size_t count(uint32_t slice) const { return find(slice) != end() ? 1 : 0; }
	// The server of `slice`; std::out_of_range if it has none.
	const std::string &at(uint32_t slice) const;

	// std::map's: the slice gets "" if it had no server yet.
	Ref operator[](uint32_t slice);
	// Inserts unless the slice has a server: {where, inserted}.
	std::pair<const_iterator, bool> emplace(uint32_t slice, std::string_view server);
	// Inserts or overwrites.
	void assign(uint32_t slice, std::string_view server);
	size_t erase(uint32_t slice);
	void clear() { entries_.reset(); }
	void reserve(size_t slices) { own().reserve(slices); }

	// Same slices with the same server names (whatever their tables).
	bool operator==(const SliceOwners &other) const;

private:
	uint32_t nameIndex(std::string_view server);
	static Entry entry(uint32_t slice, uint32_t name);
	// Where `slice` is or would go in list().
	size_t lowerBound(uint32_t slice) const;
	const std::vector<Entry> &list() const;
	// The entries to change: this map's own, copied first if a copy of the
	// map shares them.
	std::vector<Entry> &own();

	// Ascending slice, shared by copies until one of them changes (the
	// service keeps the file's owners beside the config's: one list for
	// both while no slice has moved).
	std::shared_ptr<std::vector<Entry>> entries_;
	std::shared_ptr<const Names> names_;
	uint32_t lastName_ = 0; // where the last name was found: the loader adds a server's slices in a row
};

} // namespace portslice::config
