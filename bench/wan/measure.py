"""What the emulator delivers, measured from inside its namespaces with :mod:`bench.wan.probe`.

Used by ``tests/e2e/test_wan.py`` and by ``python -m bench.wan`` (the self-check that records
RTT, throughput, loss and the forwarder's CPU cost per profile).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Any

from bench.wan.netns import WanEmulator

# run as a script: it imports nothing of ours, so it needs no PYTHONPATH or working directory
PROBE = [sys.executable, os.path.join(os.path.dirname(__file__), "probe.py")]


def _json_line(proc: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout_s)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if proc.returncode or not lines:
        raise RuntimeError(f"probe failed ({proc.returncode}): {err[-2000:]}")
    return json.loads(lines[-1])


def _listening(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout
    line = proc.stdout.readline()  # bounded: the probe prints it right after bind, or dies (EOF)
    if '"listening"' not in line:
        raise RuntimeError(f"probe server did not start: {line!r}")


def rtt_ms(wan: WanEmulator, a: int = 0, b: int = 1, n: int = 20, port: int = 7001) -> list[float]:
    """``n`` TCP round trips from host ``a`` to host ``b``, in ms."""
    wan.popen(b, [*PROBE, "echo", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res = wan.run_in(a, [*PROBE, "rtt", wan.addr(b), str(port), str(n)], timeout=60 + n, check=True)
    return json.loads(res.stdout)["rtt_ms"]


def throughput_mbit(wan: WanEmulator, pairs: list[tuple[int, int]], seconds: float = 4.0,
                    warmup_s: float = 1.5, port: int = 7100) -> list[float]:
    """Goodput of one bulk TCP flow per ``(sender, receiver)`` pair, all at once, after ``warmup_s``."""
    sinks, senders = [], []
    for k, (_, b) in enumerate(pairs):
        p = wan.popen(b, [*PROBE, "sink", str(port + k)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _listening(p)
        sinks.append(p)
    for k, (a, b) in enumerate(pairs):
        senders.append(wan.popen(a, [*PROBE, "send", wan.addr(b), str(port + k), str(seconds)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in senders:
        _json_line(p, seconds + 60)
    rates = []
    for p in sinks:
        series = _json_line(p, 60)["series"]
        t0 = series[0][0] + warmup_s
        # up to the sender's end only: the tail is the queue draining, not the link's rate
        window = [(t, n) for t, n in series if t0 <= t <= series[0][0] + seconds]
        if len(window) < 2:
            raise RuntimeError("too few throughput samples")
        (ta, na), (tb, nb) = window[0], window[-1]
        rates.append((nb - na) * 8 / (tb - ta) / 1e6)
    return rates


def loss_fraction(wan: WanEmulator, a: int = 0, b: int = 1, n: int = 20000, pps: float = 4000,
                  port: int = 7200) -> float:
    """Fraction of ``n`` paced UDP datagrams from ``a`` that never reach ``b``."""
    sink = wan.popen(b, [*PROBE, "udpsink", str(port), "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     text=True)
    _listening(sink)
    wan.run_in(a, [*PROBE, "udpsend", wan.addr(b), str(port), str(n), str(pps)], timeout=n / pps + 60, check=True)
    return 1 - _json_line(sink, 60)["received"] / n


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(xs: list[float]) -> float:
    """The median (statistics.median, named here for the callers)."""
    return statistics.median(xs)
