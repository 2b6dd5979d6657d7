"""Hypothesis fuzzing of every decoder that sees network bytes: each fails only with its documented error.

Stream chunks (protobuf parse and the server's chunk reader), codec payloads, sealed DHT records
(and the DHT-level validator), peer records and round plans.
"""

from __future__ import annotations

import asyncio
import struct
import time
from types import SimpleNamespace

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric import rsa
from google.protobuf.message import DecodeError
from hivemind.dht.validation import DHTRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerd.core import codec
from peerd.core.schedule import Candidate, PlanError, make_plan, plan_from_record
from peerd.net.pacing import Pacer
from peerd.net.peer_record import PeerRecord
from peerd.net.records import RecordError, SealValidator, Signer, open_sealed
from peerd.net.transport import Rejected, checksum
from peerd.net.wire import read_payload as _read_payload
from peerd.proto.v1 import peer_pb2

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SIGNER = Signer(rsa.generate_private_key(public_exponent=65537, key_size=2048), mac_key=b"k" * 32)
KEY = "peerd/v1/run/peers"
leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20) | st.binary(
    max_size=40)
anything = st.recursive(leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                           max_size=4), max_leaves=12)


@given(st.binary(max_size=512))
@FUZZ
def test_stream_chunk_protobuf_parse(raw: bytes) -> None:
    for cls in (peer_pb2.ShardChunk, peer_pb2.StateChunk, peer_pb2.FetchStateRequest):
        try:
            msg = cls.FromString(raw)
        except DecodeError:
            continue
        # Whatever parses is a well-formed message: it survives its own round trip unchanged.
        assert cls.FromString(msg.SerializeToString()) == msg


chunk = st.one_of(st.binary(max_size=64).map(lambda b: peer_pb2.ShardChunk(data=b)),
                  st.just(peer_pb2.ShardChunk(header=peer_pb2.ShardHeader(run_id="x"))),
                  st.just(peer_pb2.ShardChunk()))


@given(st.integers(0, 256), st.lists(chunk, max_size=8), st.booleans())
@FUZZ
def test_stream_chunk_reader_fails_only_with_a_refusal(announced: int, chunks: list, good_sum: bool) -> None:
    data = b"".join(c.data for c in chunks)
    header = peer_pb2.ShardHeader(payload_bytes=announced, checksum=checksum(data) if good_sum else b"x")
    t = SimpleNamespace(cfg=SimpleNamespace(chunk_timeout_s=1.0), down=Pacer(0))

    async def stream():
        for c in chunks:
            yield c

    try:
        out = asyncio.run(_read_payload(t, header, time.time() + 5, stream()))  # type: ignore[arg-type]
    except Rejected:
        return
    assert len(out) == announced and checksum(out) == header.checksum


@given(st.binary(max_size=600), st.sampled_from([*codec.CODECS, "pickle", ""]), st.integers(-2, 300),
       st.sampled_from([0, 7, 8, 16, 256, 70000]))
@FUZZ
def test_codec_payload_decode(raw: bytes, name: str, numel: int, block: int) -> None:
    try:
        values = codec.decode(raw, name, numel, block)
    except codec.CodecError:
        return
    assert values.numel() == numel


@given(st.sampled_from(["sparse", "sparse8"]), st.integers(0, 300), st.sampled_from([8, 9, 256, 300]),
       st.sampled_from([0.01, 0.03, 0.25, 1.0]), st.booleans(), st.data())
@FUZZ
def test_sparse_payload_decode(name: str, numel: int, block: int, density: float, exact: bool, data) -> None:
    """Random bytes, mostly of the exact size so the index and value checks are reached."""
    size = codec.encoded_size(name, numel, block, density) if exact else data.draw(st.integers(0, 400))
    raw = data.draw(st.binary(min_size=size, max_size=size))
    try:
        values = codec.decode(raw, name, numel, block, density=density)
    except codec.CodecError:
        return
    assert values.shape == (numel,) and bool(torch.isfinite(values).all())
    # Only the claimed entries may be non-zero: at most k per block.
    k = max(1, min(block, round(density * block)))
    for b0 in range(0, numel, block):
        assert int((values[b0 : b0 + block] != 0).sum()) <= k


@given(st.sampled_from(["sparse", "sparse8"]), st.integers(1, 8), st.sampled_from([0.01, 0.03, 0.1]),
       st.sampled_from([None, 0.01, 0.05, 0.3]), st.integers(0, 600), st.booleans(), st.data())
@FUZZ
def test_reduced_payload_decode(name: str, members: int, density: float, reduced: float | None, numel: int,
                                exact: bool, data) -> None:
    """A reduced shard (codec.reduced_spec, sparse owners' means included): random bytes are refused or bounded."""
    spec, dens = codec.reduced_spec(name, density, members, 256, reduced)
    size = codec.encoded_size(spec, numel, 256, dens) if exact else data.draw(st.integers(0, 900))
    raw = data.draw(st.binary(min_size=size, max_size=size))
    try:
        values = codec.decode(raw, spec, numel, 256, density=dens)
    except codec.CodecError:
        return
    assert values.shape == (numel,) and bool(torch.isfinite(values).all())
    if spec in ("sparse", "sparse8"):
        k = max(1, min(256, round(dens * 256)))
        for b0 in range(0, numel, 256):
            assert int((values[b0 : b0 + 256] != 0).sum()) <= k


@given(st.integers(1, 200), st.sampled_from([8, 16]), st.data())
@FUZZ
def test_sparse_valid_scales_random_indices(numel: int, block: int, data) -> None:
    """Valid scales and codes, random offsets: accepted exactly when every block's are increasing and in range."""
    density = 0.25
    nblocks, k = -(-numel // block), block // 4
    counts = [min(k, min(block, numel - b * block)) for b in range(nblocks)]
    offsets = [data.draw(st.lists(st.integers(0, 255), min_size=c, max_size=c)) for c in counts]
    codes = bytes(data.draw(st.binary(min_size=-(-sum(counts) // 4), max_size=-(-sum(counts) // 4))))
    if sum(counts) % 4:
        codes = codes[:-1] + bytes([codes[-1] & ((1 << (2 * (sum(counts) % 4))) - 1)])
    payload = struct.pack(f"<{nblocks}f", *[1.0] * nblocks) + bytes(sum(offsets, [])) + codes
    valid = all(all(a < b for a, b in zip(o, o[1:], strict=False)) and (not o or o[-1] < min(block, numel - i * block))
                for i, o in enumerate(offsets))
    try:
        values = codec.decode(payload, "sparse", numel, block, density=density)
    except codec.CodecError:
        assert not valid
        return
    assert valid and values.shape == (numel,)


def _sealed() -> dict:
    return SIGNER.seal(KEY, PeerRecord(SIGNER.peer_id, "h:1", 1, 0, "h", (), 1.0, 0, True, False).to_value(), 123.0)


def test_a_sealed_record_opens_and_any_single_change_breaks_it() -> None:
    value = _sealed()
    body = open_sealed(KEY, SIGNER.peer_id, value, 123.0, SIGNER.mac_key)
    assert PeerRecord.from_value(SIGNER.peer_id, body).endpoint == "h:1"
    assert open_sealed(KEY, SIGNER.peer_id, value, None, SIGNER.mac_key) == body
    for field in ("body", "pk", "sig", "mac"):
        broken = {**value, field: value[field][:-1] + bytes([value[field][-1] ^ 1])}
        with pytest.raises(RecordError):
            open_sealed(KEY, SIGNER.peer_id, broken, 123.0, SIGNER.mac_key)
    bad_calls = [(KEY, "QmOther", value, 123.0, SIGNER.mac_key), ("peerd/v1/run/plan.1", SIGNER.peer_id, value, 123.0,
                                                                   SIGNER.mac_key),
                 (KEY, SIGNER.peer_id, value, 999.0, SIGNER.mac_key), (KEY, SIGNER.peer_id, value, 123.0, b"x" * 32),
                 (KEY, SIGNER.peer_id, {**value, "exp": 124.0}, 124.0, SIGNER.mac_key)]
    for args in bad_calls:
        with pytest.raises(RecordError):
            open_sealed(*args)
    # Without a swarm secret the MAC is not required, the signature still is.
    assert open_sealed(KEY, SIGNER.peer_id, {**value, "mac": b""}, 123.0, None) == body


@given(anything, st.text(max_size=50) | st.integers())
@FUZZ
def test_sealed_record_decoder(value: object, subkey: object) -> None:
    with pytest.raises(RecordError):
        open_sealed(KEY, subkey, value, 1.0, SIGNER.mac_key)


@given(st.dictionaries(st.sampled_from(["s", "body", "exp", "pk", "sig", "mac"]), anything, max_size=6),
       st.sampled_from(["s", "body", "exp", "pk", "sig", "mac"]))
@FUZZ
def test_sealed_record_decoder_with_near_valid_fields(patch: dict, drop: str) -> None:
    value = {**_sealed(), **patch}
    for v in (value, {k: x for k, x in value.items() if k != drop}):
        try:
            open_sealed(KEY, SIGNER.peer_id, v, 123.0, SIGNER.mac_key)
        except RecordError:
            continue
        assert not patch or all(_sealed().get(k) == x for k, x in patch.items() if k != "sig")


@given(st.binary(max_size=200), st.binary(max_size=400), st.floats(allow_nan=True))
@FUZZ
def test_dht_validator_never_raises(subkey: bytes, value: bytes, exp: float) -> None:
    seen = []
    assert SealValidator(b"k" * 32, lambda: seen.append(1)).validate(DHTRecord(b"k" * 20, subkey, value, exp)) is False
    assert seen == [1]


@given(anything, st.text(max_size=10))
@FUZZ
def test_peer_record_decoder(value: object, subkey: str) -> None:
    try:
        rec = PeerRecord.from_value(subkey, value)
    except ValueError:
        return
    assert rec.peer_id == subkey


PLAN = make_plan("run", 4, 2, "a", [Candidate(p, f"h:{i}", 0, "h", True, False) for i, p in enumerate("abc")],
                 2.0, 0.9, now=8.0)


@given(st.dictionaries(st.sampled_from([*PLAN.to_record(), "x", "paced"]), anything, max_size=4), st.booleans())
@FUZZ
def test_round_plan_decoder(patch: dict, drop_one: bool) -> None:
    rec = {**PLAN.to_record(), **patch}
    if drop_one and patch:
        rec.pop(next(iter(patch)))
    try:
        plan = plan_from_record(rec, "run", 2)
    except PlanError:
        return
    assert plan.run_id == "run" and 0 < len(plan.members) == len(plan.endpoints)


@given(anything)
@FUZZ
def test_round_plan_decoder_on_arbitrary_values(value: object) -> None:
    with pytest.raises(PlanError):
        plan_from_record(value, "run", 2)
