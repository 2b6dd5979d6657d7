"""Worker thread + bridge: snapshots, merges that keep in-flight progress, cancelled commands."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
import torch

from peerd.core.bridge import Bridge
from peerd.core.fragments import FragmentLayout
from peerd.train.tasks.base import Task
from peerd.train.worker import Worker, lower_thread_priority


class Batches:
    def __init__(self) -> None:
        self.g = torch.Generator().manual_seed(0)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(8, 4, generator=self.g)
        return x, x.sum(dim=1, keepdim=True)

    def samples_per_batch(self) -> int:
        return 8

    def state_dict(self) -> dict[str, int]:
        return {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        pass


def make_worker(max_steps: int = 0) -> tuple[Worker, Bridge, FragmentLayout]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    task = Task(model=model, make_optimizer=lambda ps: torch.optim.SGD(ps, lr=0.01), batches=Batches(),
                loss=lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1]),
                evaluate=lambda m: 1.0)
    layout = FragmentLayout.build([(n, tuple(p.shape)) for n, p in model.named_parameters()], 2)
    bridge = Bridge()
    return Worker(task, layout, bridge, max_steps, 1, lambda *_: None), bridge, layout


def wait_steps(bridge: Bridge, n: int) -> None:
    deadline = time.monotonic() + 30
    while bridge.stats.step < n:
        assert time.monotonic() < deadline, "worker made no progress"
        time.sleep(0.005)


def test_merge_keeps_progress_made_after_the_snapshot() -> None:
    worker, bridge, layout = make_worker(max_steps=3000)
    worker.start()
    try:
        wait_steps(bridge, 4)
        snap = bridge.submit("snapshot", fragment=0).result(10)
        assert snap.samples == snap.step * 8
        assert snap.step < 3000
        wait_steps(bridge, 3000)  # training stops at max_steps, so "now" is fixed from here on
        now = bridge.submit("snapshot", fragment=0).result(10)
        assert now.step == 3000 and not torch.equal(now.theta, snap.theta)
        new_outer = torch.linspace(-1, 1, snap.theta.numel())
        bridge.submit("merge", token=snap.token, theta=new_outer).result(10)
        after = bridge.submit("snapshot", fragment=0).result(10)
        torch.testing.assert_close(after.theta, new_outer + (now.theta - snap.theta), rtol=0, atol=1e-6)
        # The merged snapshot's samples are accounted for; only later samples remain pending.
        assert after.samples == (3000 - snap.step) * 8
    finally:
        assert worker.stop(10)


def test_install_replaces_fragment_and_evaluate_runs_on_worker() -> None:
    worker, bridge, layout = make_worker(max_steps=3)
    worker.start()
    try:
        wait_steps(bridge, 3)
        assert bridge.stats.done
        theta = torch.arange(layout.numels[1], dtype=torch.float32)
        bridge.submit("install", fragments={1: theta}).result(10)
        got = bridge.submit("snapshot", fragment=1).result(10)
        assert torch.equal(got.theta, theta)
        assert bridge.submit("evaluate").result(10) == 1.0
    finally:
        assert worker.stop(10)


async def test_timed_out_command_is_skipped_not_fatal() -> None:
    worker, bridge, _ = make_worker(max_steps=2)
    # Not started yet: the call must time out, and the cancelled command must not kill the worker.
    with pytest.raises(asyncio.TimeoutError):
        await bridge.call("snapshot", 0.05, fragment=0)
    worker.start()
    try:
        snap = await bridge.call("snapshot", 10, fragment=0)
        assert snap.theta.numel() > 0 and worker.error is None
    finally:
        assert worker.stop(10)


def test_pacing_caps_steps_per_wall_clock_round_and_keeps_training() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    task = Task(model=model, make_optimizer=lambda ps: torch.optim.SGD(ps, lr=0.01), batches=Batches(),
                loss=lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1]), evaluate=lambda m: 1.0)
    layout = FragmentLayout.build([(n, tuple(p.shape)) for n, p in model.named_parameters()], 2)
    bridge = Bridge()
    round_s, cap = 0.25, 5
    rounds: dict[int, int] = {}

    def on_step(dt: float, _loss: float, _n: int) -> None:
        r = int((time.time() - dt) // round_s)  # the round the step started in
        rounds[r] = rounds.get(r, 0) + 1

    worker = Worker(task, layout, bridge, 0, 1, on_step, pace=(cap, round_s))
    worker.start()
    try:
        wait_steps(bridge, 4 * cap)  # needs at least four rounds: training goes on across rounds
        # Unpaced, this model takes hundreds of steps per round. +1: a step that starts right at
        # a boundary is counted by the worker in one round and here in the next.
        assert max(rounds.values()) <= cap + 1, rounds
        assert len(rounds) >= 4
        assert bridge.submit("snapshot", fragment=0).result(10).step >= 4 * cap  # commands still served
    finally:
        assert worker.stop(10)


def test_rebase_moves_the_worker_onto_new_outer_parameters_and_keeps_unsent_samples() -> None:
    # A round committed without this worker's contribution (its step outlasted the window):
    # all of its local progress stays, now relative to the new outer parameters.
    worker, bridge, layout = make_worker()
    for _ in range(3):
        worker.train_step()
    params = dict(worker.task.model.named_parameters())
    now = layout.flatten(params, 0)
    old = now - 0.5  # the outer parameters it trained away from
    new = old + 1.0  # what the swarm committed
    samples = list(worker.samples_since)
    bridge.submit("rebase", fragment=0, old=old, new=new)
    worker.serve_commands(block=False)
    assert torch.allclose(layout.flatten(params, 0), new + (now - old))
    assert worker.samples_since == samples  # nothing of it was sent: it goes out next time


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread niceness is a Linux feature")
def test_worker_nice_lowers_the_worker_thread_alone() -> None:
    """``train.worker_nice``: the worker thread yields to the event loop, the rest of the process does not."""
    seen: dict[str, int] = {}
    worker, bridge, _ = make_worker(max_steps=3)
    worker.nice = 7
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    original = worker.train_step

    def step() -> None:
        seen.setdefault("worker", os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        original()

    worker.train_step = step  # type: ignore[method-assign]
    worker.start()
    try:
        wait_steps(bridge, 3)
    finally:
        assert worker.stop(10)
    assert seen["worker"] == min(19, own + 7)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own  # this (the loop's) thread
    assert not lower_thread_priority(0)  # 0 leaves the thread as it is
