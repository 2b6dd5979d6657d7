"""Atomic checkpoints: round trip, torn/corrupt files are never loaded, old ones pruned."""

from __future__ import annotations

from pathlib import Path

import torch

from peerd.node import checkpoint as ck


def content(v: float) -> dict:
    return {"revision": 3, "theta": [torch.full((5,), v)], "meta": {"step": 7, "name": "x"}}


def test_round_trip_and_pruning(tmp_path: Path) -> None:
    for v in (1.0, 2.0, 3.0):
        ck.save(tmp_path, content(v))
    files = ck.existing(tmp_path)
    assert [p.name for p in files] == ["ckpt-00000003.pt", "ckpt-00000002.pt"]
    loaded, problems = ck.load_latest(tmp_path)
    assert loaded is not None and not problems
    assert torch.equal(loaded.content["theta"][0], torch.full((5,), 3.0))
    assert loaded.content["meta"] == {"step": 7, "name": "x"}


def test_torn_newest_falls_back_to_previous(tmp_path: Path) -> None:
    ck.save(tmp_path, content(1.0))
    newest = ck.save(tmp_path, content(2.0))
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # as if the write had been cut (without the rename protocol)
    loaded, problems = ck.load_latest(tmp_path)
    assert loaded is not None and torch.equal(loaded.content["theta"][0], torch.full((5,), 1.0))
    assert problems and "digest mismatch" in problems[0]


def test_bit_flip_and_leftover_tmp_are_ignored(tmp_path: Path) -> None:
    good = ck.save(tmp_path, content(1.0))
    (tmp_path / ".ckpt-00000002.pt.tmp").write_bytes(b"partial")  # SIGKILL before the rename
    loaded, _ = ck.load_latest(tmp_path)
    assert loaded is not None and loaded.path == good
    data = bytearray(good.read_bytes())
    data[-10] ^= 0xFF
    good.write_bytes(bytes(data))
    loaded, problems = ck.load_latest(tmp_path)
    assert loaded is None and problems


def test_code_executing_pickle_is_refused(tmp_path: Path) -> None:
    import hashlib
    import pickle

    class Evil:
        def __reduce__(self):  # noqa: D105
            return (print, ("pwned",))

    blob = pickle.dumps({"version": 1, "x": Evil()})
    path = tmp_path / "ckpt-00000001.pt"
    path.write_bytes(hashlib.blake2b(blob, digest_size=16).hexdigest().encode() + b"\n" + blob)
    loaded, problems = ck.load_latest(tmp_path)
    assert loaded is None and "unreadable" in problems[0]
