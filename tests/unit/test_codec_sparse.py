"""The sparse codecs (top-k per block, 2-bit or int8 values) and error feedback through them."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from peerd.core.codec import CodecError, decode, encode, encode_with_feedback, encoded_size, reduced_spec
from peerd.core.codec_sparse import per_block

SPARSE = ("sparse", "sparse8")
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
finite = st.floats(-1e3, 1e3, width=32, allow_subnormal=False)


def _vec(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_encoded_size_is_a_function_of_numel_block_and_density():
    # 8 of 256 kept (round(0.03 * 256) = 8): 4 scale + 8 uint8 offsets + 2 bytes of 2-bit codes.
    assert encoded_size("sparse", 256, 256, 0.03) == 4 + 8 + 2
    assert encoded_size("sparse8", 256, 256, 0.03) == 4 + 8 + 8
    # Short last block keeps min(k, length); offsets are uint16 above 256-element blocks.
    assert encoded_size("sparse", 256 + 3, 256, 0.03) == 8 + 11 + 3
    assert encoded_size("sparse", 1024, 1024, 0.03) == 4 + 2 * 31 + 8
    assert encoded_size("sparse", 0, 256) == 0
    assert per_block(256, 1e-9) == 1 and per_block(8, 1.0) == 8
    for bad in (0.0, -0.1, 1.5, float("nan"), True, "0.1"):
        with pytest.raises(CodecError):
            encoded_size("sparse", 16, 8, bad)
        with pytest.raises(CodecError):
            encode(torch.zeros(4), "sparse", 8, bad)


def test_golden_wire_format():
    """Pins the byte layout: changing it breaks peers."""
    x = torch.tensor([0.1, -4.0, 0.0, 2.5, 0.0, 0.0, 1.0, 0.0])
    # k = round(0.25 * 8) = 2: offsets 1 (-4.0) and 3 (2.5); scale 4/2 = 2; -4 -> sign 1 big 1 = 3,
    # 2.5 -> sign 0, |2.5| <= 3 so small = 0; codes packed low bits first: 3 | 0 << 2.
    assert encode(x, "sparse", 8, 0.25) == struct.pack("<f", 2.0) + bytes([1, 3, 0x03])
    assert decode(encode(x, "sparse", 8, 0.25), "sparse", 8, 8, density=0.25).tolist() == [
        0.0, -4.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0]
    assert encode(x, "sparse8", 8, 0.25) == struct.pack("<f", 4.0 / 127) + bytes([1, 3, 256 - 127, 79])


@pytest.mark.parametrize("codec", SPARSE)
@pytest.mark.parametrize("bs", [8, 9, 256, 1024])
@pytest.mark.parametrize("density", [0.01, 0.03, 0.3, 1.0])
def test_keeps_the_largest_entries_of_each_block(codec, bs, density):
    n = 5 * bs + 3
    x = _vec(n, bs) * 3
    p = encode(x, codec, bs, density)
    assert len(p) == encoded_size(codec, n, bs, density)
    y = decode(p, codec, n, bs, density=density)
    k = per_block(bs, density)
    for b0 in range(0, n, bs):
        xb, yb = x[b0 : b0 + bs], y[b0 : b0 + bs]
        kept = torch.zeros(xb.numel(), dtype=torch.bool)
        kept[xb.abs().topk(min(k, xb.numel())).indices] = True  # random data: no ties
        assert bool((yb[~kept] == 0).all())
        if codec == "sparse":  # 2-bit values are never 0
            assert torch.equal(torch.sign(yb[kept]), torch.sign(xb[kept]))
        absmax = xb.abs().max()
        tol = absmax / 2 if codec == "sparse" else absmax / 254 * 1.001
        assert bool(((yb[kept] - xb[kept]).abs() <= tol + 1e-6).all())


@SETTINGS
@given(x=hnp.arrays(np.float32, st.integers(0, 300), elements=finite), codec=st.sampled_from(SPARSE),
       bs=st.sampled_from([8, 16, 64]), density=st.sampled_from([0.05, 0.2, 0.5, 1.0]))
def test_decode_encode_and_feedback_split_the_input(x, codec, bs, density):
    xt = torch.from_numpy(x)
    payload, residual = encode_with_feedback(xt, None, codec, bs, density)
    sent = decode(payload, codec, xt.numel(), bs, density=density)
    assert sent.shape == xt.shape and bool(torch.isfinite(sent).all())
    # Sent + kept equals the input: exactly where nothing was sent, to float rounding elsewhere.
    assert torch.equal(residual[sent == 0], xt[sent == 0])
    assert torch.allclose(sent + residual, xt, rtol=0, atol=1e-6 * (1 + float(np.abs(x).max(initial=0))))
    assert encode(xt, codec, bs, density) == payload  # deterministic


def test_error_feedback_delivers_everything_over_rounds():
    # A constant outer gradient: with feedback, the summed sent values track the summed inputs
    # (the gap is the final residual, bounded), though each round sends only 3% of the entries.
    x, res, total = _vec(4096, 1), None, torch.zeros(4096)
    rounds = 200
    for _ in range(rounds):
        payload, res = encode_with_feedback(x, res, "sparse", 256, 0.03)
        total += decode(payload, "sparse", 4096, 256, density=0.03)
    assert torch.allclose(total + res, x * rounds, atol=1e-3 * rounds)
    assert float((total / rounds - x).norm() / x.norm()) < 0.25


def test_non_finite_input_rejected_even_if_not_selected():
    for bad in (float("nan"), float("inf")):
        x = torch.ones(64)
        x[5] = bad
        for codec in SPARSE:
            with pytest.raises(CodecError):
                encode(x, codec, 8, 0.25)


def _payload(codec: str, n: int = 20, bs: int = 8, density: float = 0.25) -> bytearray:
    return bytearray(encode(torch.linspace(-1, 1, n), codec, bs, density))


@pytest.mark.parametrize("codec", SPARSE)
def test_malformed_payloads_rejected(codec):
    n, bs, d = 20, 8, 0.25  # blocks of 8, 8, 4; k = 2, 2, 2 -> 6 offsets after 3 scales
    good = _payload(codec)
    assert decode(bytes(good), codec, n, bs, density=d).shape == (n,)
    cases = {
        "long": bytes(good) + b"\0", "short": bytes(good[:-1]),
        "nan scale": struct.pack("<f", float("nan")) + bytes(good[4:]),
        "negative scale": struct.pack("<f", -1.0) + bytes(good[4:]),
    }
    offsets = 12
    for name, (i, v) in {"index out of block": (offsets, 8), "duplicate index": (offsets, good[offsets + 1]),
                         "unordered": (offsets + 1, 0), "tail index out of short block": (offsets + 5, 4)}.items():
        bad = bytearray(good)
        bad[i] = v
        if name == "unordered":
            bad[offsets] = 5
        cases[name] = bytes(bad)
    for name, payload in cases.items():
        with pytest.raises(CodecError):
            decode(payload, codec, n, bs, density=d)
            pytest.fail(name)
    with pytest.raises(CodecError):  # a payload read with another density has the wrong size
        decode(bytes(good), codec, n, bs, density=0.5)


def test_padding_bits_and_code_minus_128_rejected():
    good = _payload("sparse")  # 6 entries: 2 value bytes, the last holds 2 codes
    bad = bytearray(good)
    bad[-1] |= 0x40
    with pytest.raises(CodecError):
        decode(bytes(bad), "sparse", 20, 8, density=0.25)
    bad8 = _payload("sparse8")
    bad8[-1] = 0x80
    with pytest.raises(CodecError):
        decode(bytes(bad8), "sparse8", 20, 8, density=0.25)


def test_reduced_spec_with_density() -> None:
    """mixing.reduced_density: the owner's mean is top-k at that density, in the codec's own values."""
    assert reduced_spec("sparse", 0.03, 4, 256, 0.05) == ("sparse", 0.05)
    assert reduced_spec("sparse8", 0.03, 4, 256, 0.02) == ("sparse8", 0.02)
    assert reduced_spec("sparse8", 0.03, 4, 256, 0.6)[0] == "int8"  # no smaller than int8: int8
    assert reduced_spec("int8", 0.03, 4, 256, 0.05) == ("int8", 0.03)
    with pytest.raises(CodecError):
        reduced_spec("sparse", 0.03, 4, 256, 0.0)


@pytest.mark.parametrize("members", [2, 3, 4, 8])
def test_reduced_mean_keeps_the_union_support(members):
    bs, d, n = 256, 0.03, 4096
    contribs = [decode(encode(_vec(n, s), "sparse", bs, d), "sparse", n, bs, density=d) for s in range(members)]
    mean = torch.stack(contribs).mean(0)
    spec, dens = reduced_spec("sparse", d, members, bs)
    reduced = decode(encode(mean, spec, bs, dens), spec, n, bs, density=dens)
    assert torch.equal(reduced != 0, mean != 0)  # nothing of the union dropped
    assert float((reduced - mean).abs().max()) <= float(mean.abs().max()) / 254 * 1.001
    assert encoded_size(spec, n, bs, dens) < encoded_size("int8", n, bs)
    assert reduced_spec("int8", d, members, bs) == ("int8", d)
    assert reduced_spec("sparse", 0.3, 4, bs)[0] == "int8"  # denser than int8 would be: int8
