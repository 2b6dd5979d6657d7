"""``peerd swarm``: N ``peerd join`` processes on 127.0.0.1, one merged summary, a result table.

Each peer is a real process with its own DHT node, gRPC server and worker, exactly as on
separate machines; only the addresses are loopback. Peer 0 starts the swarm and the others
bootstrap from the multiaddrs in its ready file. Every wait is bounded; on timeout or Ctrl-C the
children get SIGTERM (graceful leave), then SIGKILL.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from peerd.core.config import load_config
from peerd.ops import reference
from peerd.ops.progress import PeerView, Progress
from peerd.ops.status import short_id


def wait_ready_file(path: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> dict[str, Any]:
    """A daemon's ready file (JSON) once written; raises if the daemon exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return dict(json.loads(path.read_text()))
        if proc.poll() is not None:
            raise RuntimeError(f"peer exited with code {proc.returncode} before it was ready")
        time.sleep(0.1)
    raise TimeoutError(f"peer not ready after {timeout_s:.0f}s")


def _stop(procs: list[subprocess.Popen[bytes]], grace_s: float = 30.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def run_swarm(
    peers: int,
    config: str | None,
    overrides: list[str],
    max_steps: int,
    summary_path: str | None,
    workdir: str | None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Run the swarm to completion and return the merged summary (also written to summary_path)."""
    work = Path(workdir or tempfile.mkdtemp(prefix="peerd-swarm-"))
    work.mkdir(parents=True, exist_ok=True)
    timeout_s = timeout_s or 600.0 + 2.0 * max_steps
    base = [sys.executable, "-m", "peerd", "join", "--exit-when-done", "--wait-for-peers", str(peers)]
    if config:
        base += ["--config", config]
    for item in overrides:
        base += ["--set", item]
    base += ["--set", "transport.host=127.0.0.1", "--set", "dht.host=127.0.0.1",
             "--set", f"data.num_shards={peers}", "--set", f"train.max_steps={max_steps}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cfg = load_config(config, overrides)
    sec = cfg.security
    if sec.secret is None and sec.secret_file is None:
        # The local demo is not left open: its peers share a fresh secret nobody else knows.
        env["PEERD_SECURITY__SECRET"] = secrets.token_hex(32)
    procs: list[subprocess.Popen[bytes]] = []
    t0 = time.monotonic()
    console = Console(stderr=True)
    views = [PeerView(i, work / f"peer-{i}.log", work / f"peer-{i}.ready.json") for i in range(peers)]
    progress = Progress(views, max_steps, console)
    # The peers run in their own sessions (a Ctrl-C in the terminal must not hit them before the
    # launcher asks them to leave), so a SIGTERM to the launcher must be turned into the same
    # orderly stop as Ctrl-C, or they would outlive it.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        bootstrap: list[str] = []
        for i in range(peers):
            ready, summ = views[i].ready_file, work / f"peer-{i}.summary.json"
            for stale in (ready, summ):
                stale.unlink(missing_ok=True)
            cmd = base + ["--set", f"data.shard={i}", "--ready-file", str(ready), "--summary", str(summ)]
            cmd += [a for m in bootstrap for a in ("--bootstrap", m)]
            log = open(views[i].log, "wb")  # noqa: SIM115 - closed with the process
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True))
            if i == 0:
                info = wait_ready_file(ready, procs[0], 180)
                bootstrap = list(info["dht_maddrs"])[:2]
                console.print(f"peer 0 up: {info['peer_id']} (logs in {work})")
        deadline = t0 + timeout_s
        with progress:
            while time.monotonic() < deadline:
                for view, p in zip(views, procs, strict=True):
                    view.exit_code = p.poll()
                if all(v.exit_code is not None for v in views):
                    break
                progress.poll()
                time.sleep(1.0)
            else:
                console.print(f"[red]swarm stopping: not finished after {timeout_s:.0f}s (timeout)[/red]")
                for line in progress.unfinished_report():
                    console.print(line, soft_wrap=True, highlight=False)
    except KeyboardInterrupt as exc:
        console.print(f"[red]swarm stopping: interrupted ({exc or 'Ctrl-C'})[/red]")
    except (TimeoutError, RuntimeError) as exc:
        console.print(f"[red]swarm stopping: peer 0: {exc} (log: {views[0].log})[/red]", soft_wrap=True)
    finally:
        if any(p.poll() is None for p in procs):
            console.print("stopping peers (graceful leave, up to 30 s)...")
        _stop(procs)
        signal.signal(signal.SIGTERM, previous)
    entries = []
    mode = "diloco"
    run_id = "peerd"
    for i, p in enumerate(procs):
        path = work / f"peer-{i}.summary.json"
        if path.exists():
            doc = json.loads(path.read_text())
            mode, run_id = doc["mode"], doc["run_id"]
            entry = doc["peers"][0]
        else:
            entry = {"peer_id": None, "exit": f"no summary (exit code {p.returncode})"}
        entry["index"] = i
        entries.append(entry)
    result = {"run_id": run_id, "mode": mode, "wall_s": round(time.monotonic() - t0, 3), "peers": entries}
    if peers > 1:  # the number to beat; one peer is its own reference
        result["solo_reference"] = {"max_steps": max_steps, "entry": reference.lookup(cfg, max_steps)}
    if summary_path:
        Path(summary_path).write_text(json.dumps(result, indent=2))
    return result


def _fmt(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def disagreement(result: dict[str, Any]) -> str | None:
    """In DiLoCo mode every peer must end on one revision and one state hash; what differs, if not.

    (Gossip peers converge without a shared state, so differing hashes are expected there.)
    """
    if result.get("mode") != "diloco":
        return None
    ended = [e for e in result["peers"] if e.get("revision") is not None]
    revisions = sorted({e["revision"] for e in ended})
    hashes = sorted({str(e.get("state_hash")) for e in ended})
    if len(revisions) <= 1 and len(hashes) <= 1:
        return None
    by = ", ".join(f"peer {e['index']}: revision {e['revision']} hash {str(e.get('state_hash'))[:8]}" for e in ended)
    return f"peers ended on different revisions or state hashes ({by})"


def print_table(result: dict[str, Any], console: Console | None = None) -> None:
    """Rich table of per-peer results; fits 80 columns (short ids and hashes, the exit reason folds)."""
    table = Table(title=f"peerd swarm — run {result['run_id']} ({result['mode']}), {result['wall_s']:.1f}s",
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=0)
    for col in ("peer", "steps", "eval loss", "tx/rx MB", "ok/ab", "rev", "hash", "exit"):
        table.add_column(col, no_wrap=col != "exit", overflow="fold", ratio=1 if col == "exit" else None,
                         justify="right" if col in ("steps", "rev") else "left")
    for e in result["peers"]:
        table.add_row(
            f"{e['index']} {short_id(e.get('peer_id'))}", _fmt(e.get("steps")),
            f"{_fmt(e.get('initial_eval_loss'), '.3f')}→{_fmt(e.get('final_eval_loss'), '.3f')}",
            f"{_fmt(e.get('tx_bytes', 0) / 1e6, '.1f')}/{_fmt(e.get('rx_bytes', 0) / 1e6, '.1f')}",
            f"{_fmt(e.get('rounds_committed'))}/{_fmt(e.get('rounds_aborted'))}", _fmt(e.get("revision")),
            str(e.get("state_hash") or "-")[:6], str(e.get("exit")),
        )
    console = console or Console()
    console.print(table)
    solo = result.get("solo_reference")
    if solo is not None:
        console.print(reference.describe(solo["entry"], solo["max_steps"]), highlight=False)  # wraps at 80
