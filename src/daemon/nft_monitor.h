// SPDX-License-Identifier: MIT
// Watches nftables commits over netlink (NFNLGRP_NFTABLES) and reports those of other processes that touch our table.
#pragma once

#include <cstdint>
#include <libmnl/libmnl.h>
#include <optional>
#include <string>

#include "common/handle.h"
#include "common/result.h"

namespace portslice::daemon {

using MnlSocket = Handle<mnl_socket, mnl_socket_close>;

// A commit by someone else that changed the watched table.
struct ForeignChange {
	uint32_t pid = 0;     // 0 when events were lost
	std::string process;  // comm of the committing process, if the kernel said
	// The socket overflowed (our own full replace of a large table does
	// that): who changed what is unknown, the table must be compared.
	bool lost() const { return pid == 0; }
	std::string str() const;
};

class NftMonitor {
public:
	// Watch table `family name` in the current network namespace.
	static Result<NftMonitor> open(uint8_t family, std::string table);

	int fd() const { return mnl_socket_get_fd(socket_.get()); }

	// Read every pending event (non-blocking). Returns the last foreign
	// commit that touched the table, if any, or a lost() change when the
	// socket overflowed (ENOBUFS).
	Result<std::optional<ForeignChange>> read();

private:
	NftMonitor(MnlSocket socket, uint8_t family, std::string table)
		: socket_(std::move(socket)), family_(family), table_(std::move(table)) {}

	MnlSocket socket_;
	uint8_t family_;
	std::string table_;
	uint32_t self_ = 0;
	bool touched_ = false; // an object of the table changed since the last NEWGEN
};

} // namespace portslice::daemon
