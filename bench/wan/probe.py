"""Small measuring programs run inside the emulator's namespaces (``python bench/wan/probe.py CMD ...``).

Each prints one JSON line on stdout. Times are ``time.monotonic()``, which is one clock for
every namespace, so a sender's and a receiver's figures can be compared.

- ``echo PORT``: TCP echo server (any number of connections) until killed.
- ``rtt HOST PORT N``: N one-byte round trips over one TCP connection (Nagle off); ms each.
- ``sink PORT``: receives one TCP connection; cumulative bytes every 50 ms until it closes.
- ``send HOST PORT SECONDS``: sends as fast as TCP allows for SECONDS, then closes.
- ``udpsink PORT SECONDS``: counts distinct sequence numbers received until SECONDS pass quietly.
- ``udpsend HOST PORT N PPS``: N numbered 64-byte datagrams at PPS packets per second.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
import time


def _connect(host: str, port: int, timeout_s: float = 10.0) -> socket.socket:
    deadline = time.monotonic() + timeout_s
    while True:  # the server may still be starting in its namespace
        try:
            return socket.create_connection((host, port), timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def echo(port: int) -> None:
    """Echo every connection's bytes back."""
    srv = socket.create_server(("0.0.0.0", port), reuse_port=True)

    def serve(c: socket.socket) -> None:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := c.recv(65536):
            c.sendall(data)

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def rtt(host: str, port: int, n: int) -> dict:
    """Round trips of one byte, after one unmeasured warm-up."""
    s = _connect(host, port)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out = []
    for k in range(n + 1):
        t = time.perf_counter()
        s.sendall(b"x")
        if not s.recv(1):
            raise ConnectionError("echo server closed")
        if k:
            out.append((time.perf_counter() - t) * 1000)
    return {"rtt_ms": out}


def sink(port: int) -> dict:
    """Bytes received over time from one connection."""
    srv = socket.create_server(("0.0.0.0", port))
    print(json.dumps({"listening": port}), flush=True)
    conn, _ = srv.accept()
    total, series, next_t = 0, [], 0.0
    while data := conn.recv(1 << 20):
        total += len(data)
        now = time.monotonic()
        if now >= next_t:
            series.append((now, total))
            next_t = now + 0.05
    series.append((time.monotonic(), total))
    return {"series": series, "bytes": total}


def send(host: str, port: int, seconds: float) -> dict:
    """Bulk TCP for ``seconds``."""
    s = _connect(host, port)
    buf, total = b"\0" * (1 << 16), 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        total += s.send(buf)
    s.close()
    return {"sent": total}


def udpsink(port: int, quiet_s: float) -> dict:
    """Distinct sequence numbers received, until ``quiet_s`` without a datagram."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(("0.0.0.0", port))
    s.settimeout(quiet_s)
    print(json.dumps({"listening": port}), flush=True)
    seen: set[int] = set()
    try:
        while True:
            seen.add(struct.unpack_from("!I", s.recv(2048))[0])
            s.settimeout(quiet_s)
    except TimeoutError:
        pass
    return {"received": len(seen)}


def udpsend(host: str, port: int, n: int, pps: float) -> dict:
    """``n`` datagrams, paced so no queue overflows: only the link's random loss drops them."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    t0, pad = time.monotonic(), b"\0" * 60
    for k in range(n):
        due = t0 + k / pps
        if (wait := due - time.monotonic()) > 0:
            time.sleep(wait)
        s.sendto(struct.pack("!I", k) + pad, (host, port))
    return {"sent": n}


def main(argv: list[str]) -> None:
    """Dispatch ``argv[0]`` with the remaining arguments."""
    cmd, args = argv[0], argv[1:]
    if cmd == "echo":
        echo(int(args[0]))
        return
    funcs = {"rtt": lambda: rtt(args[0], int(args[1]), int(args[2])),
             "sink": lambda: sink(int(args[0])),
             "send": lambda: send(args[0], int(args[1]), float(args[2])),
             "udpsink": lambda: udpsink(int(args[0]), float(args[1])),
             "udpsend": lambda: udpsend(args[0], int(args[1]), int(args[2]), float(args[3]))}
    print(json.dumps(funcs[cmd]()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
