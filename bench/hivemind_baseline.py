"""hivemind baseline: ``hivemind.Optimizer`` with local updates (its DiLoCo-like mode), N processes.

Configuration from ``research/hivemind.md`` ("local": ``use_local_updates=True``, parameters
averaged every epoch). Each process builds the same tinylm task as a peerd peer (seed 0,
shard = rank of N) and the same AdamW (same groups, lr, betas), takes ``--steps`` steps of the
same batch size, then evaluates its own model on the shared held-out set; the reported loss is
the mean over peers (with local updates the peers' models differ between averaging rounds).

State averaging uses ``Float16Compression``: hivemind 1.1.12's ``Uniform8BitQuantization``
fails on NumPy >= 2.4 (``int()`` of a 1-element array, see research/hivemind.md) and inside
the Optimizer that failure is silent, so 8-bit would quietly average nothing.

hivemind exposes no byte counter; the runner measures the bytes on the wire (the namespace's
loopback counter, DHT and libp2p framing included) when it runs the peers inside a network
namespace, and reports nothing otherwise.

Worker: ``python -m bench.hivemind_baseline --rank R --world N --steps S --dir DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
STEPS_PER_EPOCH = 75  # averaging every ~75 local steps per peer: a few rounds in a quick run


def _wait_for(path: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s:.0f}s")
        time.sleep(0.1)
    return path.read_text()


def worker(rank: int, world: int, steps: int, d: Path, task_options: dict[str, Any], host: str = "127.0.0.1",
           seconds: float = 0.0, every_s: float = 15.0, matchmaking_s: float = 2.0,
           epoch_steps: int = STEPS_PER_EPOCH) -> None:
    """One hivemind peer; writes ``result-RANK.json``.

    With ``seconds`` it trains for that wall-clock budget from the common start instead of
    ``steps`` steps, copies its model every ``every_s`` seconds and evaluates the copies after
    (``bench.timed``), so the loss curve costs no training time. ``host`` is the address its DHT
    listens on (its namespace's address when the peers sit behind an emulated link).
    """
    import hivemind
    import torch
    from hivemind.compression import Float16Compression

    from bench.ddp import DATA_OPTIONS
    from bench.timed import TimedSnapshots
    from peerd.train.tasks.base import TaskContext
    from peerd.train.tasks.tinylm import parse_options, tinylm

    torch.set_num_threads(1)
    opts = parse_options(task_options)
    task = tinylm(TaskContext(seed=0, shard=rank, num_shards=world, device=torch.device("cpu"),
                              options={**task_options, **DATA_OPTIONS}))
    initial = task.evaluate(task.model)
    initial_peers = None if rank == 0 else json.loads(_wait_for(d / "maddrs.json", 120))
    dht = hivemind.DHT(start=True, initial_peers=initial_peers, host_maddrs=[f"/ip4/{host}/tcp/0"])
    if rank == 0:
        (d / "maddrs.json.tmp").write_text(json.dumps([str(m) for m in dht.get_visible_maddrs()]))
        os.replace(d / "maddrs.json.tmp", d / "maddrs.json")
    params = [p for p in task.model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": opts["weight_decay"]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = hivemind.Optimizer(
        dht=dht, run_id="peerd_bench", batch_size_per_step=opts["batch_size"],
        target_batch_size=world * opts["batch_size"] * epoch_steps,
        optimizer=lambda g: torch.optim.AdamW(g, lr=opts["lr"], betas=(0.9, 0.95)), params=groups,
        use_local_updates=True, average_state_every=1, matchmaking_time=matchmaking_s, averaging_timeout=20.0,
        state_averaging_compression=Float16Compression(), verbose=False)
    (d / f"ready-{rank}").write_text("1")
    for r in range(world):  # common start, as peerd swarm's --wait-for-peers
        _wait_for(d / f"ready-{r}", 180)
    t0 = time.monotonic()
    snaps = TimedSnapshots(task.model, every_s, t0)
    step = 0
    while (time.monotonic() - t0 < seconds) if seconds else step < steps:
        loss = task.loss(task.model, task.batches.next_batch())
        loss.backward()
        opt.step()
        opt.zero_grad()
        step += 1
        if seconds:
            snaps.maybe_take(step)
    train_s = time.monotonic() - t0
    result = {"initial_eval_loss": initial, "final_eval_loss": task.evaluate(task.model),
              "train_s": train_s, "local_epoch": int(opt.local_epoch), "steps": step}
    if seconds:
        result["curve"] = snaps.evaluate(task)
    (d / f"result-{rank}.json").write_text(json.dumps(result))
    # hivemind's shutdown can hang (research/hivemind.md, uvloop and pipe races): the result is
    # written, so give it a bounded try and leave; the runner kills the process group anyway.
    (d / f"done-{rank}").write_text("1")
    for r in range(world):  # keep serving averaging until every peer is done
        try:
            _wait_for(d / f"done-{r}", 60)
        except TimeoutError:
            break
    opt.shutdown()
    dht.shutdown()
    os._exit(0)


def run(world: int, steps: int, workdir: Path, prefix: list[str] | None = None,
        task_options: dict[str, Any] | None = None, timeout_s: float = 900.0,
        rank_args: Callable[[int], list[str]] | None = None,
        popen: Callable[[int, list[str], IO[bytes]], subprocess.Popen[bytes]] | None = None) -> dict[str, Any]:
    """Run ``world`` hivemind peers; returns mean final eval loss, wall time and averaging rounds.

    ``rank_args``: extra worker arguments per rank (``--seconds``, ``--host``...); ``popen``:
    starts rank ``r``'s command with its log file (default: a local process under ``prefix``; the
    WAN race starts each rank in its own emulated host). With ``--seconds`` the peers' eval
    curves come back averaged point by point, ending with the final evaluation.
    """
    from bench.launch import stop_all
    from bench.timed import mean_curves

    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("*"):
        if stale.is_file() and not stale.name.endswith(".log"):
            stale.unlink()

    def local(r: int, cmd: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*(prefix or []), *cmd], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})

    procs = []
    t0 = time.monotonic()
    try:
        for r in range(world):
            cmd = [sys.executable, "-m", "bench.hivemind_baseline", "--rank", str(r), "--world", str(world),
                   "--steps", str(steps), "--dir", str(workdir), "--task-options", json.dumps(task_options or {}),
                   *(rank_args(r) if rank_args else [])]
            with open(workdir / f"hivemind-{r}.log", "wb") as log:
                procs.append((popen or local)(r, cmd, log))
        deadline = t0 + timeout_s
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            if all((workdir / f"result-{r}.json").exists() for r in range(world)):
                break  # every peer has its number; whatever hivemind does at exit is not timed
            time.sleep(0.2)
        wall = time.monotonic() - t0
        time.sleep(1.0)
    finally:
        stop_all(procs, grace_s=15)
    results = [json.loads(p.read_text()) for p in sorted(workdir.glob("result-*.json"))]
    if len(results) < world:
        return {"error": f"{world - len(results)} of {world} hivemind peers produced no result; logs in {workdir}"}
    final = sum(r["final_eval_loss"] for r in results) / world
    out = {"final_eval_loss": final, "final_eval_loss_per_peer": [r["final_eval_loss"] for r in results],
           "initial_eval_loss": results[0]["initial_eval_loss"], "wall_s": round(wall, 3),
           "train_s": round(max(r["train_s"] for r in results), 3), "steps": [r["steps"] for r in results],
           "averaging_rounds": max(r["local_epoch"] for r in results),
           "config": f"use_local_updates, target_batch_size=N*batch*{STEPS_PER_EPOCH}, matchmaking 2 s, fp16 state"}
    if all("curve" in r for r in results):
        out["curve"] = [*mean_curves([r["curve"] for r in results]),
                        {"t_s": out["train_s"], "step": round(sum(out["steps"]) / world), "eval_loss": final}]
    return out


def main() -> None:
    """Entry point of one peer."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--task-options", default="{}")
    ap.add_argument("--host", default="127.0.0.1", help="address the DHT listens on")
    ap.add_argument("--seconds", type=float, default=0.0, help="train for this wall-clock budget instead of --steps")
    ap.add_argument("--every-s", type=float, default=15.0, help="with --seconds: eval curve interval")
    ap.add_argument("--matchmaking-s", type=float, default=2.0, help="hivemind's matchmaking_time")
    ap.add_argument("--epoch-steps", type=int, default=STEPS_PER_EPOCH, help="local steps per peer per epoch")
    a = ap.parse_args()
    worker(a.rank, a.world, a.steps, Path(a.dir), json.loads(a.task_options), a.host, a.seconds, a.every_s,
           a.matchmaking_s, a.epoch_steps)


if __name__ == "__main__":
    sys.exit(main())
