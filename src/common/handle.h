// SPDX-License-Identifier: MIT
// One RAII pattern for C handles (libnftnl, libmnl, libnetfilter_conntrack, libbpf) and file descriptors.
#pragma once

#include <memory>
#include <unistd.h>
#include <utility>

namespace portslice {

template<auto Free>
struct Deleter {
	template<class T>
	void operator()(T *p) const
	{
		if (p)
			Free(p);
	}
};

// Handle<nftnl_rule, nftnl_rule_free>: owns the pointer until release() hands
// it to a library call that takes ownership.
template<class T, auto Free>
using Handle = std::unique_ptr<T, Deleter<Free>>;

class UniqueFd {
public:
	UniqueFd() = default;
	explicit UniqueFd(int fd) : fd_(fd) {}
	UniqueFd(UniqueFd &&other) noexcept : fd_(other.release()) {}
	UniqueFd &operator=(UniqueFd &&other) noexcept
	{
		reset(other.release());
		return *this;
	}
	UniqueFd(const UniqueFd &) = delete;
	UniqueFd &operator=(const UniqueFd &) = delete;
	~UniqueFd() { reset(); }

	int get() const { return fd_; }
	bool isValid() const { return fd_ >= 0; }
	int release() { return std::exchange(fd_, -1); }
	void reset(int fd = -1)
	{
		if (fd_ >= 0)
			::close(fd_);
		fd_ = fd;
	}

private:
	int fd_ = -1;
};

} // namespace portslice
