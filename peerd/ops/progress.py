"""Live progress of ``peerd swarm``: each peer's step, loss, rounds and revision while it trains.

The launcher polls every peer's admin endpoint (the status JSON ``peerd status`` reads; its
address is in the peer's ready file). On a terminal a table refreshes in place (rich ``Live``);
otherwise (a log, CI) one summary line is printed every ``line_every_s``. The last status seen of
each peer is kept, so a timeout can say where each unfinished peer stood.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from peerd.ops.status import get_status, short_id


@dataclass
class PeerView:
    """What the launcher knows about one peer."""

    index: int
    log: Path
    ready_file: Path
    admin: str | None = None
    status: dict[str, Any] = field(default_factory=dict)  # the last one that answered
    exit_code: int | None = None

    def phase(self) -> str:
        """The peer's phase: starting, its health state, finishing, exited or exit N."""
        if self.exit_code is not None:
            return "exited" if self.exit_code == 0 else f"exit {self.exit_code}"
        if not self.status:
            return "starting"
        if self.status.get("done"):
            return "finishing"
        return str(self.status.get("health") or "up")


def _num(value: Any, spec: str = "") -> str:
    return "-" if not isinstance(value, (int, float)) else format(value, spec)


class Progress:
    """Poll the peers and show their progress; use as a context manager around the wait loop."""

    def __init__(self, peers: list[PeerView], max_steps: int, console: Console, line_every_s: float = 5.0) -> None:
        """``console``: where to draw; a terminal gets the live table, anything else summary lines."""
        self.peers = peers
        self.max_steps = max_steps
        self.console = console
        self.line_every_s = line_every_s
        self.t0 = time.monotonic()
        self._last_line = -1e9
        self._pool = ThreadPoolExecutor(max_workers=min(16, max(1, len(peers))), thread_name_prefix="peerd-progress")
        self._live: Live | None = None

    def __enter__(self) -> Progress:
        """Start the live display on a terminal."""
        if self.console.is_terminal:
            self._live = Live(self.table(), console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        """Draw the final state and stop polling threads."""
        if self._live is not None:
            self._live.update(self.table())
            self._live.__exit__(None, None, None)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def poll(self) -> None:
        """Read every live peer's status (bounded: 1 s per peer, in parallel), then redraw."""
        for p in self.peers:
            if p.admin is None and p.ready_file.exists():
                try:
                    p.admin = json.loads(p.ready_file.read_text()).get("admin")
                except (OSError, ValueError):
                    pass
        asking = [p for p in self.peers if p.admin and p.exit_code is None]
        for p, (body, _) in zip(asking, self._pool.map(lambda q: get_status(q.admin, 1.0), asking), strict=True):
            if body is not None:
                p.status = body
        self.draw()

    def draw(self) -> None:
        """Refresh the table, or print a summary line when one is due."""
        if self._live is not None:
            self._live.update(self.table())
        elif time.monotonic() - self._last_line >= self.line_every_s:
            self._last_line = time.monotonic()
            self.console.print(self.line(), soft_wrap=True, highlight=False)

    def table(self) -> Table:
        """One row per peer; fits 80 columns (short ids; the last round's reason folds)."""
        t = Table(title=f"peerd swarm: {len(self.peers)} peers, {time.monotonic() - self.t0:.0f}s",
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=0)
        for col in ("peer", "state", "step", "loss", "ok/ab", "last round", "rev", "hash"):
            t.add_column(col, no_wrap=col != "last round", overflow="fold",
                         justify="right" if col in ("step", "loss", "rev") else "left",
                         ratio=1 if col == "last round" else None)
        for p in self.peers:
            s, last = p.status, p.status.get("last_round") or {}
            t.add_row(f"{p.index} {short_id(s.get('peer_id'))}" if s else str(p.index), p.phase(),
                      f"{_num(s.get('step'))}/{self.max_steps}", _num(s.get("loss"), ".3f"),
                      f"{_num(s.get('rounds_committed'))}/{_num(s.get('rounds_aborted'))}",
                      f"{last.get('outcome', '-')} {last.get('reason', '')}".strip() if last else "-",
                      _num(s.get("revision")), str(s.get("state_hash") or "-")[:6])
        return t

    def line(self) -> str:
        """One line for all peers: ranges over the swarm (min..max), and how many are up."""
        up = [p.status for p in self.peers if p.status and p.exit_code is None]

        def span(key: str, spec: str = "") -> str:
            vals = [s[key] for s in up if isinstance(s.get(key), (int, float))]
            if not vals:
                return "-"
            lo, hi = format(min(vals), spec), format(max(vals), spec)
            return lo if lo == hi else f"{lo}..{hi}"

        bad = [f"{p.index}:{p.phase()}" for p in self.peers if p.phase() not in ("healthy", "finishing", "exited")]
        return (f"swarm {time.monotonic() - self.t0:.0f}s: {len(up)}/{len(self.peers)} up, step {span('step')}"
                f"/{self.max_steps}, loss {span('loss', '.3f')}, ok {span('rounds_committed')} aborted "
                f"{span('rounds_aborted')}, rev {span('revision')}" + (f"; {' '.join(bad)}" if bad else ""))

    def unfinished_report(self) -> list[str]:
        """For a timeout: each peer still running, where it stood, its last rounds and its log."""
        out = []
        for p in self.peers:
            if p.exit_code is not None:
                continue
            s = p.status
            recent = ", ".join(s.get("recent_rounds") or []) or "none seen"
            stood = (f"step {_num(s.get('step'))}/{self.max_steps}, rounds ok/aborted "
                     f"{_num(s.get('rounds_committed'))}/{_num(s.get('rounds_aborted'))}, revision "
                     f"{_num(s.get('revision'))}" if s else "never answered on its admin endpoint")
            out.append(f"peer {p.index} did not finish: {stood}; last rounds: {recent}; log: {p.log}")
        return out
