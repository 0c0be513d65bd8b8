// SPDX-License-Identifier: MIT
// labtraffic: bounded TCP and UDP test traffic for the lab; the server tells each client the source address and port it saw.
//
//   labtraffic serve --port P [--ports N] [--seconds S] [--quiet] [--client-closes]
//	Answers TCP and UDP on every address, ports P..P+N-1: each request gets one line
//	"SEEN ADDR:PORT" naming the peer as seen here. Exits after S seconds
//	(default 60); one line per flow on stdout: "tcp|udp ADDR:PORT".
//	--client-closes: wait for the client's FIN before closing (the TIME_WAIT
//	stays with the client).
//   labtraffic send --to ADDR:PORT[,ADDR:PORT...] [--tcp N] [--udp N]
//		[--timeout-ms T] [--parallel K] [--gap-ms G] [--from ADDR[,ADDR...]] [--quiet]
//	N flows of each protocol, new socket (so new source port) each, targets
//	and source addresses (--from; default: the route's) round robin, K at a time, G ms between starts. One line per flow:
//	"tcp|udp ok SEEN_ADDR:PORT", "tcp|udp refused" (RST or ICMP
//	unreachable: cleanly refused), "tcp|udp timeout", "tcp|udp error TEXT";
//	(--quiet: only the flows that failed); then "summary tcp OK/N udp OK/N refused R timeout T". Exit 0 when all
//	flows succeeded, 1 otherwise.
#include <arpa/inet.h>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <mutex>
#include <netinet/in.h>
#include <poll.h>
#include <string>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "common/handle.h"

using portslice::UniqueFd;

namespace {

using Clock = std::chrono::steady_clock;

std::string peerText(const sockaddr_in &a)
{
	char buf[INET_ADDRSTRLEN] = {};
	inet_ntop(AF_INET, &a.sin_addr, buf, sizeof(buf));
	return std::string(buf) + ":" + std::to_string(ntohs(a.sin_port));
}

bool parseEndpoint(const std::string &text, sockaddr_in &out)
{
	auto colon = text.rfind(':');
	if (colon == std::string::npos)
		return false;
	out = {};
	out.sin_family = AF_INET;
	int port = std::atoi(text.c_str() + colon + 1);
	if (port <= 0 || port > 65535 || inet_pton(AF_INET, text.substr(0, colon).c_str(), &out.sin_addr) != 1)
		return false;
	out.sin_port = htons(static_cast<uint16_t>(port));
	return true;
}

// Answers one UDP request from the address it was sent to.
void answerUdp(int fd, bool quiet);

int serve(uint16_t port, int ports, int seconds, bool quiet, bool clientCloses)
{
	int one = 1;
	std::vector<UniqueFd> tcp, udp;
	for (int i = 0; i < ports; ++i) {
		sockaddr_in any{};
		any.sin_family = AF_INET;
		any.sin_port = htons(static_cast<uint16_t>(port + i));
		any.sin_addr.s_addr = htonl(INADDR_ANY);
		UniqueFd t(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
		UniqueFd u(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
		if (!t.isValid() || !u.isValid()) {
			std::perror("labtraffic: socket");
			return 1;
		}
		setsockopt(t.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		setsockopt(u.get(), IPPROTO_IP, IP_PKTINFO, &one, sizeof(one));
		if (bind(t.get(), reinterpret_cast<sockaddr *>(&any), sizeof(any)) != 0 || listen(t.get(), 1024) != 0 ||
		    bind(u.get(), reinterpret_cast<sockaddr *>(&any), sizeof(any)) != 0) {
			std::perror("labtraffic: bind");
			return 1;
		}
		tcp.push_back(std::move(t));
		udp.push_back(std::move(u));
	}
	std::printf("listening %u-%u\n", port, port + ports - 1);
	std::fflush(stdout);

	std::vector<pollfd> fds;
	for (auto &t : tcp)
		fds.push_back({t.get(), POLLIN, 0});
	for (auto &u : udp)
		fds.push_back({u.get(), POLLIN, 0});
	auto deadline = Clock::now() + std::chrono::seconds(seconds);
	while (Clock::now() < deadline) {
		if (poll(fds.data(), fds.size(), 200) <= 0)
			continue;
		for (size_t i = 0; i < fds.size(); ++i) {
			if (!(fds[i].revents & POLLIN))
				continue;
			if (i >= tcp.size()) {
				answerUdp(fds[i].fd, quiet);
				continue;
			}
			sockaddr_in peer{};
			socklen_t len = sizeof(peer);
			UniqueFd conn(accept4(fds[i].fd, reinterpret_cast<sockaddr *>(&peer), &len, SOCK_CLOEXEC));
			if (!conn.isValid())
				continue;
			// The client writes first; a silent one gets a short wait, never a stall.
			pollfd p{conn.get(), POLLIN, 0};
			char buf[512];
			if (poll(&p, 1, 1000) > 0 && read(conn.get(), buf, sizeof(buf)) > 0) {
				std::string reply = "SEEN " + peerText(peer) + "\n";
				(void)!write(conn.get(), reply.data(), reply.size());
				if (!quiet)
					std::printf("tcp %s\n", peerText(peer).c_str());
				// The client closes first and keeps the TIME_WAIT, so this
				// host never holds one that a reused source port would meet.
				if (clientCloses && poll(&p, 1, 1000) > 0)
					(void)!read(conn.get(), buf, sizeof(buf));
			}
		}
		std::fflush(stdout);
	}
	return 0;
}

void answerUdp(int fd, bool quiet)
{
	// Answer from the address the request was sent to (the host has
	// several), or a connected client would not accept the answer.
	char buf[512];
	alignas(cmsghdr) char control[CMSG_SPACE(sizeof(in_pktinfo))] = {};
	sockaddr_in peer{};
	iovec iov{buf, sizeof(buf)};
	msghdr msg{};
	msg.msg_name = &peer;
	msg.msg_namelen = sizeof(peer);
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = control;
	msg.msg_controllen = sizeof(control);
	if (recvmsg(fd, &msg, 0) >= 0) {
		in_addr local{};
		for (cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
			if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO)
				local = reinterpret_cast<in_pktinfo *>(CMSG_DATA(c))->ipi_addr;
		std::string reply = "SEEN " + peerText(peer) + "\n";
		alignas(cmsghdr) char outControl[CMSG_SPACE(sizeof(in_pktinfo))] = {};
		iovec outIov{reply.data(), reply.size()};
		msghdr out{};
		out.msg_name = &peer;
		out.msg_namelen = sizeof(peer);
		out.msg_iov = &outIov;
		out.msg_iovlen = 1;
		out.msg_control = outControl;
		out.msg_controllen = sizeof(outControl);
		cmsghdr *c = CMSG_FIRSTHDR(&out);
		c->cmsg_level = IPPROTO_IP;
		c->cmsg_type = IP_PKTINFO;
		c->cmsg_len = CMSG_LEN(sizeof(in_pktinfo));
		in_pktinfo info{};
		info.ipi_spec_dst = local;
		std::memcpy(CMSG_DATA(c), &info, sizeof(info));
		sendmsg(fd, &out, 0);
		if (!quiet)
			std::printf("udp %s\n", peerText(peer).c_str());
	}
}

enum class Outcome { Ok, Refused, Timeout, Error };

struct FlowResult {
	Outcome outcome = Outcome::Error;
	std::string detail;
};

bool waitFor(int fd, short events, Clock::time_point deadline)
{
	for (;;) {
		auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
		if (left <= 0)
			return false;
		pollfd p{fd, events, 0};
		int r = poll(&p, 1, static_cast<int>(left));
		if (r > 0)
			return true;
		if (r < 0 && errno != EINTR)
			return false;
	}
}

FlowResult failure(int err)
{
	if (err == ECONNREFUSED || err == ECONNRESET || err == EHOSTUNREACH || err == ENETUNREACH)
		return {Outcome::Refused, std::strerror(err)};
	return {Outcome::Error, std::strerror(err)};
}

// One request, one "SEEN ADDR:PORT" answer, on a fresh socket.
FlowResult flow(bool tcp, const sockaddr_in &to, const sockaddr_in *from, int timeoutMs)
{
	auto deadline = Clock::now() + std::chrono::milliseconds(timeoutMs);
	UniqueFd fd(socket(AF_INET, (tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
	if (!fd.isValid())
		return {Outcome::Error, std::strerror(errno)};
	if (from && bind(fd.get(), reinterpret_cast<const sockaddr *>(from), sizeof(*from)) != 0)
		return {Outcome::Error, std::string("bind: ") + std::strerror(errno)};
	if (connect(fd.get(), reinterpret_cast<const sockaddr *>(&to), sizeof(to)) != 0) {
		if (errno != EINPROGRESS)
			return failure(errno);
		if (!waitFor(fd.get(), POLLOUT, deadline))
			return {Outcome::Timeout, ""};
		int err = 0;
		socklen_t len = sizeof(err);
		getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
		if (err != 0)
			return failure(err);
	}
	const char request[] = "HELLO\n";
	if (send(fd.get(), request, sizeof(request) - 1, MSG_NOSIGNAL) < 0)
		return failure(errno);
	std::string reply;
	while (reply.find('\n') == std::string::npos) {
		if (!waitFor(fd.get(), POLLIN, deadline))
			return {Outcome::Timeout, ""};
		char buf[256];
		ssize_t n = recv(fd.get(), buf, sizeof(buf), 0);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			return failure(errno);
		}
		if (n == 0)
			return {Outcome::Refused, "closed without an answer"};
		reply.append(buf, static_cast<size_t>(n));
	}
	if (reply.rfind("SEEN ", 0) != 0)
		return {Outcome::Error, "unexpected answer"};
	return {Outcome::Ok, reply.substr(5, reply.find('\n') - 5)};
}

int send(const std::vector<sockaddr_in> &targets, const std::vector<sockaddr_in> &sources, int tcpFlows, int udpFlows,
	 int timeoutMs, int parallel, int gapMs, bool quiet)
{
	struct Job {
		bool tcp;
		size_t target;
		size_t source;
	};
	std::vector<Job> jobs;
	for (size_t i = 0; i < static_cast<size_t>(std::max(tcpFlows, udpFlows)); ++i) {
		// Targets change every flow, sources every round of targets: all pairs get used.
		size_t source = sources.empty() ? 0 : (i / targets.size()) % sources.size();
		if (i < static_cast<size_t>(tcpFlows))
			jobs.push_back({true, i % targets.size(), source});
		if (i < static_cast<size_t>(udpFlows))
			jobs.push_back({false, i % targets.size(), source});
	}
	std::atomic<size_t> next{0};
	std::mutex outMutex;
	int okTcp = 0, okUdp = 0, refused = 0, timeouts = 0, errors = 0;
	auto worker = [&] {
		for (;;) {
			size_t i = next.fetch_add(1);
			if (i >= jobs.size())
				return;
			if (gapMs > 0)
				std::this_thread::sleep_for(std::chrono::milliseconds(gapMs));
			FlowResult r = flow(jobs[i].tcp, targets[jobs[i].target],
					    sources.empty() ? nullptr : &sources[jobs[i].source], timeoutMs);
			std::lock_guard lock(outMutex);
			const char *proto = jobs[i].tcp ? "tcp" : "udp";
			switch (r.outcome) {
			case Outcome::Ok:
				(jobs[i].tcp ? okTcp : okUdp)++;
				if (!quiet)
					std::printf("%s ok %s\n", proto, r.detail.c_str());
				break;
			case Outcome::Refused:
				refused++;
				std::printf("%s refused %s\n", proto, r.detail.c_str());
				break;
			case Outcome::Timeout:
				timeouts++;
				std::printf("%s timeout\n", proto);
				break;
			case Outcome::Error:
				errors++;
				std::printf("%s error %s\n", proto, r.detail.c_str());
				break;
			}
		}
	};
	std::vector<std::thread> threads;
	for (int t = 0; t < std::max(1, parallel); ++t)
		threads.emplace_back(worker);
	for (auto &t : threads)
		t.join();
	std::printf("summary tcp %d/%d udp %d/%d refused %d timeout %d error %d\n", okTcp, tcpFlows, okUdp, udpFlows,
		    refused, timeouts, errors);
	return okTcp == tcpFlows && okUdp == udpFlows ? 0 : 1;
}

int usage()
{
	std::fprintf(stderr, "usage: labtraffic serve --port P [--ports N] [--seconds S] [--quiet] [--client-closes]\n"
			     "       labtraffic send --to ADDR:PORT[,...] [--tcp N] [--udp N] [--timeout-ms T]"
			     " [--parallel K] [--gap-ms G] [--from ADDR[,...]] [--quiet]\n");
	return 2;
}

} // namespace

int main(int argc, char **argv)
{
	if (argc < 2)
		return usage();
	std::string mode = argv[1];
	bool quiet = false, clientCloses = false;
	int port = 0, ports = 1, seconds = 60, tcpFlows = 0, udpFlows = 0, timeoutMs = 2000, parallel = 4, gapMs = 0;
	std::vector<sockaddr_in> targets, sources;
	for (int i = 2; i < argc; ++i) {
		std::string a = argv[i];
		if (a == "--quiet" || a == "--client-closes") {
			(a == "--quiet" ? quiet : clientCloses) = true;
			continue;
		}
		if (i + 1 >= argc)
			return usage();
		std::string v = argv[++i];
		if (a == "--port")
			port = std::atoi(v.c_str());
		else if (a == "--ports")
			ports = std::atoi(v.c_str());
		else if (a == "--seconds")
			seconds = std::atoi(v.c_str());
		else if (a == "--tcp")
			tcpFlows = std::atoi(v.c_str());
		else if (a == "--udp")
			udpFlows = std::atoi(v.c_str());
		else if (a == "--timeout-ms")
			timeoutMs = std::atoi(v.c_str());
		else if (a == "--parallel")
			parallel = std::atoi(v.c_str());
		else if (a == "--gap-ms")
			gapMs = std::atoi(v.c_str());
		else if (a == "--to" || a == "--from") {
			size_t start = 0;
			while (start <= v.size()) {
				size_t comma = v.find(',', start);
				std::string one = v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
				sockaddr_in s{};
				if (a == "--from")
					one += ":1"; // parsed as an endpoint; the port is then cleared (any)
				if (!parseEndpoint(one, s)) {
					std::fprintf(stderr, "labtraffic: bad address '%s'\n", one.c_str());
					return 2;
				}
				if (a == "--from") {
					s.sin_port = 0;
					sources.push_back(s);
				} else {
					targets.push_back(s);
				}
				if (comma == std::string::npos)
					break;
				start = comma + 1;
			}
		} else
			return usage();
	}
	// Bounded in count and time, always.
	if (seconds < 1 || seconds > 600 || tcpFlows < 0 || udpFlows < 0 || tcpFlows + udpFlows > 200000 ||
	    timeoutMs < 1 || timeoutMs > 30000 || parallel < 1 || parallel > 64 || gapMs < 0 || gapMs > 10000)
		return usage();
	if (mode == "serve" && port > 0 && ports >= 1 && ports <= 256 && port + ports <= 65536)
		return serve(static_cast<uint16_t>(port), ports, seconds, quiet, clientCloses);
	if (mode == "send" && !targets.empty())
		return send(targets, sources, tcpFlows, udpFlows, timeoutMs, parallel, gapMs, quiet);
	return usage();
}
