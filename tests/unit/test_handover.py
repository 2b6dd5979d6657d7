"""HandState over real gRPC: a client hands its state to a reachable joiner; hostile ones are refused, counted."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import torch

from peerd.core.clock import SYSTEM
from peerd.core.config import TransportConfig, load_config
from peerd.core.fragments import FragmentLayout
from peerd.core.state import OuterState
from peerd.mixing.handover import HandOver
from peerd.mixing.sync import serve_state
from peerd.net.peer_record import PeerRecord
from peerd.net.transport import Transport
from peerd.proto.v1 import peer_pb2

LAYOUT = FragmentLayout.build([("w", (40,)), ("b", (8,))], 2)


def _state(seed: int, revision: int) -> OuterState:
    g = torch.Generator().manual_seed(seed)
    st = OuterState(LAYOUT, [torch.randn(n, generator=g) for n in LAYOUT.numels])
    if revision:
        st.install(revision, {f: torch.randn(n, generator=g) for f, n in enumerate(LAYOUT.numels)},
                   {f: torch.randn(n, generator=g) for f, n in enumerate(LAYOUT.numels)})
    return st


class _View:
    peer_id, endpoint, reachable = "joiner", "127.0.0.1:1", True

    def __init__(self, records: dict[str, PeerRecord]) -> None:
        self.records = records

    async def heartbeat(self, ready: bool | None = None, ttl_s: float | None = None) -> bool:
        return True


class _Joiner:
    """The joining mixer's side of the transport's Handler: hand-overs only."""

    def __init__(self, handover: HandOver) -> None:
        self.h = handover

    async def admit_state(self, header: peer_pb2.HandStateHeader) -> float:
        return await self.h.admit(header)

    async def take_state(self, header: peer_pb2.HandStateHeader, payload: bytes, seconds: float) -> None:
        await self.h.take(header, payload, seconds)

    def state_stream_done(self) -> None:
        self.h.done()

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{name} not used")


def test_hand_over_is_verified_like_a_fetch_and_hostile_ones_are_refused() -> None:
    donor_state, joiner_state = _state(1, 7), _state(2, 0)
    record = PeerRecord("donor", "h:1", 1, donor_state.revision, donor_state.state_hash(),
                        donor_state.fragment_hashes, 1.0, 3, True, False, reachable=False)
    cfg = load_config(None, ["transport.state_timeout_s=10"])
    view = _View({"donor": record})
    handover = HandOver(cfg, "joiner", joiner_state, None, view, SYSTEM)  # type: ignore[arg-type]
    # Two members at the donor's revision with another state: the donor is off the majority hash.
    other = _state(3, 7)
    majority = {f"m{i}": PeerRecord(f"m{i}", "h:2", 1, 7, other.state_hash(), other.fragment_hashes, 1.0, 3, True,
                                    False, reachable=False) for i in range(2)}
    refused: list[str] = []

    def header_and_payload() -> tuple[peer_pb2.HandStateHeader, bytes]:
        req = peer_pb2.FetchStateRequest(run_id=cfg.run_id, requester="joiner",
                                         fragment_hashes=list(joiner_state.fragment_hashes))
        state_header, payload = serve_state(donor_state, cfg.run_id, req)
        return peer_pb2.HandStateHeader(run_id=cfg.run_id, donor="donor", state=state_header), payload

    async def go() -> dict[str, Any]:
        joiner = Transport(TransportConfig(host="127.0.0.1", port=0), lambda d, n: None, refused.append,
                           peer_id="joiner")
        donor = Transport(TransportConfig(host="127.0.0.1", port=0), lambda d, n: None, lambda r: None,
                          peer_id="donor")
        port = await joiner.start(_Joiner(handover))  # type: ignore[arg-type]
        ep = f"127.0.0.1:{port}"
        out: dict[str, Any] = {}

        async def attempt(name: str, header: peer_pb2.HandStateHeader, payload: bytes) -> None:
            try:
                out[name] = await donor.hand_state(ep, header, payload, 5.0)
            except grpc.aio.AioRpcError as exc:
                out[name] = (exc.code(), exc.details())

        try:
            header, payload = header_and_payload()
            await attempt("not_waiting", header, payload)
            waiting = asyncio.ensure_future(handover.wait(20.0))
            await asyncio.sleep(0.05)
            forged = peer_pb2.HandStateHeader()
            forged.CopyFrom(header)
            forged.state.fragment_hashes[0] = "0" * 32
            await attempt("not_the_record", forged, payload)
            stranger = peer_pb2.HandStateHeader()
            stranger.CopyFrom(header)
            stranger.donor = "stranger"
            await attempt("stranger", stranger, payload)
            view.records.update(majority)
            await attempt("minority", header, payload)
            for k in majority:
                del view.records[k]
            big = peer_pb2.HandStateHeader()
            big.CopyFrom(header)
            await attempt("too_big", big, payload + bytes(8 * sum(LAYOUT.numels)))
            corrupt = bytearray(payload)
            corrupt[5] ^= 0xFF
            await attempt("corrupt", header, bytes(corrupt))
            out["state_after_refusals"] = (joiner_state.revision, joiner_state.state_hash())
            await attempt("ok", header, payload)
            out["synced"] = await asyncio.wait_for(waiting, 5.0)
        finally:
            for t in (joiner, donor):
                await t.stop(0)
        return out

    out = asyncio.run(go())
    assert out["not_waiting"][0] == grpc.StatusCode.FAILED_PRECONDITION
    assert out["not_the_record"][0] == grpc.StatusCode.FAILED_PRECONDITION
    assert "signed record" in out["not_the_record"][1]
    assert out["stranger"][0] == grpc.StatusCode.PERMISSION_DENIED
    assert out["minority"][0] == grpc.StatusCode.PERMISSION_DENIED and "majority" in out["minority"][1]
    assert out["too_big"][0] == grpc.StatusCode.INVALID_ARGUMENT
    assert out["corrupt"][0] == grpc.StatusCode.INVALID_ARGUMENT and "hash mismatch" in out["corrupt"][1]
    assert out["state_after_refusals"] == (0, _state(2, 0).state_hash())  # nothing installed, nothing half-applied
    assert out["ok"] == (True, "verified; installing")
    synced = out["synced"]
    assert synced.revision == 7 and synced.fragment_hashes == donor_state.fragment_hashes
    assert refused.count("failed_precondition") == 2 and refused.count("permission_denied") == 2
    assert refused.count("invalid_argument") == 2
