"""DDP baseline: ``torch.distributed`` (gloo) all-reduce of gradients every step, N processes.

Each rank builds the *same* task as a ``peerd swarm`` peer would (``peerd.train.tasks.tinylm`` with
seed 0, shard = rank of N, the daemon's default data options), wraps the model in
``DistributedDataParallel`` and takes ``--steps`` inner steps with the task's own optimizer, so
samples per peer and in total match the peerd runs. Rank 0 evaluates the final model on the
held-out set shared by every method.

Bytes are counted analytically, not measured: a ring all-reduce sends ``2 (N-1) / N`` times the
gradient bytes per step per rank (reduce-scatter then all-gather); gloo's algorithm choice may
differ, but no all-reduce sends less. The runner also measures the wire bytes when it runs the
ranks inside a network namespace (see ``bench.convergence``).

Worker: ``python -m bench.ddp --rank R --world N --port P --steps S --out FILE`` (``--seconds T
--master ADDR`` for a wall-clock budget over a network, as ``bench.wan_race`` runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The daemon passes these data options to the task (peerd/core/config.py DataConfig defaults).
DATA_OPTIONS = {"max_corpus_bytes": 4_000_000, "heldout_fraction": 0.02}


def worker(rank: int, world: int, port: int, steps: int, out: str, task_options: dict[str, Any],
           master: str = "127.0.0.1", seconds: float = 0.0, every_s: float = 15.0) -> None:
    """One DDP rank: train ``steps`` steps (or for ``seconds``), rank 0 writes eval loss and counts to ``out``.

    With ``seconds`` the ranks train for that wall-clock budget from a common barrier. Every
    rank must take the same number of steps (each step is one all-reduce), so every 10 steps
    they all-reduce one flag, "my budget is spent", and stop together; that extra all-reduce
    costs one small collective per 10 steps. Rank 0 copies the model every ``every_s`` seconds
    and evaluates the copies afterwards (``bench.timed``): the eval curve costs no training time.
    """
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from bench.timed import TimedSnapshots
    from peerd.train.tasks.base import TaskContext
    from peerd.train.tasks.tinylm import tinylm

    torch.set_num_threads(1)  # as the peers (train.threads=1): same cores per process
    dist.init_process_group("gloo", init_method=f"tcp://{master}:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    try:
        task = tinylm(TaskContext(seed=0, shard=rank, num_shards=world, device=torch.device("cpu"),
                                  options={**task_options, **DATA_OPTIONS}))
        model = DistributedDataParallel(task.model)
        opt = task.make_optimizer(model.parameters())
        numel = sum(p.numel() for p in task.model.parameters())
        initial = task.evaluate(task.model) if rank == 0 else None
        dist.barrier()  # a common start for the wall-clock budget
        t0 = time.monotonic()
        snaps = TimedSnapshots(task.model, every_s, t0)
        step = 0
        while seconds or step < steps:
            if seconds and step % 10 == 0:
                spent = torch.tensor([1.0 if time.monotonic() - t0 >= seconds else 0.0])
                dist.all_reduce(spent, op=dist.ReduceOp.MAX)
                if spent.item() > 0:
                    break
            loss = task.loss(model, task.batches.next_batch())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if seconds and rank == 0:
                snaps.maybe_take(step)
        train_s = time.monotonic() - t0
        if rank == 0:
            final = task.evaluate(task.model)
            doc = {"initial_eval_loss": initial, "final_eval_loss": final, "numel": numel, "train_s": train_s,
                   "steps": step}
            if seconds:
                doc["curve"] = snaps.evaluate(task)
            Path(out).write_text(json.dumps(doc))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(world: int, steps: int, workdir: Path, prefix: list[str] | None = None,
        task_options: dict[str, Any] | None = None, timeout_s: float = 900.0) -> dict[str, Any]:
    """Run ``world`` ranks to completion; returns eval loss, analytic bytes per peer and wall time."""
    from bench.launch import stop_all

    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "ddp.json"
    out.unlink(missing_ok=True)
    port = _free_port()  # inside a fresh namespace every port is free; on the host this one is
    opts = json.dumps(task_options or {})
    procs = []
    t0 = time.monotonic()
    try:
        for r in range(world):
            cmd = [*(prefix or []), sys.executable, "-m", "bench.ddp", "--rank", str(r), "--world", str(world),
                   "--port", str(port), "--steps", str(steps), "--out", str(out), "--task-options", opts]
            with open(workdir / f"ddp-{r}.log", "wb") as log:
                procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True,
                                              env={**os.environ, "PYTHONPATH": str(ROOT)}))
        deadline = t0 + timeout_s
        for p in procs:
            p.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        stop_all(procs, grace_s=10)
    wall = time.monotonic() - t0
    if not out.exists():
        return {"error": f"DDP ranks failed (exit codes {[p.returncode for p in procs]}); logs in {workdir}"}
    res = json.loads(out.read_text())
    payload = 2 * (world - 1) / world * 4 * res["numel"] * steps
    return {"final_eval_loss": res["final_eval_loss"], "initial_eval_loss": res["initial_eval_loss"],
            "tx_bytes_per_peer": payload, "bytes_method": "analytic: 2(N-1)/N x 4 B x params x steps (ring all-reduce)",
            "wall_s": round(wall, 3), "train_s": round(res["train_s"], 3), "numel": res["numel"]}


def main() -> None:
    """Entry point of one rank."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--task-options", default="{}")
    ap.add_argument("--master", default="127.0.0.1", help="rank 0's address (the rendezvous)")
    ap.add_argument("--seconds", type=float, default=0.0, help="train for this wall-clock budget instead of --steps")
    ap.add_argument("--every-s", type=float, default=15.0, help="with --seconds: eval curve interval")
    a = ap.parse_args()
    worker(a.rank, a.world, a.port, a.steps, a.out, json.loads(a.task_options), a.master, a.seconds, a.every_s)


if __name__ == "__main__":
    sys.exit(main())
