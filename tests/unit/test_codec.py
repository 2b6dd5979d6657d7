"""Unit and property tests for peerd.core.codec (gradient wire codecs)."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from peerd.core.codec import (
    CODECS,
    DEFAULT_BLOCK_SIZE,
    CodecError,
    decode,
    encode,
    encode_with_feedback,
    encoded_size,
    quantization_step,
)

INT_CODECS = ("int8", "int4")
QMAX = {"int8": 127, "int4": 7}
BLOCK_SIZES = (8, 32, 64, 256)
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- helpers


def _ref_encode_int(x: np.ndarray, codec: str, bs: int) -> bytes:
    """Straightforward per-block reference of the int8/int4 wire format."""
    q = QMAX[codec]
    scales, codes = [], []
    for i in range(0, len(x), bs):
        blk = x[i : i + bs]
        s = np.float32(np.abs(blk).max()) / np.float32(q)
        scales.append(s)
        c = np.zeros(len(blk), np.int8) if s == 0 else np.clip(np.rint(blk / s), -q, q).astype(np.int8)
        codes.append(c)
    head = np.array(scales, dtype="<f4").tobytes()
    c = np.concatenate(codes) if codes else np.zeros(0, np.int8)
    if codec == "int8":
        return head + c.tobytes()
    nib = (c.astype(np.int16) + 8).astype(np.uint8)
    if len(nib) % 2:
        nib = np.append(nib, np.uint8(0))
    return head + (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8).tobytes()


def _ref_decode_int(payload: bytes, codec: str, numel: int, bs: int) -> np.ndarray:
    nblocks = -(-numel // bs)
    scales = np.frombuffer(payload, "<f4", nblocks).astype(np.float32)
    body = np.frombuffer(payload, np.uint8, offset=4 * nblocks)
    if codec == "int8":
        codes = body.view(np.int8).astype(np.float32)
    else:
        codes = np.stack([body & 15, body >> 4], axis=1).reshape(-1)[:numel].astype(np.float32) - 8
    return codes * np.repeat(scales, bs)[:numel]


def _slack(x: torch.Tensor, step: torch.Tensor, codec: str) -> torch.Tensor:
    # float32 rounding of x/scale and code*scale: a few ulps of the block absmax.
    q = QMAX.get(codec, 0)
    return 1e-6 * (x.abs() + q * step) + 1e-30


@st.composite
def vectors(draw, max_len: int = 3000) -> np.ndarray:
    """Finite float32 vectors, magnitudes in [1e-6, 1e3] plus zeros."""
    if draw(st.booleans()):
        n = draw(st.integers(0, max_len))
        seed = draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        mag = 10.0 ** rng.uniform(-6, 3, n)
        x = (mag * rng.choice([-1.0, 1.0], n)).astype(np.float32)
        x[rng.random(n) < draw(st.sampled_from([0.0, 0.1, 0.9]))] = 0.0
        return x
    mags = st.floats(float(np.float32(1e-6)), 1e3, width=32)
    elem = st.one_of(st.just(0.0), mags, mags.map(lambda v: -v))
    return draw(hnp.arrays(np.float32, st.integers(0, 300), elements=elem))


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32).copy())


def _valid_payload(codec: str, numel: int, bs: int = 8) -> bytearray:
    x = torch.linspace(-1.0, 1.0, numel) if numel else torch.zeros(0)
    return bytearray(encode(x, codec, bs))


# --------------------------------------------------------------------------- sizes and round trips


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("bs", [8, 9, DEFAULT_BLOCK_SIZE])
def test_round_trip_sizes(codec, bs):
    for n in sorted({0, 1, 2, 3, bs - 1, bs, bs + 1, 2 * bs + 1, 5 * bs + 3}):
        x = torch.randn(n) * 3
        p = encode(x, codec, bs)
        assert isinstance(p, bytes)
        assert len(p) == encoded_size(codec, n, bs)
        y = decode(p, codec, n, bs)
        assert y.dtype == torch.float32 and y.shape == (n,)
        if codec not in ("sparse", "sparse8"):  # no per-element step: see test_codec_sparse.py
            assert quantization_step(x, codec, bs).shape == (n,)


def test_encoded_size_formula():
    assert encoded_size("fp32", 10) == 40
    assert encoded_size("bf16", 10) == 20
    assert encoded_size("int8", 257, 256) == 2 * 4 + 257
    assert encoded_size("int4", 257, 256) == 2 * 4 + 129
    assert encoded_size("int4", 256, 256) == 4 + 128
    for c in CODECS:
        assert encoded_size(c, 0) == 0
        assert encode(torch.zeros(0), c) == b""
        assert decode(b"", c, 0).shape == (0,)


def test_golden_wire_format():
    """Pins the byte layout: changing it breaks peers."""
    x = torch.tensor([7.0, -7.0, 1.0, 0.0, 3.0])
    assert encode(x, "int4", 8) == struct.pack("<f", 1.0) + bytes([0x1F, 0x89, 0x0B])
    x = torch.tensor([127.0, -64.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, -3.0])
    expected = struct.pack("<ff", 1.0, 3.0 / 127) + bytes([127, 256 - 64, 0, 1, 2, 3, 4, 5, 256 - 127])
    assert encode(x, "int8", 8) == expected
    assert encode(torch.tensor([1.0, -2.0]), "bf16") == bytes([0x80, 0x3F, 0x00, 0xC0])
    assert encode(torch.tensor([1.0]), "fp32") == struct.pack("<f", 1.0)
    # All-zero blocks (including -0.0) get a +0.0 scale and zero codes.
    assert encode(torch.tensor([-0.0] * 8), "int8", 8) == bytes(4 + 8)


@pytest.mark.parametrize("codec", INT_CODECS)
def test_multi_chunk_odd_block_matches_reference(codec):
    # Several internal chunks, odd block size and odd numel: chunk and nibble
    # boundaries must not shift anything.
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(3 * 262_144 + 1001) * 10.0 ** rng.uniform(-3, 2, 1)).astype(np.float32)
    for bs in (9, 256, 65536):
        p = encode(_t(x), codec, bs)
        assert p == _ref_encode_int(x, codec, bs)
        y = decode(p, codec, len(x), bs)
        step = quantization_step(_t(x), codec, bs)
        assert bool(((y - _t(x)).abs() <= 0.5 * step + _slack(_t(x), step, codec)).all())


def test_non_contiguous_input_and_input_untouched():
    base = torch.randn(1001)
    x = base[::2]
    before = base.clone()
    for c in CODECS:
        assert encode(x, c, 8) == encode(x.contiguous(), c, 8)
        encode_with_feedback(x, torch.ones(x.numel()), c, 8)
    assert torch.equal(base, before)


# --------------------------------------------------------------------------- error bounds


@SETTINGS
@given(x=vectors(), bs=st.sampled_from(BLOCK_SIZES), codec=st.sampled_from(INT_CODECS))
def test_int_error_bound_and_reference(x, bs, codec):
    xt = _t(x)
    p = encode(xt, codec, bs)
    assert p == _ref_encode_int(x, codec, bs)
    y = decode(p, codec, len(x), bs)
    step = quantization_step(xt, codec, bs)
    assert bool(((y - xt).abs() <= 0.5 * step + _slack(xt, step, codec)).all())


@SETTINGS
@given(x=vectors())
def test_bf16_error_bound(x):
    xt = _t(x)
    y = decode(encode(xt, "bf16"), "bf16", len(x))
    err = (y - xt).abs()
    assert bool((err <= 2.0**-8 * xt.abs()).all())
    assert bool((err <= 0.5 * quantization_step(xt, "bf16")).all())
    assert torch.equal(y, xt.to(torch.bfloat16).float())


@SETTINGS
@given(bits=hnp.arrays(np.uint32, st.integers(0, 500)))
def test_fp32_bit_exact_including_nan_and_negative_zero(bits):
    x = torch.from_numpy(bits.view(np.float32).copy())
    y = decode(encode(x, "fp32"), "fp32", x.numel())
    assert np.array_equal(y.numpy().view(np.uint32), bits)
    assert bool((quantization_step(x, "fp32") == 0).all())


@SETTINGS
@given(raw=hnp.arrays(np.uint16, st.integers(0, 500)))
def test_bf16_decode_any_bits(raw):
    y = decode(raw.astype("<u2").tobytes(), "bf16", len(raw))
    assert np.array_equal(y.numpy().view(np.uint32) >> 16, raw.astype(np.uint32))
    assert np.array_equal(y.numpy().view(np.uint32) & 0xFFFF, np.zeros(len(raw), np.uint32))


def test_fp32_special_values():
    x = torch.tensor([-0.0, float("nan"), float("inf"), -float("inf"), 1e-45])
    for c in ("fp32", "bf16"):
        y = decode(encode(x, c), c, 5)
        assert math.copysign(1.0, y[0].item()) == -1.0
        assert math.isnan(y[1].item()) and y[2].item() == math.inf and y[3].item() == -math.inf


# --------------------------------------------------------------------------- error feedback


@st.composite
def sequences(draw):
    t = draw(st.integers(2, 20))
    n = draw(st.integers(1, 1500))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = 10.0 ** rng.uniform(-4, 2, (t, 1))
    return (rng.standard_normal((t, n)) * scale).astype(np.float32)


@SETTINGS
@given(xs=sequences(), bs=st.sampled_from(BLOCK_SIZES), codec=st.sampled_from(("int8", "int4", "bf16")))
def test_error_feedback_tracks_sum(xs, bs, codec):
    residual = None
    sum_x = np.zeros(xs.shape[1])
    sum_deq = np.zeros(xs.shape[1])
    tol = np.zeros(xs.shape[1])
    for x in xs:
        xt = _t(x)
        r_before = None if residual is None else residual.clone()
        y = xt if residual is None else xt + residual
        payload, new_residual = encode_with_feedback(xt, residual, codec, bs)
        if r_before is not None:
            assert torch.equal(residual, r_before)  # not modified
        assert payload == encode(y, codec, bs)
        deq = decode(payload, codec, len(x), bs)
        step = quantization_step(y, codec, bs)
        assert bool((new_residual.abs() <= 0.5 * step + _slack(y, step, codec)).all())
        sum_x += x
        sum_deq += deq.numpy()
        tol += 1e-6 * (np.abs(x) + np.abs(y.numpy()))
        residual = new_residual
    r = residual.numpy().astype(np.float64)
    # Exact telescoping identity, up to float32 rounding in y = x + r.
    assert np.all(np.abs(sum_deq + r - sum_x) <= tol + 1e-30)
    # The transmitted sum lags the true sum by at most half a step of the last y.
    last_step = quantization_step(y, codec, bs).numpy()
    assert np.all(np.abs(sum_deq - sum_x) <= 0.5 * last_step + 2 * tol + 1e-6 * np.abs(y.numpy()) + 1e-30)


def test_error_feedback_fp32_has_zero_residual():
    x = torch.randn(100)
    payload, r = encode_with_feedback(x, None, "fp32")
    assert torch.equal(decode(payload, "fp32", 100), x)
    assert bool((r == 0).all())


def test_error_feedback_bad_residual():
    with pytest.raises(CodecError):
        encode_with_feedback(torch.zeros(4), torch.zeros(5), "int8")
    with pytest.raises(CodecError):
        encode_with_feedback(torch.zeros(4), torch.zeros(4, dtype=torch.float64), "int8")


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("numel", [0, 1, 9, 17])
def test_wrong_length_rejected(codec, numel):
    p = _valid_payload(codec, numel)
    assert decode(bytes(p), codec, numel, 8).shape == (numel,)
    with pytest.raises(CodecError):
        decode(bytes(p) + b"\x00", codec, numel, 8)
    if p:
        with pytest.raises(CodecError):
            decode(bytes(p[:-1]), codec, numel, 8)


@pytest.mark.parametrize("codec", INT_CODECS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), -1.0, -1e-30])
@pytest.mark.parametrize("block", [0, 1])
def test_bad_scale_rejected(codec, bad, block):
    p = _valid_payload(codec, 13)
    p[4 * block : 4 * block + 4] = struct.pack("<f", bad)
    with pytest.raises(CodecError):
        decode(p, codec, 13, 8)


def test_int8_code_minus_128_rejected():
    p = _valid_payload("int8", 13)
    p[8 + 12] = 0x80
    with pytest.raises(CodecError):
        decode(p, "int8", 13, 8)
    p[8 + 12] = 0x81  # -127 is fine
    assert decode(p, "int8", 13, 8).shape == (13,)


@pytest.mark.parametrize("byte_index,value", [(0, 0x80), (0, 0x08), (3, 0x90), (6, 0x18), (6, 0x00)])
def test_int4_nibble_zero_rejected(byte_index, value):
    p = _valid_payload("int4", 13)  # 2 scales + 7 bytes; last high nibble unused
    p[8 + byte_index] = value
    with pytest.raises(CodecError):
        decode(p, "int4", 13, 8)


def test_int4_odd_tail_high_nibble_must_be_zero():
    p = _valid_payload("int4", 13)
    assert p[-1] >> 4 == 0
    p[-1] |= 0x80
    with pytest.raises(CodecError):
        decode(p, "int4", 13, 8)


def test_bad_arguments_rejected():
    with pytest.raises(CodecError):
        encoded_size("int2", 4)
    with pytest.raises(CodecError):
        decode(b"", "int2", 0)
    with pytest.raises(CodecError):
        encode(torch.zeros(4), "fp16")
    with pytest.raises(CodecError):
        decode(b"", "fp32", -1)
    with pytest.raises(CodecError):
        encoded_size("int8", -5)
    for bs in (0, 7, 65537, True, 8.0):
        with pytest.raises(CodecError):
            encoded_size("int8", 16, bs)
        with pytest.raises(CodecError):
            encode(torch.zeros(16), "int8", bs)
    for bad_x in (torch.zeros(2, 2), torch.zeros(4, dtype=torch.float64), torch.tensor(1.0), [1.0]):
        with pytest.raises(CodecError):
            encode(bad_x, "int8")
    with pytest.raises(CodecError):
        decode("abcd", "fp32", 1)
    assert issubclass(CodecError, ValueError)


@pytest.mark.parametrize("codec", INT_CODECS)
@pytest.mark.parametrize("pos", [0, 7, 8, 12])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_int_encode_rejects_non_finite(codec, pos, bad):
    x = torch.randn(13)
    x[pos] = bad
    with pytest.raises(CodecError):
        encode(x, codec, 8)
    with pytest.raises(CodecError):
        encode_with_feedback(torch.randn(13), x, codec, 8)


@SETTINGS
@given(
    codec=st.sampled_from(CODECS),
    numel=st.integers(0, 600),
    bs=st.sampled_from(BLOCK_SIZES),
    exact=st.booleans(),
    data=st.data(),
    kind=st.sampled_from((bytes, bytearray, memoryview)),
)
def test_fuzz_decode_only_raises_codec_error(codec, numel, bs, exact, data, kind):
    size = encoded_size(codec, numel, bs) if exact else data.draw(st.integers(0, 3000))
    raw = data.draw(st.binary(min_size=size, max_size=size))
    try:
        y = decode(kind(raw), codec, numel, bs)
    except CodecError:
        return
    assert y.dtype == torch.float32 and y.shape == (numel,)


@SETTINGS
@given(codec=st.sampled_from(INT_CODECS), numel=st.integers(1, 600), bs=st.sampled_from(BLOCK_SIZES), data=st.data())
def test_fuzz_int_body_with_valid_scales(codec, numel, bs, data):
    nblocks = -(-numel // bs)
    scales = data.draw(hnp.arrays(np.float32, nblocks, elements=st.floats(0, 2.0**100, width=32)))
    body_len = encoded_size(codec, numel, bs) - 4 * nblocks
    body = bytearray(data.draw(st.binary(min_size=body_len, max_size=body_len)))
    if data.draw(st.booleans()):  # repair invalid codes so decoding often succeeds
        if codec == "int8":
            body = bytearray(0x81 if b == 0x80 else b for b in body)
        else:
            body = bytearray(((b & 0xF) or 1) | (((b >> 4) or 1) << 4) for b in body)
            if numel % 2:
                body[-1] &= 0x0F
    payload = scales.astype("<f4").tobytes() + bytes(body)
    try:
        y = decode(payload, codec, numel, bs)
    except CodecError:
        if codec == "int8":
            assert 0x80 in body
        else:
            nib = np.stack([np.frombuffer(bytes(body), np.uint8) & 15, np.frombuffer(bytes(body), np.uint8) >> 4], 1)
            nib = nib.reshape(-1)
            assert (nib[:numel] == 0).any() or (numel % 2 and nib[-1] != 0)
        return
    assert np.array_equal(y.numpy(), _ref_decode_int(payload, codec, numel, bs))


# --------------------------------------------------------------------------- ownership


@pytest.mark.parametrize("codec", CODECS)
def test_decode_result_is_writable_and_not_aliased(codec):
    x = torch.randn(300)
    payload = bytearray(encode(x, codec, 64))
    snapshot = bytes(payload)
    y = decode(payload, codec, 300, 64)
    y2 = decode(memoryview(payload), codec, 300, 64)
    y.fill_(12345.0)  # writable, and must not write through to the payload
    assert bytes(payload) == snapshot
    assert torch.equal(decode(payload, codec, 300, 64), y2)
    payload[:] = bytes(len(payload))  # mutating the payload must not change y2
    assert torch.equal(y2, decode(snapshot, codec, 300, 64))


def test_quantization_step_values():
    x = torch.tensor([1.0, -3.0, 0.0, 0.5] + [0.0] * 4 + [2.0])
    s8 = quantization_step(x, "int8", 8)
    assert torch.allclose(s8[:8], torch.full((8,), 3.0 / 127))
    assert torch.allclose(s8[8:], torch.tensor([2.0 / 127]))
    assert torch.allclose(quantization_step(x, "int4", 8)[:8], torch.full((8,), 3.0 / 7))
    sb = quantization_step(torch.tensor([1.0, 1.5, 0.75, -2.0]), "bf16")
    assert sb.tolist() == [2.0**-7, 2.0**-7, 2.0**-8, 2.0**-6]


@pytest.mark.parametrize("codec", ["int8", "int4", "sparse", "sparse8"])
def test_a_finite_scale_that_overflows_when_decoded_is_refused(codec: str) -> None:
    """A block scale near float32's maximum is finite, but times the largest code it is inf: no
    encoder writes one (scales are absmax / largest code), so the decoder refuses it (found by
    the decoder fuzz test: a reduced int8 shard decoded to inf)."""
    numel, bs, density = 64, 64, 0.25
    payload = bytearray(encode(torch.linspace(-1, 1, numel), codec, bs, density=density))
    payload[0:4] = struct.pack("<f", 3.0e38)
    with pytest.raises(CodecError, match="overflows"):
        decode(bytes(payload), codec, numel, bs, density=density)
    payload[0:4] = struct.pack("<f", 1.0e30)  # large but safe: decodes to finite values
    assert bool(torch.isfinite(decode(bytes(payload), codec, numel, bs, density=density)).all())
