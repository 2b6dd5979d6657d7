"""Fragments: the strided layer partition of a model and its flat fp32 views (pure, no I/O).

A fragment is a fixed, ordered list of parameter names. Layer ``i`` (a parameter whose dotted
name contains ``.<i>.``, e.g. ``blocks.3.attn.weight``) goes to fragment ``i mod P``
(Streaming DiLoCo's strided partition, slightly better than sequential). Parameters outside
numbered layers (embeddings, final norm, head) go, whole, to whichever fragment is smallest at
that point, so the P fragments carry similar byte counts. The layout depends only on parameter
names and shapes, so every peer that builds the same model derives the same layout.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

_LAYER = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def layer_index(name: str) -> int | None:
    """First integer component of a dotted parameter name, or None."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class FragmentLayout:
    """Which parameters make up each fragment, in a fixed order."""

    names: tuple[tuple[str, ...], ...]  # per fragment, parameter names in model order
    numels: tuple[int, ...]  # per fragment, total float count
    shapes: Mapping[str, tuple[int, ...]]

    @property
    def num_fragments(self) -> int:
        """P, the number of fragments."""
        return len(self.names)

    @classmethod
    def build(cls, named_shapes: Iterable[tuple[str, tuple[int, ...]]], num_fragments: int) -> FragmentLayout:
        """Partition parameters (name, shape) in model order into ``num_fragments`` fragments.

        Raises:
            ValueError: no parameters, duplicate names, or more fragments than parameters.
        """
        items = list(named_shapes)
        shapes = {name: tuple(shape) for name, shape in items}
        if not items or len(shapes) != len(items):
            raise ValueError("model must have uniquely named parameters")
        if num_fragments < 1 or num_fragments > len(items):
            raise ValueError(f"mixing.num_fragments: {num_fragments} not in 1..{len(items)}")
        buckets: list[list[str]] = [[] for _ in range(num_fragments)]
        sizes = [0] * num_fragments
        loose: list[str] = []
        for name, shape in items:
            idx = layer_index(name)
            if idx is None:
                loose.append(name)
                continue
            frag = idx % num_fragments
            buckets[frag].append(name)
            sizes[frag] += _numel(shape)
        for name in loose:
            frag = min(range(num_fragments), key=lambda f: (sizes[f], f))
            buckets[frag].append(name)
            sizes[frag] += _numel(shapes[name])
        order = {name: i for i, (name, _) in enumerate(items)}
        names = tuple(tuple(sorted(b, key=order.__getitem__)) for b in buckets)
        if any(not b for b in names):
            raise ValueError(f"mixing.num_fragments: {num_fragments} leaves a fragment empty")
        return cls(names=names, numels=tuple(sizes), shapes=shapes)

    def flatten(self, params: Mapping[str, torch.Tensor], fragment: int) -> torch.Tensor:
        """Concatenate one fragment's tensors into a new contiguous fp32 CPU vector."""
        parts = [params[n].detach().reshape(-1).to("cpu", torch.float32) for n in self.names[fragment]]
        return torch.cat(parts) if parts else torch.empty(0)

    def unflatten_into(self, params: Mapping[str, torch.Tensor], fragment: int, flat: torch.Tensor) -> None:
        """Copy a flat fp32 vector back into the fragment's tensors (in place, any device/dtype)."""
        if flat.numel() != self.numels[fragment]:
            raise ValueError(f"fragment {fragment}: expected {self.numels[fragment]} values, got {flat.numel()}")
        offset = 0
        with torch.no_grad():
            for name in self.names[fragment]:
                target = params[name]
                n = target.numel()
                target.copy_(flat[offset : offset + n].view(target.shape))
                offset += n


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for dim in shape:
        out *= dim
    return out


def fragment_hash(theta: torch.Tensor, momentum: torch.Tensor) -> str:
    """Content hash of one fragment's outer parameters and momentum (bitwise, fp32)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(theta.contiguous().numpy().tobytes())
    h.update(momentum.contiguous().numpy().tobytes())
    return h.hexdigest()


def state_hash(revision: int, fragment_hashes: Iterable[str]) -> str:
    """Hash of the whole shared state: revision plus every fragment hash in order."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(revision).encode())
    for fh in fragment_hashes:
        h.update(fh.encode())
    return h.hexdigest()


def shard_bounds(numel: int, num_shards: int, block_size: int) -> list[tuple[int, int]]:
    """Split ``numel`` values into ``num_shards`` contiguous shards aligned to ``block_size``.

    Alignment keeps quantization blocks whole inside one shard. Trailing shards may be empty
    when the fragment is small; an empty shard is still owned and exchanged (zero bytes).
    """
    if num_shards < 1:
        raise ValueError("num_shards must be >= 1")
    blocks = -(-numel // block_size)
    per, extra = divmod(blocks, num_shards)
    bounds, start_block = [], 0
    for i in range(num_shards):
        nb = per + (1 if i < extra else 0)
        start, end = start_block * block_size, min((start_block + nb) * block_size, numel)
        bounds.append((min(start, numel), end))
        start_block += nb
    return bounds
