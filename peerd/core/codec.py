"""Wire codecs for outer gradients: 1-D float32 tensors to bytes and back.

This module is pure (no I/O, no logging); the outer-sync code uses it to shrink
fragment pseudo-gradients before they go on the wire, and ``encode_with_feedback``
carries the quantization error into the next round so that nothing is lost on
average. All multi-byte values are little-endian. ``n`` is the element count,
``B`` the block size and ``nblocks = ceil(n / B)``; ``n == 0`` always gives an
empty payload.

Formats (this is a wire format: changing it breaks peers):

* ``fp32``: ``n`` float32 values, ``4n`` bytes, bit-exact (NaN payloads kept).
* ``bf16``: ``n`` bfloat16 values (round-to-nearest-even, as torch's
  ``.to(torch.bfloat16)``), ``2n`` bytes.
* ``int8``: ``nblocks`` float32 scales, then ``n`` int8 codes. Block ``k``
  covers elements ``[kB, (k+1)B)`` (the last block may be short); its scale is
  ``absmax / 127`` (0 for an all-zero block) and each code is
  ``round_half_even(x / scale)`` clamped to ``[-127, 127]`` (0 when the scale
  is 0). Dequantized value: ``code * scale``. Code -128 is invalid.
* ``sparse`` / ``sparse8``: per-block top-k entries (``density`` of each block) as offsets plus
  2-bit / int8 values with a per-block scale; see ``peerd.core.codec_sparse`` for the layout.
* ``int4``: like ``int8`` with ``absmax / 7`` and codes in ``[-7, 7]``, stored
  as nibbles ``code + 8`` (1..15; nibble 0 is invalid), two per byte, low
  nibble first: ``nblocks`` float32 scales then ``ceil(n / 2)`` bytes. For odd
  ``n`` the unused high nibble of the last byte must be 0.

For finite inputs whose block scales are normal floats, int8/int4 dequantize
within half a step (``quantization_step``) of the input, up to float32
rounding. Non-finite inputs are rejected by the int codecs (a NaN outer
gradient must never leave the node) and passed through by fp32/bf16 (the
receiver checks finiteness).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

CODECS: tuple[str, ...] = ("fp32", "bf16", "int8", "int4", "sparse", "sparse8")
SPARSE = ("sparse", "sparse8")
DEFAULT_BLOCK_SIZE = 256
DEFAULT_DENSITY = 0.03  # share of each block a sparse codec sends (peerd.core.codec_sparse)

_MIN_BLOCK, _MAX_BLOCK = 8, 65536
_QMAX = {"int8": 127, "int4": 7}
# Elements per chunk: big enough to amortise Python overhead, small enough that
# the several elementwise passes per chunk stay in cache (measured ~2x faster
# than whole-tensor passes on 16M elements).
_CHUNK_ELEMS = 1 << 18


class CodecError(ValueError):
    """Raised when a payload or arguments are malformed (wrong size, non-finite scale, unknown codec...)."""


def _check_args(codec: str, numel: int, block_size: int) -> None:
    if codec not in CODECS:
        raise CodecError(f"unknown codec {codec!r}; expected one of {CODECS}")
    # bool is an int subclass; reject it so a stray flag is not read as 0/1.
    if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
        raise CodecError(f"numel must be a non-negative int, got {numel!r}")
    if (not isinstance(block_size, int) or isinstance(block_size, bool)
            or not _MIN_BLOCK <= block_size <= _MAX_BLOCK):
        raise CodecError(f"block_size must be an int in [{_MIN_BLOCK}, {_MAX_BLOCK}], got {block_size!r}")


def encoded_size(codec: str, numel: int, block_size: int = DEFAULT_BLOCK_SIZE,
                 density: float = DEFAULT_DENSITY) -> int:
    """Exact payload length in bytes for `numel` values (``density``: sparse codecs only).

    Raises:
        CodecError: unknown codec, negative numel, block size or density out of range.
    """
    _check_args(codec, numel, block_size)
    if codec in SPARSE:
        return codec_sparse.encoded_size(codec, numel, block_size, density)
    if codec == "fp32":
        return 4 * numel
    if codec == "bf16":
        return 2 * numel
    nblocks = -(-numel // block_size)
    return 4 * nblocks + (numel if codec == "int8" else (numel + 1) // 2)


def _check_tensor(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 1 or x.dtype != torch.float32 or x.device.type != "cpu":
        raise CodecError("expected a 1-D float32 CPU tensor")
    return x.detach().contiguous()


def _chunks(n: int, bs: int):
    """Yields (e0, e1, b0, b1): element and block ranges of cache-sized chunks.

    Chunks hold an even number of whole blocks, so every chunk but the last
    starts and ends on an even element (int4 byte boundary) whatever ``bs`` is.
    """
    rows = max(2, (_CHUNK_ELEMS // bs) & ~1)
    nblocks = -(-n // bs)
    for b0 in range(0, nblocks, rows):
        b1 = min(b0 + rows, nblocks)
        yield b0 * bs, min(b1 * bs, n), b0, b1


def _block_absmax(xc: torch.Tensor, bs: int) -> torch.Tensor:
    # amax and amin are vectorised reductions; aminmax and abs().amax() were
    # measured 7-10x slower. Both propagate NaN, so a NaN block gets a NaN max.
    n = xc.numel()
    nfull = n // bs
    absmax = torch.empty(-(-n // bs), dtype=torch.float32)
    if nfull:
        x2 = xc[: nfull * bs].view(nfull, bs)
        torch.maximum(x2.amax(dim=1), x2.amin(dim=1).neg_(), out=absmax[:nfull])
    if n > nfull * bs:
        tail = xc[nfull * bs:]
        absmax[nfull] = torch.maximum(tail.amax(), tail.amin().neg())
    # abs_ turns a -0.0 (all-negative-zero block) into +0.0: scales are canonical.
    return absmax.abs_()


def _encode_int(xc: torch.Tensor, codec: str, bs: int) -> bytes:
    n, q = xc.numel(), _QMAX[codec]
    nblocks = -(-n // bs)
    # Scales first, then every chunk's codes, written straight into one output buffer: one
    # final copy into ``bytes`` instead of a copy per chunk plus a join. numpy allocates it
    # (huge pages for large arrays, so first touch costs 2 MiB faults instead of 4 KiB ones).
    out = np.empty(4 * nblocks + (n if codec == "int8" else (n + 1) // 2), dtype=np.uint8)
    # "<f4" is the wire order; torch.from_numpy refuses a non-native one, so a big-endian host fails loudly.
    scale_all = torch.from_numpy(out[: 4 * nblocks].view("<f4"))
    body = torch.from_numpy(out[4 * nblocks:])
    if codec == "int8":
        body = body.view(torch.int8)
    chunk = min(n, max(2, (_CHUNK_ELEMS // bs) & ~1) * bs)
    fbuf = torch.empty(chunk + 1, dtype=torch.float32)
    pbuf = torch.empty(fbuf.numel() // 2 + 1, dtype=torch.float32) if codec == "int4" else None
    tiny = torch.finfo(torch.float32).tiny
    for e0, e1, b0, b1 in _chunks(n, bs):
        length, rows = e1 - e0, b1 - b0
        # Scales chunk by chunk: the block maxima pull the chunk into cache and the division
        # below reads it from there, instead of two extra passes over the whole input.
        scale = scale_all[b0:b1]
        torch.div(_block_absmax(xc[e0:e1], bs), q, out=scale)
        if not bool(torch.isfinite(scale).all()):
            raise CodecError(f"{codec}: input contains NaN or Inf")
        # Zero scales only occur for blocks that quantize to 0 anyway; dividing by 1
        # keeps them at 0 without a NaN from 0/0.
        sdiv = torch.where(scale > 0, scale, 1.0)
        f = fbuf[:length]
        if length == rows * bs:
            torch.div(xc[e0:e1].view(rows, bs), sdiv[:, None], out=f.view(rows, bs))
        else:  # last chunk with a short block: per-element scales, small
            torch.div(xc[e0:e1], sdiv.repeat_interleave(bs)[:length], out=f)
        f.round_()
        # |x / scale| <= q up to one rounding; only a subnormal scale (precision lost in
        # absmax / q) can push a code past q, so the clamp pass runs only then.
        if bool(((scale > 0) & (scale < tiny)).any()):
            f.clamp_(-q, q)
        if codec == "int8":
            body[e0:e1].copy_(f)
        else:
            # Pack in float ((lo + 8) + 16 * (hi + 8) is exact) and convert once:
            # measured ~2.5x faster than uint8 shifts on strided views.
            if length & 1:
                f = fbuf[: length + 1]
                f[length] = -8.0  # odd tail: the unused high nibble is 0
            pair = pbuf[: f.numel() // 2]
            torch.add(f[0::2], f[1::2], alpha=16, out=pair)
            body[e0 // 2 : e0 // 2 + pair.numel()].copy_(pair.add_(136))
    return out.tobytes()


def encode(x: torch.Tensor, codec: str, block_size: int = DEFAULT_BLOCK_SIZE,
           density: float = DEFAULT_DENSITY) -> bytes:
    """Encodes a 1-D float32 CPU tensor (contiguous or not; it is not modified).

    Returns:
        Payload bytes of length ``encoded_size(codec, x.numel(), block_size)``.

    Raises:
        CodecError: bad arguments, or NaN/Inf input for int8/int4/sparse codecs.
    """
    _check_args(codec, 0, block_size)
    if codec in SPARSE:
        codec_sparse.per_block(block_size, density)  # checks density even for an empty tensor
    xc = _check_tensor(x)
    if xc.numel() == 0:
        return b""
    if codec in SPARSE:
        return codec_sparse.encode(xc, codec, block_size, density)
    if codec == "fp32":
        return xc.numpy().astype("<f4", copy=False).tobytes()
    if codec == "bf16":
        n, step = xc.numel(), _CHUNK_ELEMS
        buf = torch.empty(min(n, step), dtype=torch.bfloat16)
        parts = []  # chunked for the same reason as in _encode_int
        for i in range(0, n, step):
            b = buf[: min(step, n - i)].copy_(xc[i : i + step])
            parts.append(b.view(torch.int16).numpy().astype("<i2", copy=False).tobytes())
        return b"".join(parts)
    return _encode_int(xc, codec, block_size)


def _as_bytes_view(payload: bytes | bytearray | memoryview) -> memoryview:
    try:
        m = memoryview(payload)
    except TypeError as e:
        raise CodecError(f"payload must be bytes-like, got {type(payload).__name__}") from e
    if not m.c_contiguous:
        m = memoryview(m.tobytes())
    return m.cast("B") if m.format != "B" or m.ndim != 1 else m


def _output(numel: int, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        # numpy madvises large arrays for transparent huge pages: writing a fresh 64 MB
        # result then faults 32 times instead of 16k (measured 3-6x faster than torch.empty here).
        return torch.from_numpy(np.empty(numel, dtype=np.float32))
    if (not isinstance(out, torch.Tensor) or out.dtype != torch.float32 or out.device.type != "cpu"
            or out.dim() != 1 or out.numel() != numel or not out.is_contiguous()):
        raise CodecError(f"out must be a contiguous 1-D float32 CPU tensor of {numel} elements")
    return out


def block_scales(m: memoryview, nblocks: int, codec: str, largest_code: int) -> np.ndarray:
    """The ``nblocks`` float32 block scales a payload starts with, checked.

    Raises:
        CodecError: a scale is non-finite or negative, or overflows float32 times ``largest_code``
            (finite, but no encoder writes it: scales are absmax / largest code; a decoder would
            return inf; found by the decoder fuzz test).
    """
    scale = np.frombuffer(m, dtype="<f4", count=nblocks).astype(np.float32)
    if not np.isfinite(scale).all() or (scale < 0).any():
        raise CodecError(f"{codec}: non-finite or negative block scale")
    with np.errstate(over="ignore"):
        overflows = not np.isfinite(scale * np.float32(largest_code)).all()
    if overflows:
        raise CodecError(f"{codec}: block scale overflows float32 when decoded")
    return scale


def decode(payload: bytes | bytearray | memoryview, codec: str, numel: int,
           block_size: int = DEFAULT_BLOCK_SIZE, out: torch.Tensor | None = None,
           density: float = DEFAULT_DENSITY) -> torch.Tensor:
    """Decodes a payload into a writable float32 tensor of length ``numel``.

    The result never aliases ``payload``. fp32/bf16 NaN/Inf values are returned
    as-is; the caller checks finiteness.

    Args:
        payload: Encoded bytes.
        codec: One of :data:`CODECS`.
        numel: Element count the payload encodes.
        block_size: Block size the payload was encoded with.
        out: Optional preallocated destination (reused buffers avoid page faults on
            large fragments); a new tensor is returned when ``None``. On error its
            contents are unspecified.
        density: Density the payload was encoded with (sparse codecs only).

    Returns:
        ``out`` (filled) or a new tensor.

    Raises:
        CodecError: bad arguments, wrong payload length, non-finite or negative
            scale, int8 code -128, int4 nibble 0, non-zero odd-tail nibble, a sparse
            index out of its block, duplicated or unordered, non-zero padding bits, or a
            bad ``out``.
    """
    expected = encoded_size(codec, numel, block_size, density)
    m = _as_bytes_view(payload)
    if m.nbytes != expected:
        raise CodecError(f"{codec}: payload is {m.nbytes} bytes, expected {expected} for numel={numel}")
    out = _output(numel, out)
    if numel == 0:
        return out
    if codec in SPARSE:
        codec_sparse.decode(m, codec, numel, block_size, density, out)
        return out
    if codec == "fp32":
        out.numpy()[:] = np.frombuffer(m, dtype="<f4")
        return out
    if codec == "bf16":
        # bf16 is the top half of a float32: a shift is an exact conversion.
        np.left_shift(np.frombuffer(m, dtype="<u2"), np.int32(16), out=out.numpy().view(np.int32), dtype=np.int32)
        return out
    nblocks = -(-numel // block_size)
    scale = block_scales(m, nblocks, codec, 127 if codec == "int8" else 7)
    body = np.frombuffer(m, dtype=np.uint8, offset=4 * nblocks)
    if codec == "int8":
        codes = body.view(np.int8)
        if codes.min() == -128:
            raise CodecError("int8: code -128 is invalid")
        _decode_int8(codes, scale, block_size, out)
        return out
    if numel & 1 and body[-1] >> 4:
        raise CodecError("int4: unused high nibble of the last byte must be 0")
    o = out.numpy()
    for e0, e1, b0, b1 in _chunks(numel, block_size):
        length, rows = e1 - e0, b1 - b0
        oc = o[e0:e1]
        packed = body[e0 // 2 : (e1 + 1) // 2]
        lo, hi = packed & 0x0F, packed >> 4
        if lo.min() == 0 or hi[: length // 2].min(initial=1) == 0:
            raise CodecError("int4: nibble 0 is invalid")
        oc[0::2] = lo
        oc[1::2] = hi[: length // 2]
        np.subtract(oc, 8, out=oc)
        if length == rows * block_size:
            o2 = oc.reshape(rows, block_size)
            np.multiply(o2, scale[b0:b1, None], out=o2)
        else:
            np.multiply(oc, np.repeat(scale[b0:b1], block_size)[:length], out=oc)
    return out


def _decode_int8(codes: np.ndarray, scale: np.ndarray, bs: int, out: torch.Tensor) -> None:
    """``out = codes * scale`` per block, cache-sized chunks, one fused pass per chunk.

    torch multiplies the int8 codes by the float32 scales converting on the fly (exact, as
    int8 -> float32 is), so each chunk is read once and written once: measured ~1.8x faster
    than convert-then-multiply per chunk (a whole-tensor mixed-dtype mul was ~15x slower).
    """
    with warnings.catch_warnings():
        # The views are only read; torch warns because the payload buffer is read-only.
        warnings.simplefilter("ignore", UserWarning)
        codes_t = torch.from_numpy(codes)
    scale_t = torch.from_numpy(scale)
    for e0, e1, b0, b1 in _chunks(out.numel(), bs):
        length, rows = e1 - e0, b1 - b0
        if length == rows * bs:
            torch.mul(codes_t[e0:e1].view(rows, bs), scale_t[b0:b1, None], out=out[e0:e1].view(rows, bs))
        else:
            torch.mul(codes_t[e0:e1], scale_t[b0:b1].repeat_interleave(bs)[:length], out=out[e0:e1])


def quantization_step(x: torch.Tensor, codec: str, block_size: int = DEFAULT_BLOCK_SIZE) -> torch.Tensor:
    """Per-element size of one quantization step of ``codec`` for ``x``.

    int8/int4: the element's block scale (absmax/127, absmax/7); bf16: the bf16
    spacing around |x|, ``2**(floor(log2|x|) - 7)`` (the subnormal spacing
    2**-133 at and near 0); fp32: 0. Rounding error is at most half a step.

    Returns:
        A new float32 tensor shaped like ``x`` (NaN/Inf where x is non-finite).
    """
    _check_args(codec, 0, block_size)
    if codec in SPARSE:
        raise CodecError(f"{codec}: no per-element step (unselected entries are dropped, not rounded)")
    xc = _check_tensor(x)
    if codec == "fp32":
        return torch.zeros_like(xc)
    if codec == "bf16":
        _, exp = torch.frexp(xc)  # |x| = m * 2**exp with m in [0.5, 1)
        e = torch.where(xc == 0, -133, (exp - 8).clamp_(min=-133))
        step = torch.pow(2.0, e.double()).float()  # float64 pow is exact on integers
        return torch.where(torch.isfinite(xc), step, xc.abs())
    scale = _block_absmax(xc, block_size).div_(_QMAX[codec])
    return scale.repeat_interleave(block_size)[: xc.numel()]


def encode_with_feedback(x: torch.Tensor, residual: torch.Tensor | None, codec: str,
                         block_size: int = DEFAULT_BLOCK_SIZE,
                         density: float = DEFAULT_DENSITY) -> tuple[bytes, torch.Tensor]:
    """Encodes ``x`` plus the carried quantization error (error feedback).

    ``y = x + residual`` (``None`` means zeros), ``payload = encode(y)``,
    ``new_residual = y - decode(payload)``. Summed over rounds, the decoded
    payloads equal the summed inputs minus the final residual. Inputs are not
    modified. With a sparse codec the residual holds every entry not sent this time.

    Returns:
        ``(payload, new_residual)``.

    Raises:
        CodecError: as ``encode``, or a residual whose shape or dtype differs.
    """
    xc = _check_tensor(x)
    if residual is None:
        y = xc
    else:
        if _check_tensor(residual).shape != xc.shape:
            raise CodecError(f"residual shape {tuple(residual.shape)} != x shape {tuple(xc.shape)}")
        y = xc + residual.detach()
    payload = encode(y, codec, block_size, density)
    return payload, y - decode(payload, codec, y.numel(), block_size, density=density)


# At the end: codec_sparse imports CodecError from this module.
from peerd.core import codec_sparse  # noqa: E402

reduced_spec = codec_sparse.reduced_spec
