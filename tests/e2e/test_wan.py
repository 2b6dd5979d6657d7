"""The WAN emulator delivers its profiles to real processes, and leaves nothing behind.

Runs only as root (network namespaces and TUN devices); CI runs as root. Bounds are wide on
purpose (RTT ±20% + 2 ms, rate ±25%): the box is shared and the forwarder is a Python process.
Loss cannot flake: the emulator's drops come from a seeded generator, so with a fixed seed the
same datagrams are dropped every run; the bound only leaves room for drops in the receiver.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from bench.wan import PROFILES, WanEmulator, available, namespaces
from bench.wan import measure as m
from bench.wan.netns import PREFIX, ROOT, _ip

pytestmark = pytest.mark.skipif(available() is not None, reason=f"WAN emulator: {available()}")


def _ours(wan: WanEmulator) -> list[str]:
    """This emulator's namespaces and devices still on the machine (others may run concurrently)."""
    devs = _ip("-o", "link", "show", check=False).stdout
    return [n for n in namespaces() if n.startswith(wan.tag + "-")] + [d for d in wan.devs if f" {d}:" in devs]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("profile", ["lan", "continent", "intercontinental"])
def test_tcp_round_trip_matches_profile(profile: str) -> None:
    want = PROFILES[profile].rtt_ms
    with WanEmulator(2, profile, seed=1) as wan:
        got = m.median(m.rtt_ms(wan, 0, 1, n=10 if want > 100 else 20))
    assert abs(got - want) <= 0.2 * want + 2, f"{profile}: median RTT {got:.1f} ms, profile {want} ms"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("profile", ["continent", "home"])
def test_bulk_tcp_reaches_the_upload_rate(profile: str) -> None:
    rate = PROFILES[profile].up_mbit
    assert rate
    with WanEmulator(2, profile, seed=1) as wan:
        got = m.throughput_mbit(wan, [(0, 1)], seconds=4.0, warmup_s=1.5)[0]
    assert abs(got - rate) <= 0.25 * rate, f"{profile}: {got:.1f} Mbit/s goodput, link {rate} Mbit/s"


@pytest.mark.timeout(120)
def test_random_loss_as_configured() -> None:
    p = PROFILES["intercontinental"]
    n = 10000
    with WanEmulator(2, p, seed=1) as wan:
        lost = m.loss_fraction(wan, 0, 1, n=n, pps=2000)
        link = wan.stats()["links"]["0->1"]
    # 0.5% of 10000 is 50 (sd 7): 15..120 leaves 5 sd below and room for receiver drops above.
    assert 0.0015 <= lost <= 0.012, f"{lost:.4f} of datagrams lost, profile {p.loss}"
    assert link["lost"] > 0 and link["queue_drops"] == 0, link


@pytest.mark.timeout(60)
def test_teardown_leaves_nothing_even_after_an_exception() -> None:
    wan = WanEmulator(3, "lan")
    with pytest.raises(RuntimeError, match="boom"), wan:
        assert len(_ours(wan)) == 3
        assert wan.run_in(2, ["ip", "-o", "-4", "addr", "show", "wan0"], check=True).stdout.count(wan.addr(2)) == 1
        wan.popen(1, ["sleep", "600"])
        with WanEmulator(2, "lan") as other:  # a second emulator of the same process does not clash
            assert len(_ours(other)) == 2 and len(_ours(wan)) == 3
        assert _ours(other) == []
        raise RuntimeError("boom")
    assert _ours(wan) == []


@pytest.mark.timeout(60)
def test_sigterm_tears_down_and_stale_namespaces_are_removed() -> None:
    script = textwrap.dedent("""
        import sys, time
        from bench.wan import WanEmulator
        with WanEmulator(2, "lan") as wan:
            wan.popen(0, ["sleep", "600"])
            print(",".join(wan.ns), flush=True)
            time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.stdout
    names = child.stdout.readline().strip().split(",")
    assert len(names) == 2 and set(names) <= set(namespaces())
    child.terminate()
    assert child.wait(30) == 128 + 15
    assert not set(names) & set(namespaces())
    # A namespace named after a dead process (a SIGKILLed run) goes when the next emulator starts.
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{PREFIX}{dead.pid}-0-0"
    _ip("netns", "add", stale)
    try:
        with WanEmulator(2, "lan"):
            assert stale not in namespaces()
    finally:
        _ip("netns", "del", stale, check=False)
