#!/usr/bin/env python3
"""The floor under the router path's added latency on this machine: the p50/p99 round trip
of a 32-byte message between two processes over loopback TCP (TCP_NODELAY), 5000 times,
one at a time. A query through a router makes two such trips in sequence (client -> router,
router -> shard) before any gRPC or search work, so compare its added p50 with twice this.

    python3 index-node/scripts/loopback_rtt.py
"""
import os
import socket
import time

N = 5000


def main():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    if os.fork() == 0:  # the echo side
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            data = conn.recv(64)
            if not data:
                os._exit(0)
            conn.sendall(data)
    cli = socket.create_connection(("127.0.0.1", port))
    cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for _ in range(N):
        t = time.perf_counter()
        cli.sendall(b"x" * 32)
        cli.recv(64)
        times.append(time.perf_counter() - t)
    cli.close()
    os.wait()
    times.sort()
    print(f"loopback TCP round trip between two processes ({N} trips): "
          f"p50 {times[N // 2] * 1e6:.0f} us, p99 {times[N * 99 // 100] * 1e6:.0f} us")


if __name__ == "__main__":
    main()
