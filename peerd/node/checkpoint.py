"""Checkpoints: atomic (write, fsync, rename) local snapshots of everything a restart needs.

A checkpoint is one file ``ckpt-<seq>.pt`` holding tensors and plain values only, written with
``torch.save`` to a temporary name, fsynced, renamed into place and the directory fsynced, so a
SIGKILL at any moment leaves either the previous file or the new one, never a half-written one
under a final name. A digest of the payload is stored beside it in the same file; loading checks
it and falls back to the previous checkpoint when the newest is unreadable or fails the check.
Loading uses ``weights_only=True``: no arbitrary object is ever unpickled (checkpoints never come
from the network, but a tampered file must not execute code either). The two newest are kept.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")
KEEP = 2


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that does not fit this run."""


@dataclass(frozen=True)
class Loaded:
    """A verified checkpoint."""

    path: Path
    content: dict[str, Any]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _digest(blob: bytes) -> str:
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def existing(directory: Path) -> list[Path]:
    """Checkpoint files in ``directory``, newest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save(directory: Path, content: dict[str, Any]) -> Path:
    """Write ``content`` (tensors, numbers, strings, lists/dicts of those) as the newest checkpoint."""
    directory.mkdir(parents=True, exist_ok=True)
    files = existing(directory)
    seq = int(_NAME.match(files[0].name).group(1)) + 1 if files else 1  # type: ignore[union-attr]
    buf = io.BytesIO()
    torch.save({"version": FORMAT_VERSION, **content}, buf)
    blob = buf.getvalue()
    final = directory / f"ckpt-{seq:08d}.pt"
    tmp = directory / f".{final.name}.tmp"
    with open(tmp, "wb") as f:
        f.write(_digest(blob).encode() + b"\n")
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(directory)
    for old in existing(directory)[KEEP:]:
        old.unlink(missing_ok=True)
    return final


def _read(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    head, sep, blob = raw.partition(b"\n")
    if not sep or head.decode(errors="replace") != _digest(blob):
        raise CheckpointError(f"{path.name}: digest mismatch (torn or corrupted)")
    try:
        content = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means unusable
        raise CheckpointError(f"{path.name}: unreadable ({exc})") from exc
    if not isinstance(content, dict) or content.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path.name}: unknown format")
    return content


def load_latest(directory: Path) -> tuple[Loaded | None, list[str]]:
    """The newest checkpoint that verifies, plus one message per newer file that did not."""
    problems = []
    for path in existing(directory):
        try:
            return Loaded(path, _read(path)), problems
        except (OSError, CheckpointError) as exc:
            problems.append(str(exc))
    return None, problems
