"""A cached solo reference for ``peerd swarm``: what one peer alone reached on the same settings.

A swarm's eval loss means little without the loss of one peer training alone for the same steps.
Measuring it costs a second run, so ``solo_reference.json`` (next to this module) ships results
measured with ``peerd swarm --peers 1 --max-steps N`` at the default settings. A solo run mixes
with nobody, so it depends only on the task, its options, the seed, the data and the steps (and
the Python version: the default corpus is its standard library); an entry is shown only when all
of those match the swarm's, and it is always labelled as cached, with how it was measured.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from peerd.core.config import PeerdConfig

FILE = Path(__file__).with_name("solo_reference.json")


def fingerprint(cfg: PeerdConfig, max_steps: int) -> dict[str, Any]:
    """What decides a solo run's result (not data.num_shards: the swarm sets it to its size)."""
    return {"task": cfg.task, "task_options": dict(cfg.task_options), "seed": cfg.seed,
            "data_path": cfg.data.path, "max_corpus_bytes": cfg.data.max_corpus_bytes,
            "heldout_fraction": cfg.data.heldout_fraction, "max_steps": max_steps,
            "python": ".".join(platform.python_version_tuple()[:2])}


def lookup(cfg: PeerdConfig, max_steps: int, path: Path = FILE) -> dict[str, Any] | None:
    """The cached entry measured on these settings, or None (no entry, or an unreadable file)."""
    try:
        entries = json.loads(path.read_text())["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    want = fingerprint(cfg, max_steps)
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("fingerprint") == want:
            return entry
    return None


def describe(entry: dict[str, Any] | None, max_steps: int) -> str:
    """One line for under the result table."""
    if entry is None:
        return (f"solo reference: none cached for these settings; measure one with "
                f"`peerd swarm --peers 1 --max-steps {max_steps}` and the same --set options")
    return (f"solo reference (cached, not run now): 1 peer alone, {entry['fingerprint']['max_steps']} steps, "
            f"same task, seed and data: eval loss {entry['final_eval_loss']:.3f} "
            f"(measured {entry['measured']} with `{entry['command']}`)")
