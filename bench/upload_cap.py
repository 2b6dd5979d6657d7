"""Upload cap: ``python -m bench.upload_cap --caps 0 4 16 --seconds 12``.

Two hosts of a :class:`bench.wan.WanEmulator`: host 1 runs a peerd :class:`~peerd.net.transport.Transport`
server that accepts every shard; host 0 runs a Transport with ``transport.max_upload_mbit`` set to
each cap (0: uncapped) and pushes 4 MiB shards, four at a time, for ``--seconds``. The upload rate
is measured twice: by the sender (payload bytes / time) and on the wire (the delay line's byte
counter of the 0->1 link, which includes TCP/IP and HTTP/2 overhead). Results go to
``bench/results/upload_cap.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "upload_cap.json"
PORT = 50777
SHARD = 4 << 20


class _Sink:
    async def admit(self, header: Any) -> float:
        return time.time() + 60

    async def deliver(self, header: Any, payload: bytes) -> None:
        return None

    async def state_for(self, request: Any) -> Any:
        raise NotImplementedError

    async def reduced_for(self, request: Any) -> Any:
        raise NotImplementedError


def _transport(host: str, cap: float) -> Any:
    from peerd.core.config import TransportConfig
    from peerd.net.transport import Transport

    cfg = TransportConfig(host=host, port=PORT if cap < 0 else 0, max_upload_mbit=max(cap, 0.0))
    return Transport(cfg, lambda d, n: None, lambda r: None)


async def _serve(host: str) -> None:
    t = _transport(host, -1)
    await t.start(_Sink())
    print("ready", flush=True)
    await asyncio.sleep(3600)


async def _send(host: str, dst: str, cap: float, seconds: float) -> None:
    from peerd.proto.v1 import peer_pb2

    t = _transport(host, cap)
    payload = os.urandom(SHARD)
    sent = 0
    end = time.monotonic() + seconds

    async def lane() -> None:
        nonlocal sent
        while time.monotonic() < end:
            header = peer_pb2.ShardHeader(run_id="bench", sender="a", kind=peer_pb2.PAYLOAD_KIND_CONTRIBUTION)
            await t.push_shard(f"{dst}:{PORT}", header, payload, 120)
            sent += len(payload)

    t0 = time.monotonic()
    await asyncio.gather(*(lane() for _ in range(4)))
    print(json.dumps({"payload_bytes": sent, "seconds": time.monotonic() - t0}), flush=True)


def run(caps: list[float], seconds: float, profile: str) -> list[dict[str, Any]]:
    """One row per cap: measured sender and wire rates against the cap."""
    from bench.wan import WanEmulator

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rows = []
    with WanEmulator(2, profile, seed=1) as wan:
        server = wan.popen(1, [sys.executable, "-m", "bench.upload_cap", "--serve", wan.addr(1)], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE)
        assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
        for cap in caps:
            before = wan.stats()["links"].get("0->1", {}).get("bytes", 0)
            t0 = time.monotonic()
            res = wan.run_in(0, [sys.executable, "-m", "bench.upload_cap", "--send", wan.addr(0), wan.addr(1),
                                 str(cap), str(seconds)], timeout=seconds + 300, cwd=ROOT, env=env)
            wall = time.monotonic() - t0
            wire = wan.stats()["links"].get("0->1", {}).get("bytes", 0) - before
            out = json.loads(res.stdout.strip().splitlines()[-1])
            sender = 8 * out["payload_bytes"] / out["seconds"] / 1e6
            # wire bytes over the sender's own transfer time (process start-up excluded)
            wire_mbit = 8 * wire / out["seconds"] / 1e6
            rows.append({"cap_mbit": cap or None, "sender_mbit": round(sender, 2), "wire_mbit": round(wire_mbit, 2),
                         "wire_vs_cap": round(wire_mbit / cap, 3) if cap else None,
                         "payload_vs_cap": round(sender / cap, 3) if cap else None,
                         "seconds": round(out["seconds"], 1), "wall_s": round(wall, 1), "profile": profile})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Parse arguments; ``--serve``/``--send`` are the two halves run inside the namespaces."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--serve"]:
        asyncio.run(_serve(args[1]))
        return 0
    if args[:1] == ["--send"]:
        asyncio.run(_send(args[1], args[2], float(args[3]), float(args[4])))
        return 0
    ap = argparse.ArgumentParser(prog="python -m bench.upload_cap", description=__doc__)
    ap.add_argument("--caps", type=float, nargs="+", default=[0.0, 4.0, 16.0])
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--profile", default="lan")
    a = ap.parse_args(args)
    rows = run(a.caps, a.seconds, a.profile)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"command": "python -m bench.upload_cap " + " ".join(args), "rows": rows,
                                   "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
