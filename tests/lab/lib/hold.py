#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Long-lived TCP and UDP flows for the lab: each flow exchanges a line every interval and must keep its shared port and its answers until the end.
#
# hold.py serve --port P [--seconds S]
#     TCP and UDP on every address, port P: every line (datagram) is answered
#     with "SEEN ADDR:PORT LINE", naming the peer as seen here. Exits after S
#     seconds (default 120).
# hold.py hold --to ADDR:PORT[,...] [--tcp N] [--udp N] [--from ADDR[,...]]
#              [--interval-ms I] [--timeout-ms T] [--seconds S] [--stop FILE]
#     Opens N TCP connections and N UDP flows (targets and source addresses
#     round robin), prints "ready" with each flow's shared address and port,
#     then sends one line on every flow every I ms (default 200) until FILE
#     exists or S seconds (default 60) have passed. A flow breaks when it is
#     reset, closed, gets no answer within T ms (default 5000; UDP: none of
#     its datagrams answered for T ms) or is answered from another shared
#     port. Prints "broken PROTO ADDR:PORT after SECONDS s: WHY" per broken
#     flow, then "summary held H broken B rounds R". Exit 0 when none broke.
import argparse
import os
import select
import socket
import subprocess
import sys
import threading
import time


def serve(args):
    end = time.time() + args.seconds
    tcp = socket.socket()
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", args.port))
    tcp.listen(256)
    # One UDP socket per local address: an answer leaves from the address
    # the datagram came to, so the client's NAT finds its mapping.
    addrs = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    udps = []
    for word in addrs.split():
        if "/" in word and word[0].isdigit():
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind((word.split("/")[0], args.port))
            udps.append(u)
    print("listening", flush=True)

    def conn(c, peer):
        c.settimeout(max(1.0, end - time.time()))
        seen = ("SEEN %s:%d " % peer).encode()
        try:
            for line in c.makefile("rb"):
                c.sendall(seen + line)
        except OSError:
            pass
        c.close()

    while time.time() < end:
        ready, _, _ = select.select([tcp] + udps, [], [], 0.5)
        for s in ready:
            if s is tcp:
                c, peer = tcp.accept()
                threading.Thread(target=conn, args=(c, peer), daemon=True).start()
            else:
                data, peer = s.recvfrom(2048)
                s.sendto(("SEEN %s:%d " % peer).encode() + data, peer)


def endpoints(text):
    out = []
    for e in text.split(","):
        host, port = e.rsplit(":", 1)
        out.append((host, int(port)))
    return out


class Flow:
    def __init__(self, proto, sock, seen):
        self.proto, self.sock, self.seen = proto, sock, seen
        self.buf = b""
        self.last_answer = time.time()
        self.broken = None


def hold(args):
    targets = endpoints(args.to)
    sources = args.source.split(",") if args.source else [None]
    timeout = args.timeout_ms / 1000.0
    flows = []
    for k in range(args.tcp):
        src = sources[k % len(sources)]
        s = socket.create_connection(targets[k % len(targets)], timeout=5,
                                     source_address=(src, 0) if src else None)
        s.sendall(b"hello\n")
        f = s.makefile("rb")
        line = f.readline().decode()
        s.setblocking(False)
        flows.append(Flow("tcp", s, line.split()[1]))
    for k in range(args.udp):
        src = sources[k % len(sources)]
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if src:
            s.bind((src, 0))
        s.connect(targets[k % len(targets)])
        s.settimeout(1)
        seen = None
        for _ in range(5):
            s.send(b"hello\n")
            try:
                seen = s.recv(2048).decode().split()[1]
                break
            except socket.timeout:
                continue
        if seen is None:
            print("udp flow %d: no answer to its first datagrams" % k, file=sys.stderr)
            sys.exit(1)
        s.setblocking(False)
        flows.append(Flow("udp", s, seen))
    print("ready", " ".join("%s=%s" % (f.proto, f.seen) for f in flows), flush=True)

    start = time.time()
    end = start + args.seconds
    rounds = 0
    interval = args.interval_ms / 1000.0
    while time.time() < end and not (args.stop and os.path.exists(args.stop)):
        rounds += 1
        payload = ("round %d\n" % rounds).encode()
        for f in flows:
            if f.broken:
                continue
            try:
                f.sock.send(payload)
            except BlockingIOError:
                pass
            except OSError as e:
                f.broken = "send: %s" % e.strerror
        tick = time.time() + interval
        while time.time() < tick:
            live = [f.sock for f in flows if not f.broken]
            ready, _, _ = select.select(live, [], [], max(0, tick - time.time()))
            for f in flows:
                if f.sock not in ready:
                    continue
                try:
                    data = f.sock.recv(4096)
                except OSError as e:
                    f.broken = "recv: %s" % e.strerror
                    continue
                if f.proto == "tcp" and not data:
                    f.broken = "closed by the peer"
                    continue
                f.buf += data if f.proto == "tcp" else data + (b"" if data.endswith(b"\n") else b"\n")
                while b"\n" in f.buf:
                    line, f.buf = f.buf.split(b"\n", 1)
                    words = line.decode(errors="replace").split()
                    if len(words) >= 2 and words[0] == "SEEN":
                        if words[1] != f.seen:
                            f.broken = "answered from %s" % words[1]
                        f.last_answer = time.time()
        now = time.time()
        for f in flows:
            if not f.broken and now - f.last_answer > timeout:
                f.broken = "no answer for %.1f s" % (now - f.last_answer)
            if f.broken and not hasattr(f, "reported"):
                f.reported = True
                print("broken %s %s after %.1f s: %s" % (f.proto, f.seen, now - start, f.broken), flush=True)
    broken = sum(1 for f in flows if f.broken)
    print("summary held %d broken %d rounds %d" % (len(flows) - broken, broken, rounds), flush=True)
    return 0 if broken == 0 else 1


def main():
    p = argparse.ArgumentParser(prog="hold.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--seconds", type=float, default=120)
    h = sub.add_parser("hold")
    h.add_argument("--to", required=True)
    h.add_argument("--tcp", type=int, default=4)
    h.add_argument("--udp", type=int, default=4)
    h.add_argument("--from", dest="source", default="")
    h.add_argument("--interval-ms", type=int, default=200)
    h.add_argument("--timeout-ms", type=int, default=5000)
    h.add_argument("--seconds", type=float, default=60)
    h.add_argument("--stop", default="")
    args = p.parse_args()
    if args.cmd == "serve":
        serve(args)
        return 0
    return hold(args)


if __name__ == "__main__":
    sys.exit(main())
