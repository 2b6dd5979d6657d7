"""DHT flood: an outsider's own hivemind node stores forged records under a run's keys; what the victim pays.

In-process DHT nodes on 127.0.0.1: a victim and an honest member (``peerd.net.membership.Membership``,
with or without a swarm secret) and an outsider, a bare hivemind ``DHTNode`` without a validator
(it keeps whatever it is given and serves it back). The outsider stores ``--n`` forged records
under the run's peers key (one subkey each) and as many under plan keys ``plan.<r>``, in store
batches. Kinds of forgery:

- ``garbage``: the sealed record's shape with random key, signature and MAC bytes;
- ``near_valid``: a distinct well-formed RSA public key per record (a random modulus, e=65537),
  the subkey its true peer id, a plausible record body, a random signature: passes every check
  but the MAC (with a secret) or the signature (open swarm);
- ``heavy_e``: like ``near_valid`` with a 2040-bit public exponent, which makes every signature
  check a full-size modular exponentiation (the cheap checks must refuse it first).

Measured per case: the victim's validator time over the flood (process CPU while it ran; the only
code of the victim's that forged records reach at store time), how many it refused, then
``live_records()``, ``read_plans()`` and ``other_runs()`` wall times (median of 5) and whether the
view is exactly the honest peers. The outsider also floods the runs directory key, which is sealed
without the swarm's MAC even in a swarm with a secret.
``--daemons`` instead floods two real ``peerd join`` daemons (with a swarm secret) for
``--seconds`` and counts their committed rounds before and during the flood.

    nice -n 10 python -m bench.dht_flood --out bench/results/dht_flood.json
    nice -n 10 python -m bench.dht_flood --daemons --n 10000 --out bench/results/dht_flood_daemons.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hivemind.dht.node import DHTNode
from hivemind.dht.routing import DHTID
from hivemind.utils import get_dht_time

from peerd.core.config import DhtConfig
from peerd.net.auth import derive_key
from peerd.net.membership import Membership, PeerRecord
from peerd.net.records import RUNS_KEY, peer_id_of

RUN = "flood"
CFG = DhtConfig(host="127.0.0.1", heartbeat_s=0.5, ttl_s=30, op_timeout_s=10)
BATCH = 500  # records per store call: ~400 KB, well under p2pd's 4 MiB message cap


def fake_key(exponent: int | None = None, bits: int = 2048) -> tuple[bytes, int]:
    """A well-formed RSA public key nobody holds the private half of (random odd modulus)."""
    n = secrets.randbits(bits) | (1 << (bits - 1)) | 1
    e = exponent or (secrets.randbits(2040) | 1 | (1 << 2039))
    der = rsa.RSAPublicNumbers(e, n).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der, n


def forged(kind: str, i: int, exp: float) -> tuple[str, dict[str, Any]]:
    """One forged (subkey, sealed value) of ``kind``."""
    if kind == "garbage":
        return f"Qm{secrets.token_hex(20)}", {"s": 1, "body": os.urandom(64), "exp": exp, "pk": os.urandom(294),
                                               "sig": os.urandom(256), "mac": os.urandom(32)}
    pk, n = fake_key(65537 if kind == "near_valid" else None)
    pid = peer_id_of(pk)
    body = msgpack.packb(PeerRecord(pid, f"127.0.0.1:{1000 + i % 60000}", 1, 10**6, "h" * 16, ("a", "b"), 1.0,
                                    10**6, True, False).to_value(), use_bin_type=True)
    sig = (n // 3).to_bytes(256, "big")  # below the modulus: the exponentiation really runs
    return pid, {"s": 1, "body": body, "exp": exp, "pk": pk, "sig": sig, "mac": os.urandom(32)}


def _timed_validator(m: Membership) -> dict[str, float]:
    """Wrap the victim's store-time validator to accumulate its CPU time."""
    validator = m.node.protocol.record_validator  # type: ignore[union-attr]
    acc = {"seconds": 0.0, "calls": 0}
    inner = validator.validate

    def validate(record: Any) -> bool:
        t0 = time.process_time()
        try:
            return inner(record)
        finally:
            acc["seconds"] += time.process_time() - t0
            acc["calls"] += 1

    validator.validate = validate
    return acc


def _held(node: DHTNode, key: str) -> int:
    """How many subkeys ``node`` stores under ``key`` (the outsider keeps all it forged)."""
    item = node.protocol.storage.get(DHTID.generate(source=key))
    return 0 if item is None else len(item.value)


async def _median_time(fn: Any, reps: int = 5) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = await fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


async def flood(node: DHTNode, kind: str, n: int, key: str) -> float:
    """Store ``n`` forged records under ``key``, one subkey each; returns the seconds it took."""
    exp = get_dht_time() + 600
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        items = [forged(kind, i, exp) for i in range(start, min(n, start + BATCH))]
        await asyncio.wait_for(node.store_many([key] * len(items), [v for _, v in items], exp,
                                               subkeys=[s for s, _ in items]), 120)
    return time.perf_counter() - t0


async def one_case(secret: bool, kind: str, n: int) -> dict[str, Any]:
    """Victim + honest member + flooding outsider; what the flood of ``n`` records per key cost the victim."""
    mac = derive_key("flood-secret-0123456789", RUN, "dht") if secret else None
    victim, honest = Membership(CFG, RUN, lambda *_: None, mac), Membership(CFG, RUN, lambda *_: None, mac)
    outsider: DHTNode | None = None
    await victim.start([])
    try:
        await honest.start(await victim.visible_maddrs())
        outsider = await asyncio.wait_for(DHTNode.create(
            initial_peers=await victim.visible_maddrs(), host_maddrs=["/ip4/127.0.0.1/tcp/0"],
            record_validator=None, wait_timeout=5), 60)
        ids = {victim.signer.peer_id, honest.signer.peer_id}  # type: ignore[union-attr]
        for m in (victim, honest):
            await m.heartbeat(PeerRecord(m.signer.peer_id, "127.0.0.1:1", 1, 0, "h", ("a",), 1.0, 0, True, False))
        base_s, base_view = await _median_time(victim.live_records)
        acc = _timed_validator(victim)
        invalid0 = victim.invalid_records
        peers_s = await flood(outsider, kind, n, f"peerd/v1/{RUN}/peers")
        plan_s = await flood(outsider, kind, n, f"peerd/v1/{RUN}/plan.5")
        runs_s = await flood(outsider, kind, n, RUNS_KEY)  # sealed without the swarm's MAC, even with a secret
        refused = victim.invalid_records - invalid0
        read_s, view = await _median_time(victim.live_records)
        plans_s, plans = await _median_time(lambda: victim.read_plans(5, 2))
        runs_read_s, other = await _median_time(victim.other_runs)
        return {
            "secret": secret, "kind": kind, "n": n, "flood_store_s": round(peers_s + plan_s + runs_s, 2),
            "forged_records_sent": 3 * n,
            "victim_refused_at_store": refused, "victim_validator_cpu_s": round(acc["seconds"], 3),
            "victim_validator_us_per_record": round(1e6 * acc["seconds"] / max(1, acc["calls"]), 1),
            "outsider_holds": _held(outsider, f"peerd/v1/{RUN}/peers"),
            "live_records_s_before": round(base_s, 4), "live_records_s_after": round(read_s, 4),
            "read_plans_s_after": round(plans_s, 4), "view_is_honest_peers": view is not None and set(view) == ids,
            "baseline_view_ok": base_view is not None and set(base_view) == ids, "forged_plans_read": len(plans),
            "other_runs_s_after": round(runs_read_s, 4), "other_runs_fooled": other,
            "invalid_records_total": victim.invalid_records,
        }
    finally:
        if outsider is not None:
            try:
                await asyncio.wait_for(outsider.shutdown(), 15)
            except (TimeoutError, Exception):  # noqa: BLE001 - a hung p2pd is killed below
                child = getattr(outsider.p2p, "_child", None)
                if child is not None and child.returncode is None:
                    child.kill()
        await honest.shutdown()
        await victim.shutdown()


def daemons(n: int, seconds: float) -> dict[str, Any]:
    """Two real daemons with a secret; count committed rounds for ``seconds`` before and during a flood."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.conftest import Swarm  # the test suite's launcher: real `peerd join` processes, FAST settings

    committed = 'outcome="committed"'
    with tempfile.TemporaryDirectory(prefix="dht-flood-") as tmp:
        swarm = Swarm(Path(tmp))
        try:
            a = swarm.start([f"run_id={RUN}"])
            a.wait_ready()
            b = swarm.start([f"run_id={RUN}"])
            b.wait_ready()
            deadline = time.monotonic() + 120
            while a.metric_value("peerd_rounds_total", committed) < 1 and time.monotonic() < deadline:
                time.sleep(0.5)
            c0 = a.metric_value("peerd_rounds_total", committed)
            time.sleep(seconds)
            c1 = a.metric_value("peerd_rounds_total", committed)
            inv1 = a.metric_value("peerd_dht_invalid_records_total")

            async def attack() -> float:
                node = await asyncio.wait_for(DHTNode.create(
                    initial_peers=list(a.info["dht_maddrs"]), host_maddrs=["/ip4/127.0.0.1/tcp/0"],
                    record_validator=None, wait_timeout=5), 60)
                try:
                    t0, r = time.monotonic(), 0
                    while time.monotonic() - t0 < seconds:
                        await flood(node, "near_valid", min(n, BATCH), f"peerd/v1/{RUN}/peers")
                        await flood(node, "near_valid", min(n, BATCH), f"peerd/v1/{RUN}/plan.{10**6 + r}")
                        r += 1
                    return r * 2 * min(n, BATCH)
                finally:
                    await asyncio.wait_for(node.shutdown(), 15)

            sent = asyncio.run(attack())
            c2 = a.metric_value("peerd_rounds_total", committed)
            inv2 = a.metric_value("peerd_dht_invalid_records_total")
            alive = all(p.proc.poll() is None for p in (a, b))
        finally:
            swarm.stop_all()
    return {"seconds": seconds, "committed_before": c1 - c0, "committed_during_flood": c2 - c1,
            "forged_records_sent": sent, "victim_invalid_counted_during": inv2 - inv1, "both_alive": alive}


def main() -> None:
    """Run the cases (or ``--daemons``) and write the JSON results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="*", default=[1000, 10000])
    ap.add_argument("--kinds", nargs="*", default=["garbage", "near_valid", "heavy_e"])
    ap.add_argument("--heavy-n", type=int, default=200, help="records for heavy_e (each may cost the victim ms)")
    ap.add_argument("--daemons", action="store_true")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--out", default="bench/results/dht_flood.json")
    args = ap.parse_args()
    if args.daemons:
        result: Any = daemons(max(args.n), args.seconds)
        print(json.dumps(result))
    else:
        result = []
        for secret in (True, False):
            for kind in args.kinds:
                for n in ([args.heavy_n] if kind == "heavy_e" else args.n):
                    row = asyncio.run(one_case(secret, kind, n))
                    print(json.dumps(row), flush=True)
                    result.append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "results": result}, indent=1) + "\n")


if __name__ == "__main__":
    main()
