// SPDX-License-Identifier: MIT
// NetlinkSocket: one request, all its answers, errors by errno (rtnetlink, nfnetlink).
#include "common/netlink.h"

#include <cerrno>
#include <memory>
#include <string>
#include <vector>

namespace portslice {

nlmsghdr *netlinkMessage(std::vector<char> &buf, uint16_t type, uint16_t flags)
{
	buf.assign(MNL_SOCKET_BUFFER_SIZE, 0);
	nlmsghdr *nlh = mnl_nlmsg_put_header(buf.data());
	nlh->nlmsg_type = type;
	nlh->nlmsg_flags = flags;
	return nlh;
}

Result<NetlinkSocket> NetlinkSocket::open(int bus, const char *what)
{
	NetlinkSocket s;
	s.what_ = what;
	s.sock_.reset(mnl_socket_open(bus));
	if (!s.sock_)
		return Error(errno, std::string("opening ") + what);
	if (mnl_socket_bind(s.sock_.get(), 0, MNL_SOCKET_AUTOPID) < 0)
		return Error(errno, std::string("binding ") + what);
	return s;
}

Status NetlinkSocket::request(nlmsghdr *nlh, const std::function<int(const nlmsghdr *)> &cb)
{
	nlh->nlmsg_seq = ++seq_;
	if (mnl_socket_sendto(sock_.get(), nlh, nlh->nlmsg_len) < 0)
		return Error(errno, std::string("sending to ") + what_);
	constexpr size_t kAnswerBytes = 1u << 16;
	std::unique_ptr<char[]> buf(new char[kAnswerBytes]); // not cleared: recv writes what is read
	auto trampoline = [](const nlmsghdr *m, void *data) -> int {
		const auto *f = static_cast<const std::function<int(const nlmsghdr *)> *>(data);
		return *f ? (*f)(m) : MNL_CB_OK;
	};
	for (;;) {
		ssize_t n = mnl_socket_recvfrom(sock_.get(), buf.get(), kAnswerBytes);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return Error(errno, std::string("reading ") + what_);
		}
		errno = 0;
		int ret = mnl_cb_run(buf.get(), static_cast<size_t>(n), seq_, portId(), trampoline,
				     const_cast<std::function<int(const nlmsghdr *)> *>(&cb));
		if (ret < 0)
			return Error(errno ? errno : EPROTO, what_);
		if (ret == MNL_CB_STOP)
			return {};
	}
}

} // namespace portslice
