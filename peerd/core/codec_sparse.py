"""Sparse wire codecs (``sparse``, ``sparse8``): per-block top-k with low-bit values.

Pure (no I/O). ``peerd.core.codec`` dispatches here; use its ``encode``/``decode``/``encoded_size``.
Only a few entries of an outer gradient are sent per round; with error feedback
(``codec.encode_with_feedback``) everything not sent, whole entries and rounding alike, stays in
the sender's residual and goes out in a later round, so no progress is lost, only delayed.

Format (little-endian; ``B`` the block size, ``n`` the element count, ``nblocks = ceil(n / B)``):

* Every block keeps ``k = clamp(round(density * B), 1, B)`` entries, the last (short, length
  ``L``) block ``min(k, L)``; ``T`` is the total, a function of ``(n, B, density)`` only, so a
  receiver knows the exact payload size before reading it.
* ``nblocks`` float32 scales (finite, >= 0), then ``T`` indices (uint8 when ``B <= 256``, else
  uint16), block by block, each the offset inside its block, strictly increasing within a block
  (so in range and without duplicates), then the ``T`` value codes:

  - ``sparse``: 2 bits per entry, four per byte, low bits first; a code is
    ``sign << 1 | big`` and decodes to ``(-1)**sign * (1 + big) * scale`` with
    ``scale = absmax_of_the_selected / 2`` (``big`` when ``|x| > 1.5 * scale``). The unused
    high bits of the last byte must be 0.
  - ``sparse8``: one int8 per entry, ``round_half_even(x / scale)`` with ``scale =
    absmax / 127``, as the ``int8`` codec (code -128 invalid).

Entries are chosen by magnitude (``torch.topk``; ties go either way, which only decides what is
sent now and what later). Unselected entries decode to 0.
"""

from __future__ import annotations

import numpy as np
import torch

from peerd.core.codec import CodecError, block_scales

SPARSE_CODECS: tuple[str, ...] = ("sparse", "sparse8")
DEFAULT_DENSITY = 0.03


def per_block(block_size: int, density: float) -> int:
    """Entries kept in a full block.

    Raises:
        CodecError: density not a finite number in (0, 1].
    """
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:
        raise CodecError(f"density must be a number in (0, 1], got {density!r}")
    return max(1, min(block_size, round(density * block_size)))


def _counts(numel: int, bs: int, density: float) -> tuple[int, int, int]:
    """(full blocks, entries per full block, entries in the short last block)."""
    k = per_block(bs, density)
    nfull, tail = divmod(numel, bs)
    return nfull, k, min(k, tail)


def _index_dtype(bs: int) -> str:
    return "u1" if bs <= 256 else "<u2"


def _value_bytes(codec: str, total: int) -> int:
    return (total + 3) // 4 if codec == "sparse" else total


def encoded_size(codec: str, numel: int, bs: int, density: float) -> int:
    """Exact payload size (arguments already checked by ``peerd.core.codec``)."""
    nfull, k, kt = _counts(numel, bs, density)
    total = nfull * k + kt
    return 4 * -(-numel // bs) + total * np.dtype(_index_dtype(bs)).itemsize + _value_bytes(codec, total)


def _select(x2: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k by magnitude per row: (sorted indices, their values)."""
    idx = x2.abs().topk(k, dim=1, sorted=False).indices.sort(dim=1).values
    return idx, x2.gather(1, idx)


def _quantize(codec: str, vals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scales and codes of selected values (rows = blocks)."""
    absmax = vals.abs().amax(dim=1)
    if not bool(torch.isfinite(absmax).all()):
        raise CodecError(f"{codec}: input contains NaN or Inf")
    if codec == "sparse":
        scale = absmax / 2
        big = vals.abs() > (scale * 1.5)[:, None]
        codes = (vals < 0).to(torch.uint8) * 2 + big.to(torch.uint8)
        return scale, codes
    scale = absmax / 127
    sdiv = torch.where(scale > 0, scale, 1.0)
    codes = (vals / sdiv[:, None]).round_().clamp_(-127, 127).to(torch.int8)
    return scale, codes


def encode(x: torch.Tensor, codec: str, bs: int, density: float) -> bytes:
    """Encodes a contiguous 1-D float32 tensor (checked by ``peerd.core.codec.encode``)."""
    n = x.numel()
    if not bool(torch.isfinite(x).all()):  # a NaN must not hide among the unselected entries
        raise CodecError(f"{codec}: input contains NaN or Inf")
    nfull, k, kt = _counts(n, bs, density)
    parts_idx, parts_scale, parts_code = [], [], []
    if nfull:
        idx, vals = _select(x[: nfull * bs].view(nfull, bs), k)
        scale, codes = _quantize(codec, vals)
        parts_idx.append(idx.reshape(-1))
        parts_scale.append(scale)
        parts_code.append(codes.reshape(-1))
    if n > nfull * bs:
        idx, vals = _select(x[nfull * bs:].view(1, -1), kt)
        scale, codes = _quantize(codec, vals)
        parts_idx.append(idx.reshape(-1))
        parts_scale.append(scale)
        parts_code.append(codes.reshape(-1))
    scales = torch.cat(parts_scale).numpy().astype("<f4")
    indices = torch.cat(parts_idx).numpy().astype(_index_dtype(bs))
    codes = torch.cat(parts_code).numpy()
    if codec == "sparse":
        padded = np.zeros(-(-codes.size // 4) * 4, dtype=np.uint8)
        padded[: codes.size] = codes
        quad = padded.reshape(-1, 4)
        body = quad[:, 0] | (quad[:, 1] << 2) | (quad[:, 2] << 4) | (quad[:, 3] << 6)
    else:
        body = codes.view(np.uint8)
    return scales.tobytes() + indices.tobytes() + body.astype(np.uint8).tobytes()


def _check_indices(idx: np.ndarray, length: int, codec: str) -> None:
    """Rows of one block size: strictly increasing offsets below ``length``."""
    if idx.size and int(idx[:, -1].max()) >= length:
        raise CodecError(f"{codec}: index out of its block")
    if idx.shape[1] > 1 and not bool((np.diff(idx, axis=1) > 0).all()):
        raise CodecError(f"{codec}: indices not strictly increasing within a block (duplicate or unordered)")


def decode(m: memoryview, codec: str, numel: int, bs: int, density: float, out: torch.Tensor) -> None:
    """Fills ``out`` from a payload whose size ``peerd.core.codec.decode`` has checked."""
    nfull, k, kt = _counts(numel, bs, density)
    nblocks, total = -(-numel // bs), nfull * k + kt
    scale = block_scales(m, nblocks, codec, 2 if codec == "sparse" else 127)  # 2-bit codes decode to 1 or 2
    itype = np.dtype(_index_dtype(bs))
    idx = np.frombuffer(m, dtype=itype, count=total, offset=4 * nblocks).astype(np.int64)
    body = np.frombuffer(m, dtype=np.uint8, offset=4 * nblocks + total * itype.itemsize)
    if codec == "sparse":
        codes = np.stack([(body >> s) & 3 for s in (0, 2, 4, 6)], axis=1).reshape(-1)
        if codes[total:].any():
            raise CodecError("sparse: unused bits of the last value byte must be 0")
        codes = codes[:total]
        mag = (1 + (codes & 1)).astype(np.float32)
        vals = np.where(codes & 2, -mag, mag)
    else:
        codes = body.view(np.int8)
        if total and codes.min() == -128:
            raise CodecError("sparse8: code -128 is invalid")
        vals = codes.astype(np.float32)
    o = out.numpy()
    o[:] = 0
    if nfull:
        rows = idx[: nfull * k].reshape(nfull, k)
        _check_indices(rows, bs, codec)
        block_vals = vals[: nfull * k].reshape(nfull, k) * scale[:nfull, None]
        flat = rows + (np.arange(nfull, dtype=np.int64) * bs)[:, None]
        o[flat.reshape(-1)] = block_vals.reshape(-1)
    if kt:
        tail = idx[nfull * k:].reshape(1, kt)
        _check_indices(tail, numel - nfull * bs, codec)
        o[nfull * bs + tail[0]] = vals[nfull * k:] * scale[nfull]


def reduced_spec(codec: str, density: float, members: int, block_size: int,
                 reduced_density: float | None = None) -> tuple[str, float]:
    """Codec and density an owner uses for a round's reduced (mean) shard.

    With ``reduced_density`` set, the owner sends the mean top-k at that density, with the codec's
    own values (2-bit or int8); what it leaves out stays in the owner's error-feedback residual
    (``peerd.mixing.diloco``) and goes out when it next owns those entries.

    Without it, the mean of ``members`` sparse contributions, which has up to ``members * k``
    non-zeros per block and values that differ by up to that factor, goes out as the union support
    exactly, with int8 values (``sparse8`` at ``members * density``), or plain ``int8`` once that is
    no smaller. Either way a sparse encoding no smaller than ``int8`` becomes ``int8``. Non-sparse
    codecs are used unchanged.
    """
    if codec not in SPARSE_CODECS:
        return codec, density
    index_bytes = np.dtype(_index_dtype(block_size)).itemsize
    if reduced_density is not None:
        k = per_block(block_size, reduced_density)
        value_bytes = 0.25 if codec == "sparse" else 1.0
        if k * (index_bytes + value_bytes) >= block_size:
            return "int8", density
        return codec, reduced_density
    # Exactly members * k entries per block (not round(members * density * B), which can be less).
    k = per_block(block_size, density) * max(1, members)
    if k * (index_bytes + 1) >= block_size:
        return "int8", density
    return "sparse8", k / block_size
