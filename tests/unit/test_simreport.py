"""``peerd simulate`` output: one panel per size, no unexplained None, no premature 'floor'."""

from __future__ import annotations

import pytest

from peerd.ops.simreport import decay_figure, summary_lines


def series(topology: str, n: int, reached: int | None, rounds: int = 40) -> dict:
    return {"topology": topology, "n": n, "distance": [1.0, 0.5, 0.25], "measured_rate": 0.25,
            "theory_rate": 0.25, "rounds_to_1e-5": reached, "log2_n": 4, "rounds": rounds,
            "min_relative_distance": 3.2e-4}


@pytest.mark.parametrize(("sizes", "panels"), [([16], 1), ([16, 64], 2), ([16, 64, 256], 3), ([16, 64, 256, 1024], 4)])
def test_decay_figure_has_one_panel_per_size(sizes: list[int], panels: int) -> None:
    fig = decay_figure({"sizes": sizes, "decay": {"series": [series("ring", n, 3) for n in sizes]}})
    assert len(fig.axes) == panels and all(ax.lines for ax in fig.axes)


def test_summary_explains_unreached_targets_and_unflattened_floors() -> None:
    res = {"quick": True, "decay": {"series": [series("hypercube", 16, 4), series("ring", 16, None, rounds=50)]},
           "churn": [], "a2cid2": {"series": []},
           "codec_floor": {"series": [
               {"codec": "int8", "anchored": True, "start": 0.8, "floor": 0.02, "distance": [0.8] * 11,
                "still_falling": True},
               {"codec": "int4", "anchored": False, "start": 0.8, "floor": 1.05, "distance": [1.0] * 11,
                "still_falling": False}]}}
    text = "\n".join(summary_lines(res))
    assert "None" not in text and ">50 (lowest 3.2e-04)" in text and "not within the R rounds" in text
    assert "no floor yet: 2.000e-02, still falling after 10 rounds (run without --quick)" in text
    assert "floor 1.050e+00" in text
