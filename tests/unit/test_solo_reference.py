"""The cached solo reference under ``peerd swarm``'s table: shown only for the settings it was measured on."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from peerd.core.config import load_config
from peerd.ops import reference
from peerd.ops.swarm import print_table


def _file(tmp_path: Path, fingerprint: dict) -> Path:
    path = tmp_path / "ref.json"
    path.write_text(json.dumps({"entries": [{"fingerprint": fingerprint, "final_eval_loss": 2.37,
                                             "measured": "2026-11-29", "command": "peerd swarm --peers 1"}]}))
    return path


def test_lookup_matches_only_the_measured_settings(tmp_path: Path) -> None:
    cfg = load_config(None, [])
    path = _file(tmp_path, reference.fingerprint(cfg, 300))
    assert reference.lookup(cfg, 300, path)["final_eval_loss"] == 2.37
    assert reference.lookup(cfg, 301, path) is None  # other steps
    assert reference.lookup(load_config(None, ["seed=1"]), 300, path) is None
    assert reference.lookup(load_config(None, ["task_options={d_model: 48}"]), 300, path) is None
    assert reference.lookup(load_config(None, ["data.max_corpus_bytes=100000"]), 300, path) is None
    # The swarm sets the shard count to its size: it does not change what one peer alone does.
    assert reference.lookup(load_config(None, ["data.num_shards=4"]), 300, path) is not None


def test_lookup_survives_a_broken_file(tmp_path: Path) -> None:
    cfg = load_config(None, [])
    for text in ("", "{", "[]", '{"entries": 3}', '{"entries": [1, "x"]}'):
        (tmp_path / "bad.json").write_text(text)
        assert reference.lookup(cfg, 300, tmp_path / "bad.json") is None
    assert reference.lookup(cfg, 300, tmp_path / "missing.json") is None


def test_shipped_file_is_well_formed() -> None:
    entries = json.loads(reference.FILE.read_text())["entries"]
    assert entries
    for e in entries:
        assert set(e["fingerprint"]) == set(reference.fingerprint(load_config(None, []), 1))
        assert e["final_eval_loss"] > 0 and "peerd swarm --peers 1" in e["command"] and e["measured"]


def test_table_prints_the_labelled_reference(tmp_path: Path) -> None:
    peers = [{"index": 0, "peer_id": "Qm12", "steps": 300, "initial_eval_loss": 5.5, "final_eval_loss": 2.3,
              "exit": "done"}]
    cfg = load_config(None, [])
    entry = reference.lookup(cfg, 300, _file(tmp_path, reference.fingerprint(cfg, 300)))
    for ref, expect in ((entry, "solo reference (cached, not run now): 1 peer alone, 300 steps"),
                        (None, "solo reference: none cached for these settings")):
        out = io.StringIO()
        result = {"run_id": "peerd", "mode": "diloco", "wall_s": 1.0, "peers": peers,
                  "solo_reference": {"max_steps": 300, "entry": ref}}
        print_table(result, Console(file=out, width=80, force_terminal=False, color_system=None))
        text = " ".join(out.getvalue().split())
        assert expect in text, text
        assert max(map(len, out.getvalue().splitlines())) <= 80, out.getvalue()
    assert "2.370" in reference.describe(entry, 300)
