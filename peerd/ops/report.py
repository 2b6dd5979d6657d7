"""``peerd report``: run summaries (``--summary`` JSON) to PNG plots a user can look at.

``load_summaries`` reads and validates one or more summary files; ``write_report`` draws
``eval_loss_vs_steps.png``, ``eval_loss_vs_bytes.png`` and ``rounds.png`` into a directory. Each
file is one series group, labelled ``run_id/file-stem``; each peer is one line. A peer's optional
``history`` gives the curve; without it (or where it lacks the ends) the summary's start point
``(0 steps, 0 bytes, initial_eval_loss)`` and end point ``(steps, tx_bytes, final_eval_loss)`` are
used. Null losses are skipped. Peers that left no summary (``peer_id`` null, as ``peerd swarm``
writes them) are left out. Drawing uses matplotlib's ``Figure`` with the Agg canvas, never pyplot,
so there is no global state and no window; matplotlib is imported only when a report is drawn.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_INT_KEYS = ("steps", "tx_bytes", "rounds_committed", "rounds_aborted")
_LOSS_KEYS = ("initial_eval_loss", "final_eval_loss")
_SIZE_IN, _DPI = (12, 8), 120  # 1440x960 px
_LINESTYLES = ("-", "--", "-.")  # per run; ":" marks start/end-only peers
_MARKERS = ("o", "s", "^", "D", "v", "P")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_loss(v: Any) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool))


def _check_peer(peer: Any, where: str) -> None:
    if not isinstance(peer, dict):
        raise ValueError(f"{where}: expected an object, got {type(peer).__name__}")
    if peer.get("peer_id") is None:  # a swarm peer that wrote no summary: nothing to plot
        return
    if not isinstance(peer["peer_id"], str):
        raise ValueError(f"{where}.peer_id: expected a string, got {peer['peer_id']!r}")
    for key in _INT_KEYS:
        if not _is_int(peer.get(key)):
            raise ValueError(f"{where}.{key}: expected a non-negative integer, got {peer.get(key, '<missing>')!r}")
    for key in _LOSS_KEYS:
        if key not in peer or not _is_loss(peer[key]):
            raise ValueError(f"{where}.{key}: expected a number or null, got {peer.get(key, '<missing>')!r}")
    history = peer.get("history")
    if history is None:
        return
    if not isinstance(history, list):
        raise ValueError(f"{where}.history: expected a list, got {type(history).__name__}")
    for j, point in enumerate(history):
        if not isinstance(point, dict):
            raise ValueError(f"{where}.history[{j}]: expected an object, got {type(point).__name__}")
        for key in ("step", "tx_bytes"):
            if not _is_int(point.get(key)):
                raise ValueError(f"{where}.history[{j}].{key}: expected a non-negative integer, "
                                 f"got {point.get(key, '<missing>')!r}")
        if not _is_loss(point.get("eval_loss")):
            raise ValueError(f"{where}.history[{j}].eval_loss: expected a number or null, got {point['eval_loss']!r}")


def load_summaries(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Read and validate summary files.

    Args:
        paths: Summary JSON files as written by ``peerd join/swarm --summary``.

    Returns:
        The parsed summaries, in order, each with an added ``"_label"`` (``run_id/file-stem``).

    Raises:
        ValueError: A file is unreadable, not JSON, or malformed; the message names the file and key.
    """
    summaries = []
    for path in map(Path, paths):
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read summary JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: expected a JSON object at the top level, got {type(doc).__name__}")
        if not isinstance(doc.get("run_id"), str):
            raise ValueError(f"{path}: run_id: expected a string, got {doc.get('run_id', '<missing>')!r}")
        if not isinstance(doc.get("peers"), list) or not doc["peers"]:
            raise ValueError(f"{path}: peers: expected a non-empty list, got {doc.get('peers', '<missing>')!r}")
        for i, peer in enumerate(doc["peers"]):
            _check_peer(peer, f"{path}: peers[{i}]")
        summaries.append({**doc, "_label": f"{doc['run_id']}/{path.stem}"})
    return summaries


def _finite(v: Any) -> bool:
    return v is not None and math.isfinite(v)


def _loss_points(peer: dict[str, Any]) -> list[tuple[int, int, float]]:
    """(step, tx_bytes, eval_loss) points of one peer, history plus the summary's ends."""
    pts = [(p["step"], p["tx_bytes"], p["eval_loss"]) for p in peer.get("history") or [] if _finite(p.get("eval_loss"))]
    pts.sort()
    if _finite(peer["initial_eval_loss"]) and not any(s == 0 for s, _, _ in pts):
        pts.insert(0, (0, 0, peer["initial_eval_loss"]))
    if _finite(peer["final_eval_loss"]) and not any(s >= peer["steps"] for s, _, _ in pts):
        pts.append((peer["steps"], peer["tx_bytes"], peer["final_eval_loss"]))
    return pts


def _series(summaries: list[dict[str, Any]]) -> list[tuple[str, int, dict[str, Any]]]:
    """(legend label, group index, peer) for every peer that has a summary."""
    multi = len(summaries) > 1
    out = []
    for g, doc in enumerate(summaries):
        for pos, peer in enumerate(doc["peers"]):
            if peer.get("peer_id") is None:
                continue
            label = f"…{peer['peer_id'][-6:]} #{peer.get('index', pos)}"
            out.append((f"{doc.get('_label', doc['run_id'])}: {label}" if multi else label, g, peer))
    return out


def _color(k: int, n: int) -> Any:
    from matplotlib import colormaps

    return f"C{k % 10}" if n <= 10 else colormaps["tab20"]((2 * k + k // 10) % 20)  # 10 dark hues, then light


def _title(summaries: list[dict[str, Any]], what: str) -> str:
    if len(summaries) == 1:
        doc = summaries[0]
        wall = f", {doc['wall_s']:.0f} s" if isinstance(doc.get("wall_s"), int | float) else ""
        return f"{what}: run {doc.get('_label', doc['run_id'])} ({doc.get('mode', '?')}{wall})"
    labels = [doc.get("_label", doc["run_id"]) for doc in summaries]
    return f"{what}: " + (" vs ".join(labels) if len(labels) <= 3 else f"{len(labels)} runs")


def _loss_figure(summaries: list[dict[str, Any]], by_bytes: bool) -> Any:
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    fig = Figure(figsize=_SIZE_IN, dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    xs: list[float] = []
    series = _series(summaries)
    for k, (label, g, peer) in enumerate(series):
        pts = _loss_points(peer)
        x = [b if by_bytes else s for s, b, _ in pts]
        xs += x
        ends_only = not any(_finite(p.get("eval_loss")) for p in peer.get("history") or [])
        notes = ["no eval loss"] if not pts else ["start/end only"] if ends_only else []
        if by_bytes and pts and not peer["tx_bytes"]:
            notes.append("sent 0 B")
        ax.plot(x, [loss for _, _, loss in pts], color=_color(k, len(series)), marker=_MARKERS[g % 6],
                linestyle=":" if ends_only else _LINESTYLES[g % 3], linewidth=1.5 if ends_only else 2,
                markersize=6 if len(pts) < 50 else 0, label=label + "".join(f" ({n})" for n in notes))
    positive = [x for x in xs if x > 0]
    if by_bytes:
        if positive and max(positive) / min(positive) > 100:  # spans > 2 decades; symlog keeps x = 0
            lo, hi = math.floor(math.log10(min(positive))), math.ceil(math.log10(max(positive)))
            ax.set_xscale("symlog", linthresh=10**lo, linscale=1)
            ax.set_xticks([0] + [10**e for e in range(lo, hi + 1)], minor=False)
            ax.set_xticks([], minor=True)
        ax.xaxis.set_major_formatter(EngFormatter(unit="B"))
        ax.set_xlabel("bytes sent by the peer (tx, cumulative)")
    else:
        ax.set_xlabel("inner training steps")
    ax.set_ylabel("held-out eval loss (task units; tinylm: nats/byte)")
    ax.set_title(_title(summaries, "Eval loss vs " + ("bytes sent" if by_bytes else "steps")))
    ax.grid(True, which="major", alpha=0.3)
    if not xs:
        ax.text(0.5, 0.5, "no eval-loss data in these summaries", transform=ax.transAxes, ha="center", fontsize=16)
    if ax.get_legend_handles_labels()[0]:
        outside = {"loc": "upper left", "bbox_to_anchor": (1.01, 1)} if len(series) > 8 else {"loc": "best"}
        ax.legend(title="peer", ncols=1 + len(series) // 24, **outside)
    return fig


def _rounds_figure(summaries: list[dict[str, Any]]) -> Any:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=_SIZE_IN, dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    series = _series(summaries)
    pos = [k + 0.5 * g for k, (_, g, _) in enumerate(series)]  # a gap between runs
    for off, key, color, name in ((-0.2, "rounds_committed", "tab:green", "committed"),
                                  (0.2, "rounds_aborted", "tab:red", "aborted")):
        bars = ax.bar([p + off for p in pos], [peer[key] for _, _, peer in series], width=0.4, color=color, label=name)
        ax.bar_label(bars, padding=2)
    ax.set_xticks(pos, [label.replace(": ", "\n") for label, _, _ in series],
                  rotation=30 if len(series) > 8 else 0, ha="right" if len(series) > 8 else "center")
    ax.set_xlabel("peer")
    ax.set_ylabel("outer rounds (count)")
    ax.set_title(_title(summaries, "Outer rounds per peer"))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, axis="y", alpha=0.3)
    ax.margins(y=0.1)
    ax.legend()
    return fig


def write_report(summaries: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Draw the report PNGs for validated summaries (see ``load_summaries``).

    Args:
        summaries: One or more summaries; each is a series group.
        out_dir: Output directory, created if missing; existing PNGs of the same name are replaced.

    Returns:
        The written paths: eval_loss_vs_steps.png, eval_loss_vs_bytes.png, rounds.png.
    """
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {"eval_loss_vs_steps.png": lambda: _loss_figure(summaries, by_bytes=False),
               "eval_loss_vs_bytes.png": lambda: _loss_figure(summaries, by_bytes=True),
               "rounds.png": lambda: _rounds_figure(summaries)}
    written = []
    with rc_context({"font.size": 13, "axes.titlesize": 16, "axes.labelsize": 14, "legend.fontsize": 12}):
        for name, make in figures.items():
            fig = make()
            FigureCanvasAgg(fig)  # Agg canvas, no pyplot: no window and no global figure registry
            fig.savefig(out_dir / name, format="png")
            written.append(out_dir / name)
    return written
