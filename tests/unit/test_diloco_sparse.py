"""DiLoCo rounds with the sparse codec keep bit-identical shared state on every member.

Four in-process Diloco sinks (no network) run the real encode / admit / deliver / reduce / commit
path of several rounds: each member's contribution is top-k sparse with error feedback, each owner
re-encodes its reduced shard once (``codec.reduced_spec``) and the same bytes reach every member.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from peerd.core import codec
from peerd.core.bridge import Snapshot
from peerd.core.config import load_config
from peerd.core.fragments import FragmentLayout, shard_bounds
from peerd.core.schedule import Candidate, make_plan, rendezvous_order
from peerd.core.state import OuterState
from peerd.mixing.diloco import Diloco
from peerd.mixing.inbox import CONTRIB, REDUCED, Shard
from peerd.net.transport import checksum
from tests.fakes import make_diloco

SHAPES = [("blocks.0.w", (48, 48)), ("blocks.1.w", (48, 48)), ("head.w", (10, 48))]
NAMES = ("p0", "p1", "p2", "p3")


def _swarm(codec_name: str, *extra: str) -> list[Diloco]:
    cfg = load_config(None, ["round.round_s=30", f"mixing.codec={codec_name}", "mixing.sparse_density=0.05",
                             "mixing.outer_lr=0.8", "mixing.outer_momentum=0.5", *extra])
    layout = FragmentLayout.build(SHAPES, 2)
    init = [torch.randn(n, generator=torch.Generator().manual_seed(7)) for n in layout.numels]
    return [make_diloco(cfg, name, OuterState(layout, init)) for name in NAMES]


def _plan(swarm: list[Diloco], r: int):
    d0 = swarm[0]
    cands = [Candidate(d.peer_id, f"127.0.0.1:{1 + i}", d.state.revision, d.state.state_hash(), True, False)
             for i, d in enumerate(swarm)]
    publisher = rendezvous_order(d0.cfg.run_id, r, NAMES)[0]
    now = time.time()
    plan = make_plan(d0.cfg.run_id, r, d0.mix.num_fragments, publisher, cands, d0.cfg.round.round_s, 0.9, now)
    assert plan is not None
    return type(plan)(**{**plan.__dict__, "collect_deadline": now + 20, "deadline": now + 25})


async def _send(sender: Diloco, to: Diloco, plan, kind: int, shard: int, weight: float, payload: bytes,
                contributors: tuple[str, ...] = ()) -> None:
    rs = to.inbox.get(plan.round)
    header = sender.inbox.header(plan, kind, shard, rs.bounds[shard][1] - rs.bounds[shard][0], weight, contributors)
    header.payload_bytes, header.checksum = len(payload), checksum(payload)
    await to.admit(header)  # the receiver's own size check: the payload size follows from numel alone
    await to.deliver(header, payload)


async def _round(swarm: list[Diloco], r: int, step: int, commit: bool = True) -> set[bytes]:
    plan = _plan(swarm, r)
    p, n = plan.fragment, len(plan.members)
    by_name = {d.peer_id: d for d in swarm}
    members = [by_name[m] for m in plan.members]
    rounds = [d.inbox.open_round(plan) for d in members]
    pending = {}
    for i, d in enumerate(members):
        # Every member trained differently: its worker is the outer state plus its own drift.
        drift = torch.randn(d.state.layout.numels[p], generator=torch.Generator().manual_seed(100 * step + i)) * 0.01
        snap = Snapshot(token=step, fragment=p, theta=d.state.theta(p) - drift, samples=16 + i, step=step)
        payloads, pending[d.peer_id] = d._encode_contribution(p, snap, rounds[i].bounds)
        lo, hi = rounds[i].bounds[i]
        rounds[i].contributions[d.peer_id] = Shard(float(snap.samples), codec.decode(
            payloads[i], d.mix.codec, hi - lo, d.mix.block_size, density=d.mix.sparse_density))
        for j, other in enumerate(members):
            if j != i:
                await _send(d, other, plan, CONTRIB, j, float(snap.samples), payloads[j])
    reduced_payloads = set()
    for i, d in enumerate(members):
        red = d._reduce(rounds[i])
        rounds[i].reduced[i] = red
        reduced_payloads.add(red.payload)
        for j, other in enumerate(members):
            if j != i:
                await _send(d, other, plan, REDUCED, i, red.weight, red.payload, red.contributors)
    for i, d in enumerate(members):
        assert len(rounds[i].reduced) == n
        if commit:
            d._commit(rounds[i], pending[d.peer_id])
    return reduced_payloads


@pytest.mark.parametrize("codec_name", ["sparse", "sparse8", "int8"])
def test_sparse_rounds_keep_bit_identical_state(codec_name: str) -> None:
    swarm = _swarm(codec_name)
    before = swarm[0].state.theta(0).clone()
    r0 = int(time.time() // 30)

    async def main() -> None:
        for k in range(4):
            reduced = await _round(swarm, r0 + k, k)
            assert len(reduced) == 4  # one payload per owner
            hashes = {d.state.state_hash() for d in swarm}
            assert len(hashes) == 1, f"round {k}: members disagree"
            assert {d.state.revision for d in swarm} == {k + 1}

    asyncio.run(main())
    assert not torch.equal(swarm[0].state.theta(0), before)  # the rounds moved the state
    # Error feedback: the unsent part waits in the residuals (mostly non-zero for a sparse codec).
    share_kept = float((swarm[0].residuals[0] != 0).float().mean())
    assert share_kept > (0.5 if codec_name.startswith("sparse") else 0.0)


@pytest.mark.parametrize("codec_name", ["sparse", "sparse8"])
def test_sparse_reduced_mean_with_owner_feedback(codec_name: str) -> None:
    """mixing.reduced_density: owners top-k the mean; state stays identical and nothing is lost."""
    swarm = _swarm(codec_name, "mixing.reduced_density=0.05")
    r0 = int(time.time() // 30)
    assert codec.reduced_spec(codec_name, 0.05, 4, 256, 0.05) == (codec_name, 0.05)

    async def main() -> None:
        for k in range(4):
            before = {d.peer_id: [t.clone() for t in d.owner_residuals] for d in swarm}
            plan = _plan(swarm, r0 + k)
            reduced = await _round(swarm, r0 + k, k)
            assert len(reduced) == 4
            assert len({d.state.state_hash() for d in swarm}) == 1, f"round {k}: members disagree"
            for d in swarm:  # each owner: what it sent plus what it kept is its mean plus its old residual
                rs = d.inbox.get(plan.round)
                lo, hi = rs.bounds[rs.me]
                mean, total = torch.zeros(hi - lo), 0.0
                for c in rs.contributions.values():
                    mean += c.values * c.weight
                    total += c.weight
                mean /= total
                sent = rs.reduced[rs.me].values
                assert len(rs.reduced[rs.me].payload) == codec.encoded_size(codec_name, hi - lo, 256, 0.05)
                assert int((sent != 0).sum()) <= -(-(hi - lo) // 256) * round(0.05 * 256)
                kept = d.owner_residuals[plan.fragment][lo:hi]
                old = before[d.peer_id][plan.fragment][lo:hi]
                torch.testing.assert_close(sent + kept, mean + old, rtol=0, atol=1e-6)
                assert float(kept.abs().sum()) > 0  # a sparse mean leaves something for later

    asyncio.run(main())


def test_aborted_round_leaves_owner_residual() -> None:
    swarm = _swarm("sparse", "mixing.reduced_density=0.05")
    r0 = int(time.time() // 30)

    async def main() -> None:
        await _round(swarm, r0, 0)
        kept = [[t.clone() for t in d.owner_residuals] for d in swarm]
        assert any(float(t.abs().sum()) > 0 for t in kept[0])
        hashes = {d.state.state_hash() for d in swarm}
        await _round(swarm, r0 + 1, 1, commit=False)
        for d, old in zip(swarm, kept, strict=True):
            assert all(torch.equal(a, b) for a, b in zip(d.owner_residuals, old, strict=True))
        assert {d.state.state_hash() for d in swarm} == hashes

    asyncio.run(main())


@pytest.mark.parametrize("decay", [1.0, 0.8])
def test_error_feedback_decay_scales_the_old_residual(decay: float) -> None:
    """mixing.error_feedback_decay: the contribution encodes delta + decay x residual; an aborted
    round leaves the residual as it was; state stays bit-identical on every member."""
    swarm = _swarm("sparse", f"mixing.error_feedback_decay={decay}")
    r0 = int(time.time() // 30)

    async def main() -> None:
        for k in range(2):  # fills the residuals of both fragments
            await _round(swarm, r0 + k, k)
        d = swarm[0]
        p = _plan(swarm, r0 + 2).fragment
        old = d.residuals[p].clone()
        assert float(old.abs().sum()) > 0
        drift = torch.randn(d.state.layout.numels[p], generator=torch.Generator().manual_seed(5)) * 0.01
        snap = Snapshot(token=9, fragment=p, theta=d.state.theta(p) - drift, samples=16, step=9)
        bounds = shard_bounds(d.state.layout.numels[p], _plan(swarm, r0 + 2).owners, d.mix.block_size)
        delta = d.state.theta(p) - snap.theta
        payloads, pending = d._encode_contribution(p, snap, bounds)
        assert torch.equal(d.residuals[p], old)  # encoding alone changes nothing
        for (lo, hi), payload in zip(bounds, payloads, strict=True):
            want, want_res = codec.encode_with_feedback(delta[lo:hi], old[lo:hi] * decay, "sparse",
                                                        d.mix.block_size, d.mix.sparse_density)
            assert payload == want
            torch.testing.assert_close(pending[lo:hi], want_res, rtol=0, atol=0)
        hashes = {x.state.state_hash() for x in swarm}
        await _round(swarm, r0 + 2, 2, commit=False)
        assert torch.equal(d.residuals[p], old) and {x.state.state_hash() for x in swarm} == hashes
        await _round(swarm, r0 + 2, 2)
        assert len({x.state.state_hash() for x in swarm}) == 1

    asyncio.run(main())


@pytest.mark.parametrize("unsent", ["residual", "worker"])
def test_unsent_progress_stays_in_the_worker_or_the_residual(unsent: str) -> None:
    """mixing.unsent: "worker" keeps what a contribution did not carry out of the residual and in
    the merge's base (outer minus unsent); shared state is bit-identical either way."""
    swarm = _swarm("sparse", f"mixing.unsent={unsent}")
    r0 = int(time.time() // 30)

    async def main() -> None:
        for k in range(3):
            await _round(swarm, r0 + k, k)
            assert len({d.state.state_hash() for d in swarm}) == 1, f"round {k}: members disagree"
        d = swarm[0]
        kept = sum(float(r.abs().sum()) for r in d.residuals)
        assert (kept == 0) == (unsent == "worker")
        pending = torch.randn(d.state.layout.numels[0], generator=torch.Generator().manual_seed(3))
        want = d.state.theta(0) - pending if unsent == "worker" else d.state.theta(0)
        assert torch.equal(d._merge_theta(0, pending), want)
        assert torch.equal(d._merge_theta(0, None), d.state.theta(0))  # weightless: nothing to keep

    asyncio.run(main())


def test_a_restored_residual_is_carried_once_under_unsent_worker() -> None:
    """A checkpoint written under unsent=residual holds a residual; resumed under unsent=worker it
    goes out with the next contribution of its fragment and is then cleared, not re-added each round."""
    swarm = _swarm("sparse", "mixing.unsent=worker")
    for d in swarm:
        d.restore({"residuals": [torch.full((n,), 0.01) for n in d.state.layout.numels]})
    r0 = int(time.time() // 30)

    async def main() -> None:
        for k in range(2):  # one round per fragment (plans take fragments round-robin)
            await _round(swarm, r0 + k, k)
            assert len({d.state.state_hash() for d in swarm}) == 1
        for d in swarm:
            assert all(float(r.abs().sum()) == 0 for r in d.residuals)

    asyncio.run(main())
