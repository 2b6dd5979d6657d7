"""Shared helpers: real ``peerd join`` processes on 127.0.0.1, always cleaned up."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Small, fast settings for multi-process tests on a 2-core machine: short rounds, small model.
FAST = [
    # round.target_h=0: clock rounds, so that short test runs sync every round (the default work
    # pacing would hold until 100 steps of a fragment); tests of pacing set it themselves.
    "transport.host=127.0.0.1", "dht.host=127.0.0.1", "round.round_s=2", "round.settle_s=0.15", "round.target_h=0",
    "round.plan_slot_s=0.15", "round.plan_candidates=2", "train.log_every_s=2",
    "task_options.d_model=48", "task_options.n_layers=2", "task_options.seq_len=48",
    "data.max_corpus_bytes=1000000",
]


async def eventually(cond: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.1) -> object:
    """Await the coroutine function ``cond`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await cond()  # type: ignore[misc]
        if value:
            return value
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def wait_for(cond: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.1) -> object:
    """Poll ``cond`` until truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@dataclass
class Peer:
    """A ``peerd join`` child process and its files."""

    index: int
    proc: subprocess.Popen[bytes]
    workdir: Path
    info: dict[str, object] = field(default_factory=dict)

    @property
    def ready_file(self) -> Path:
        return self.workdir / f"peer-{self.index}.ready.json"

    @property
    def summary_file(self) -> Path:
        return self.workdir / f"peer-{self.index}.summary.json"

    @property
    def log_file(self) -> Path:
        return self.workdir / f"peer-{self.index}.log"

    def wait_ready(self, timeout_s: float = 120) -> dict[str, object]:
        def ready() -> object:
            assert self.proc.poll() is None, f"peer {self.index} exited early:\n{self.log_file.read_text()[-3000:]}"
            return self.ready_file.exists()

        wait_for(ready, timeout_s, f"peer {self.index} ready")
        self.info = json.loads(self.ready_file.read_text())
        return self.info

    def metrics(self) -> str:
        try:
            with urllib.request.urlopen(f"http://{self.info['metrics']}/metrics", timeout=5) as resp:
                return resp.read().decode()
        except OSError:
            # A refused or reset scrape is most often a peer that has exited: say so, with its log.
            if self.proc.poll() is not None:
                raise AssertionError(f"peer {self.index} exited ({self.proc.returncode}):\n"
                                     f"{self.log_file.read_text()[-3000:]}") from None
            raise

    def metric_value(self, name: str, labels: str = "") -> float:
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name + ("{" if labels else " ")) and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def status(self, timeout_s: float = 3.0) -> dict | None:
        """The daemon's admin ``/status``, or None while it cannot answer."""
        try:
            with urllib.request.urlopen(f"http://{self.info['admin']}/status", timeout=timeout_s) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError):
            return None

    def summary(self) -> dict[str, object]:
        return dict(json.loads(self.summary_file.read_text())["peers"][0])


class Swarm:
    """Starts peers; the fixture kills whatever is still running at teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.peers: list[Peer] = []
        # Discovery files of `peerd status` go to the test's directory, not the user's home.
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_STATE_HOME": str(workdir / "state")}
        # Admission on for the whole suite: every peer of a test swarm shares one fresh secret.
        self.secret = secrets.token_hex(16)
        self.env["PEERD_SECURITY__SECRET"] = self.secret

    def start(self, extra: list[str] = (), bootstrap: list[str] | None = None, flags: list[str] = (),
              env: dict[str, str] | None = None) -> Peer:
        i = len(self.peers)
        cmd = [sys.executable, "-m", "peerd", "join", *flags]
        for item in [*FAST, f"data.shard={i}", "data.num_shards=8", *extra]:
            cmd += ["--set", item]
        for m in bootstrap if bootstrap is not None else self.bootstrap():
            cmd += ["--bootstrap", m]
        peer = Peer(i, None, self.workdir)  # type: ignore[arg-type]
        cmd += ["--ready-file", str(peer.ready_file), "--summary", str(peer.summary_file)]
        log = open(peer.log_file, "wb")  # noqa: SIM115
        peer.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**self.env, **(env or {})})
        self.peers.append(peer)
        return peer

    def bootstrap(self) -> list[str]:
        return list(self.peers[0].info["dht_maddrs"])[:2] if self.peers else []  # type: ignore[index]

    def stop_all(self) -> None:
        for p in self.peers:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in self.peers:
            try:
                p.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.proc.pid, signal.SIGKILL)
                p.proc.wait(10)


def train_alone(swarm: Swarm, peers: int, settings: list[str], steps: int) -> list[float]:
    """Final eval loss of each of a ``peerd swarm --peers N`` run's shards trained alone, same steps.

    The fair baseline for what mixing adds: ``peers`` unconnected daemons, daemon i on shard i of
    ``peers``, as the swarm launcher assigns them. The 1-peer swarm run is another baseline: it
    trains on the whole corpus, whose capped read (``data.max_corpus_bytes``) is its first files by
    path, and every shard of 4 or 8 trained alone measured below it, so beating it says little about
    mixing. ``settings`` should leave out pacing: with nobody to mix with, the steps and their
    batches are the same either way, and unpaced they finish sooner.
    """
    assert not swarm.peers, "train_alone numbers the shards from 0: give it a fresh swarm"
    for _ in range(peers):
        swarm.start([*settings, f"data.num_shards={peers}", f"train.max_steps={steps}"], bootstrap=[],
                    flags=["--exit-when-done"])
    wait_for(lambda: all(p.proc.poll() is not None for p in swarm.peers), 120 + 2.0 * steps,
             "the peers training alone to finish")
    for p in swarm.peers:
        assert p.proc.returncode == 0, p.log_file.read_text()[-3000:]
    return [float(p.summary()["final_eval_loss"]) for p in swarm.peers]  # type: ignore[arg-type]


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[Swarm]:
    s = Swarm(tmp_path)
    try:
        yield s
    finally:
        s.stop_all()
