"""State sync: donors serve their outer state; joiners and laggards fetch what differs.

The donor snapshots revision, hashes and the requested fragments under one lock, so what it
sends is one consistent revision even if it commits a round meanwhile. The receiver verifies
every fragment against the donor's hash and checks that the fragments it did not receive already
match; only then is the state installed, all at once (``OuterState.install``).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import numpy as np
import torch

from peerd.core.fragments import fragment_hash
from peerd.core.state import OuterState
from peerd.net.transport import Rejected
from peerd.proto.v1 import peer_pb2


class SyncError(RuntimeError):
    """A donor's state failed verification or the transfer failed."""


@dataclass(frozen=True)
class SyncedState:
    """Verified donor state, ready to install."""

    revision: int
    theta: dict[int, torch.Tensor]
    momentum: dict[int, torch.Tensor]
    nbytes: int
    seconds: float
    fragment_hashes: tuple[str, ...] = ()  # the donor's hashes at that revision


def serve_state(
    state: OuterState, run_id: str, request: peer_pb2.FetchStateRequest
) -> tuple[peer_pb2.StateHeader, bytes]:
    """Donor side: snapshot and serialise the fragments whose hash differs from the caller's."""
    if request.run_id != run_id:
        raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "wrong run_id")
    if len(request.fragment_hashes) > state.layout.num_fragments:
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "too many fragment hashes")
    if any(f >= state.layout.num_fragments for f in request.fragments) or len(request.fragments) > 4096:
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "fragment id out of range")
    wanted = set(request.fragments) or set(range(state.layout.num_fragments))
    snap = state.snapshot()
    theirs = list(request.fragment_hashes) + [""] * (state.layout.num_fragments - len(request.fragment_hashes))
    send = [f for f, h in enumerate(snap.fragment_hashes) if f in wanted and theirs[f] != h]
    parts: list[bytes] = []
    for f in send:
        parts.append(snap.theta[f].numpy().tobytes())
        parts.append(snap.momentum[f].numpy().tobytes())
    payload = b"".join(parts)
    header = peer_pb2.StateHeader(
        revision=snap.revision, fragment_hashes=list(snap.fragment_hashes), fragments=send,
        numels=[state.layout.numels[f] for f in send], total_bytes=len(payload),
    )
    return header, payload


def verify_state(state: OuterState, header: peer_pb2.StateHeader, payload: bytes, seconds: float,
                 wanted: set[int] | None = None, local: tuple[str, ...] | None = None) -> SyncedState:
    """Receiver side: check a donor reply (for the ``wanted`` fragments, default all) against its hashes.

    Fragments not sent must equal ``local`` (default: ``state``'s own hashes; a gossip joiner's
    claim passes those of the copy it holds but has not installed yet).

    Raises:
        SyncError: shapes, sizes or hashes do not match (nothing is installed).
    """
    layout = state.layout
    if len(header.fragment_hashes) != layout.num_fragments:
        raise SyncError("donor has a different fragment layout")
    if len(header.fragments) != len(header.numels) or len(set(header.fragments)) != len(header.fragments):
        raise SyncError("malformed state header")
    expected = 0
    for f, n in zip(header.fragments, header.numels, strict=True):
        if not 0 <= f < layout.num_fragments or n != layout.numels[f]:
            raise SyncError(f"fragment {f}: shape differs from the local model")
        expected += 8 * n
    if expected != header.total_bytes or len(payload) != expected:
        raise SyncError("state payload size mismatch")
    theta, momentum, offset = {}, {}, 0
    for f, n in zip(header.fragments, header.numels, strict=True):
        t = torch.from_numpy(np.frombuffer(payload, dtype="<f4", count=n, offset=offset).copy())
        offset += 4 * n
        m = torch.from_numpy(np.frombuffer(payload, dtype="<f4", count=n, offset=offset).copy())
        offset += 4 * n
        if fragment_hash(t, m) != header.fragment_hashes[f]:
            raise SyncError(f"fragment {f}: hash mismatch after transfer")
        theta[f], momentum[f] = t, m
    local = state.fragment_hashes if local is None else local
    for f in wanted if wanted is not None else range(layout.num_fragments):
        if f not in theta and local[f] != header.fragment_hashes[f]:
            raise SyncError(f"fragment {f}: not sent but differs (donor changed?)")
    return SyncedState(header.revision, theta, momentum, len(payload), seconds, tuple(header.fragment_hashes))


def request_for(state: OuterState, run_id: str, peer_id: str, fragments: list[int] | None = None
                ) -> peer_pb2.FetchStateRequest:
    """The FetchState request describing what this peer already has (and which fragments to consider)."""
    return peer_pb2.FetchStateRequest(run_id=run_id, requester=peer_id, fragment_hashes=list(state.fragment_hashes),
                                      fragments=fragments or [])


def merge_parts(parts: list[SyncedState], local_hashes: tuple[str, ...]) -> SyncedState:
    """Combine per-donor parts of one revision into one state to install.

    Raises:
        SyncError: the parts come from different revisions (a donor committed meanwhile), or a
            fragment nobody sent differs locally from the donors' hash (the result would be a mix).
    """
    if len({p.revision for p in parts}) != 1 or len({p.fragment_hashes for p in parts}) != 1:
        raise SyncError("donors answered at different revisions or disagree on hashes")
    theta: dict[int, torch.Tensor] = {}
    momentum: dict[int, torch.Tensor] = {}
    for p in parts:
        theta.update(p.theta)
        momentum.update(p.momentum)
    for f, h in enumerate(parts[0].fragment_hashes):
        if f not in theta and local_hashes[f] != h:
            raise SyncError(f"fragment {f}: not sent but differs from the donors")
    return SyncedState(parts[0].revision, theta, momentum, sum(p.nbytes for p in parts),
                       max(p.seconds for p in parts), parts[0].fragment_hashes)
