"""Unit tests for peerd.ops.report: summaries in, readable PNGs out, clear errors on bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from peerd.ops.report import load_summaries, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = ["eval_loss_vs_steps.png", "eval_loss_vs_bytes.png", "rounds.png"]


def _peer(i: int, steps: int = 200, history: bool = False, losses: bool = True) -> dict[str, Any]:
    peer = {
        "peer_id": f"12D3KooWpeer{i:04d}abcdef", "steps": steps, "samples": steps * 8,
        "initial_eval_loss": 5.5 if losses else None, "final_eval_loss": 2.1 + 0.1 * i if losses else None,
        "tx_bytes": 3_000_000 * (i + 1), "rx_bytes": 2_900_000, "rounds_committed": 10 + i,
        "rounds_aborted": i, "revision": 10, "state_hash": "ab" * 16, "exit": "max_steps", "index": i,
    }
    if history:
        peer["history"] = [
            {"t_s": 0.5 * k, "step": 10 * k, "eval_loss": (5.5 - 0.15 * k) if k % 4 == 0 else None,
             "train_loss": 5.6 - 0.15 * k, "tx_bytes": 150_000 * k * (i + 1), "rx_bytes": 140_000 * k}
            for k in range(steps // 10 + 1)
        ]
    return peer


def _summary(peers: list[dict[str, Any]], run_id: str = "test") -> dict[str, Any]:
    return {"run_id": run_id, "mode": "diloco", "wall_s": 42.0, "peers": peers}


def _write(tmp_path: Path, doc: Any, name: str = "summary.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def _check_pngs(paths: list[Path], out: Path) -> None:
    import matplotlib.image as mpimg

    assert [p.name for p in paths] == NAMES
    for p in paths:
        assert p.parent == out and p.is_file()
        assert p.read_bytes()[:8] == PNG_SIGNATURE
        assert p.stat().st_size > 20_000, f"{p.name} looks empty ({p.stat().st_size} bytes)"
        img = mpimg.imread(p)
        assert img.shape[1] >= 1200 and img.shape[0] >= 800
        assert img.std() > 0.01  # not a blank canvas


def test_report_two_peers_with_and_without_history(tmp_path: Path) -> None:
    path = _write(tmp_path, _summary([_peer(0, history=True), _peer(1)]))
    summaries = load_summaries([path])
    assert summaries[0]["_label"] == "test/summary"
    out = tmp_path / "out" / "nested"
    _check_pngs(write_report(summaries, out), out)


def test_report_null_losses_failed_peer_and_several_files(tmp_path: Path) -> None:
    failed = {"peer_id": None, "exit": "no summary (exit code 1)", "index": 2}
    nulls = _peer(1, history=True, losses=False)
    for point in nulls["history"]:
        point["eval_loss"] = None
    a = _write(tmp_path, _summary([_peer(0, losses=False), nulls, failed]), "a.json")
    b = _write(tmp_path, _summary([_peer(0, steps=800, history=True)], run_id="solo"), "b.json")
    out = tmp_path / "out"
    _check_pngs(write_report(load_summaries([a, b]), out), out)
    # only null losses anywhere still draws (empty axes with a note), rather than failing
    _check_pngs(write_report(load_summaries([a]), out), out)


def test_byte_axis_goes_log_over_two_decades(tmp_path: Path) -> None:
    from peerd.ops import report

    big = _peer(0, history=True)
    big["history"][1]["tx_bytes"], big["history"][1]["eval_loss"] = 10, 5.4
    path = _write(tmp_path, _summary([big]))
    fig = report._loss_figure(load_summaries([path]), by_bytes=True)
    assert fig.axes[0].get_xscale() == "symlog"
    fig = report._loss_figure(load_summaries([_write(tmp_path, _summary([_peer(0)]))]), by_bytes=True)
    assert fig.axes[0].get_xscale() == "linear"


@pytest.mark.parametrize(("mutate", "needle"), [
    (lambda d: d.pop("peers"), "peers"),
    (lambda d: d.update(peers=[]), "peers"),
    (lambda d: d.update(run_id=7), "run_id"),
    (lambda d: d["peers"][1].pop("steps"), "peers[1].steps"),
    (lambda d: d["peers"][0].update(tx_bytes="lots"), "peers[0].tx_bytes"),
    (lambda d: d["peers"][0].update(rounds_aborted=-1), "peers[0].rounds_aborted"),
    (lambda d: d["peers"][1].pop("final_eval_loss"), "peers[1].final_eval_loss"),
    (lambda d: d["peers"][0].update(initial_eval_loss="nan"), "peers[0].initial_eval_loss"),
    (lambda d: d["peers"][0].update(history={}), "peers[0].history"),
    (lambda d: d["peers"][0]["history"][3].pop("step"), "peers[0].history[3].step"),
    (lambda d: d["peers"][0]["history"][2].update(eval_loss=[1]), "peers[0].history[2].eval_loss"),
    (lambda d: d["peers"].append("oops"), "peers[2]"),
])
def test_malformed_summary_names_file_and_key(tmp_path: Path, mutate: Any, needle: str) -> None:
    doc = copy.deepcopy(_summary([_peer(0, history=True), _peer(1)]))
    mutate(doc)
    path = _write(tmp_path, doc)
    with pytest.raises(ValueError, match=r"summary\.json") as err:
        load_summaries([path])
    assert needle in str(err.value)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", ""])
def test_unparseable_file_raises_value_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="bad.json"):
        load_summaries([path])


def test_missing_file_raises_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nope.json"):
        load_summaries([tmp_path / "nope.json"])
