"""Byte-level text corpus for the built-in tasks, split into shards and a held-out set.

By default the corpus is the ``.py`` files of the running Python's standard
library (test packages, ``site-packages`` and caches excluded; about 12 MB on
CPython 3.11).  With ``data_path`` set it is every regular file with a text
extension (:data:`DATA_EXTENSIONS`) under that directory, or the file itself,
whatever its extension, when ``data_path`` is a single file.

The split is a pure function of the file list, so every peer computes it
locally with no coordination:

* files are sorted by their relative POSIX path;
* the ``heldout_fraction`` of files with the smallest keyed BLAKE2b hash of
  that path (at least one) form the held-out set, shared by all peers;
* every other file goes to shard ``blake2b(path) % num_shards``.

When some shard would get no data (a tiny ``data_path``), the training files
are instead concatenated and cut into ``num_shards`` equal byte ranges; a
single file additionally gives its tail to the held-out set.  Reads are capped
(``max_corpus_bytes`` for the shard, ``max_heldout_bytes`` for the held-out
set) so startup stays well under a second.  Peers must run the same Python
version for the default corpus to be identical.
"""

from __future__ import annotations

import hashlib
import math
import os
import sysconfig
from dataclasses import dataclass

import torch

__all__ = ["Corpus", "DATA_EXTENSIONS", "SourceFile", "discover_files", "load_corpus", "split_files"]

# Extensions picked up when data_path is a directory.
DATA_EXTENSIONS = (".txt", ".md", ".py", ".rst")
DEFAULT_MAX_CORPUS_BYTES = 4_000_000
DEFAULT_MAX_HELDOUT_BYTES = 256 * 1024
DEFAULT_HELDOUT_FRACTION = 0.02
# In byte-range mode with a single file, the held-out tail gets at least this
# many bytes (or a quarter of the file) so evaluation has a few windows.
_MIN_HELDOUT_BYTES = 4096
_STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "idle_test", "__pycache__"})


@dataclass(frozen=True)
class SourceFile:
    """One corpus file: its sort/hash key, location and size at discovery."""

    rel: str
    path: str
    size: int


@dataclass(frozen=True)
class Corpus:
    """One peer's view of the corpus.

    Attributes:
        train: This shard's training bytes, 1-D ``torch.uint8``.
        heldout: The shared held-out bytes, 1-D ``torch.uint8``.
        num_files: Files discovered in the whole corpus.
        mode: ``"files"`` (split by file hash) or ``"bytes"`` (byte ranges).
    """

    train: torch.Tensor
    heldout: torch.Tensor
    num_files: int
    mode: str


def _stable_hash(rel: str, person: bytes) -> int:
    # Keyed by purpose so the held-out choice and the shard choice are independent.
    digest = hashlib.blake2b(rel.encode("utf-8", "surrogateescape"), digest_size=8, person=person).digest()
    return int.from_bytes(digest, "big")


def _walk(root: str, keep_dir, keep_file) -> list[SourceFile]:
    found: list[SourceFile] = []
    stack = [(root, "")]
    while stack:
        directory, rel_dir = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                rel = f"{rel_dir}{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    if keep_dir(entry.name):
                        stack.append((entry.path, rel + "/"))
                elif entry.is_file() and keep_file(entry.name):
                    found.append(SourceFile(rel, entry.path, entry.stat().st_size))
    found.sort(key=lambda f: f.rel)
    return found


def discover_files(data_path: str | os.PathLike[str] | None = None) -> list[SourceFile]:
    """Lists the corpus files, sorted by relative path.

    Args:
        data_path: ``None`` for the stdlib ``.py`` files, a directory for its
            :data:`DATA_EXTENSIONS` files (hidden entries skipped), or a file.

    Returns:
        The files, sorted by relative POSIX path.

    Raises:
        ValueError: If ``data_path`` does not exist.
    """
    if data_path is None:
        root = sysconfig.get_paths()["stdlib"]
        return _walk(
            root,
            lambda d: d not in _STDLIB_SKIP_DIRS and not d.startswith("test"),
            lambda f: f.endswith(".py") and not f.startswith("test"),
        )
    path = os.fspath(data_path)
    if os.path.isfile(path):
        return [SourceFile(os.path.basename(path), path, os.path.getsize(path))]
    if not os.path.isdir(path):
        raise ValueError(f"data_path {path!r} does not exist or is not a file or directory")
    return _walk(
        path,
        lambda d: not d.startswith(".") and d != "__pycache__",
        lambda f: not f.startswith(".") and f.lower().endswith(DATA_EXTENSIONS),
    )


def split_files(
    files: list[SourceFile], num_shards: int, heldout_fraction: float = DEFAULT_HELDOUT_FRACTION
) -> tuple[list[SourceFile], list[list[SourceFile]]]:
    """Splits files into a held-out set and per-shard training lists.

    Args:
        files: Files sorted by relative path, as from :func:`discover_files`.
        num_shards: Number of training shards.
        heldout_fraction: Fraction of files held out, in (0, 1).

    Returns:
        ``(heldout, shards)``; each list keeps relative-path order. With fewer
        than two files everything is "training" and ``heldout`` is empty.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction!r}")
    if len(files) < 2:
        return [], [list(files) if s == 0 else [] for s in range(num_shards)]
    n_heldout = min(max(1, round(heldout_fraction * len(files))), len(files) - 1)
    by_hash = sorted(files, key=lambda f: (_stable_hash(f.rel, b"peerd-heldout"), f.rel))
    heldout_rels = {f.rel for f in by_hash[:n_heldout]}
    heldout = [f for f in files if f.rel in heldout_rels]
    shards: list[list[SourceFile]] = [[] for _ in range(num_shards)]
    for f in files:
        if f.rel not in heldout_rels:
            shards[_stable_hash(f.rel, b"peerd-shard") % num_shards].append(f)
    return heldout, shards


def _read_span(files: list[SourceFile], start: int, stop: int) -> bytearray:
    """Reads bytes [start, stop) of the concatenation of ``files``."""
    out = bytearray()
    offset = 0
    for f in files:
        if offset >= stop:
            break
        lo, hi = max(start - offset, 0), min(stop - offset, f.size)
        if lo < hi:
            with open(f.path, "rb") as fh:
                fh.seek(lo)
                out += fh.read(hi - lo)
        offset += f.size
    return out


def _to_tensor(data: bytearray) -> torch.Tensor:
    # frombuffer shares memory with the (writable) bytearray; clone to own it.
    return torch.frombuffer(data, dtype=torch.uint8).clone()


def load_corpus(
    data_path: str | os.PathLike[str] | None,
    shard: int,
    num_shards: int,
    *,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    max_corpus_bytes: int = DEFAULT_MAX_CORPUS_BYTES,
    max_heldout_bytes: int = DEFAULT_MAX_HELDOUT_BYTES,
) -> Corpus:
    """Loads this shard's training bytes and the shared held-out bytes.

    Args:
        data_path: See :func:`discover_files`.
        shard: This peer's shard index.
        num_shards: Number of shards.
        heldout_fraction: Fraction of files held out.
        max_corpus_bytes: Cap on training bytes read for this shard.
        max_heldout_bytes: Cap on held-out bytes read.

    Returns:
        The :class:`Corpus`.

    Raises:
        ValueError: If ``data_path`` is missing, or the corpus, the shard or the
            held-out set would be empty.
    """
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in [0, {num_shards}), got {shard}")
    files = discover_files(data_path)
    where = "the built-in stdlib corpus" if data_path is None else f"data_path {os.fspath(data_path)!r}"
    if sum(f.size for f in files) == 0:
        raise ValueError(f"{where} yields no bytes (extensions read from directories: {', '.join(DATA_EXTENSIONS)})")
    heldout_files, shards = split_files(files, num_shards, heldout_fraction)
    if all(sum(f.size for f in s) > 0 for s in shards) and heldout_files:
        mode = "files"
        train = _read_span(shards[shard], 0, max_corpus_bytes)
        heldout = _read_span(heldout_files, 0, max_heldout_bytes)
    else:
        # Too few files for a per-file split: cut byte ranges instead, so every
        # shard still gets (disjoint) data.
        mode = "bytes"
        train_files = [f for s in shards for f in s]
        train_files.sort(key=lambda f: f.rel)
        total = sum(f.size for f in train_files)
        if heldout_files:
            heldout = _read_span(heldout_files, 0, max_heldout_bytes)
        else:
            n_tail = max(math.ceil(heldout_fraction * total), min(_MIN_HELDOUT_BYTES, total // 4))
            total -= n_tail
            heldout = _read_span(train_files, total, min(total + n_tail, total + max_heldout_bytes))
        lo, hi = shard * total // num_shards, (shard + 1) * total // num_shards
        train = _read_span(train_files, lo, min(hi, lo + max_corpus_bytes))
    if not train:
        raise ValueError(f"{where} has too little data for {num_shards} shards (shard {shard} is empty)")
    if not heldout:
        raise ValueError(f"{where} yields an empty held-out set")
    return Corpus(train=_to_tensor(train), heldout=_to_tensor(heldout), num_files=len(files), mode=mode)
