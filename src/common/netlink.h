// SPDX-License-Identifier: MIT
// The one netlink request loop (libmnl): send a request, read every answer until its acknowledgement or the end of a dump.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include <libmnl/libmnl.h>

#include "common/handle.h"
#include "common/result.h"

namespace portslice {

using MnlSocket = Handle<mnl_socket, mnl_socket_close>;

// A new request in `buf` (resized to one message and cleared): its header
// with `type` and `flags`; NetlinkSocket::request sets the sequence number.
nlmsghdr *netlinkMessage(std::vector<char> &buf, uint16_t type, uint16_t flags);

class NetlinkSocket {
public:
	// A socket of `bus` (NETLINK_ROUTE, NETLINK_NETFILTER), bound.
	static Result<NetlinkSocket> open(int bus, const char *what);

	// Send `nlh` (its sequence number is set here) and read the answers:
	// `cb` sees each data message; an error answer ends the request with
	// that errno; a dump ends with NLMSG_DONE, a request with NLM_F_ACK with
	// its acknowledgement. `cb` returning MNL_CB_ERROR stops it with EPROTO.
	Status request(nlmsghdr *nlh, const std::function<int(const nlmsghdr *)> &cb = {});

	mnl_socket *raw() const { return sock_.get(); }
	int fd() const { return mnl_socket_get_fd(sock_.get()); }
	uint32_t portId() const { return mnl_socket_get_portid(sock_.get()); }

private:
	MnlSocket sock_;
	uint32_t seq_ = 0;
	const char *what_ = "netlink";
};

} // namespace portslice
