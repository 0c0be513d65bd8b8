// SPDX-License-Identifier: MIT
// Result<T>: a value or an error code with a chain of context, for everything that can fail.
#pragma once

#include <string>
#include <system_error>
#include <utility>
#include <variant>

namespace portslice {

class Error {
public:
	Error() = default;
	Error(std::error_code code, std::string context)
		: code_(code), context_(std::move(context)) {}
	Error(int errnum, std::string context)
		: code_(errnum, std::generic_category()), context_(std::move(context)) {}
	explicit Error(std::string message) : context_(std::move(message)) {}

	const std::error_code &code() const { return code_; }

	// "outer: inner: strerror", as an operator reads it in a log.
	std::string message() const
	{
		if (!code_)
			return context_;
		if (context_.empty())
			return code_.message();
		return context_ + ": " + code_.message();
	}

	// Prefix more context: "applying table portslice: " + old message.
	Error wrap(const std::string &outer) const
	{
		Error e = *this;
		e.context_ = context_.empty() ? outer : outer + ": " + context_;
		return e;
	}

private:
	std::error_code code_;
	std::string context_;
};

template<class T>
class [[nodiscard]] Result {
public:
	Result(T value) : v_(std::move(value)) {}
	Result(Error error) : v_(std::move(error)) {}

	bool ok() const { return v_.index() == 0; }
	explicit operator bool() const { return ok(); }

	T &value() & { return std::get<0>(v_); }
	const T &value() const & { return std::get<0>(v_); }
	T &&value() && { return std::get<0>(std::move(v_)); }
	T &operator*() & { return value(); }
	const T &operator*() const & { return value(); }
	T *operator->() { return &value(); }
	const T *operator->() const { return &value(); }

	const Error &error() const { return std::get<1>(v_); }

private:
	std::variant<T, Error> v_;
};

template<>
class [[nodiscard]] Result<void> {
public:
	Result() = default;
	Result(Error error) : error_(std::move(error)), ok_(false) {}

	bool ok() const { return ok_; }
	explicit operator bool() const { return ok_; }
	const Error &error() const { return error_; }

private:
	Error error_;
	bool ok_ = true;
};

using Status = Result<void>;

} // namespace portslice
