"""``peerd swarm`` in a real 80-column terminal (tmux): live progress refreshes in place and fits.

tmux is a CI dependency (.ci/run installs it); this test is never skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import FAST, wait_for

SETTINGS = [s for s in FAST if not s.startswith(("transport.host", "dht.host"))] + ["train.max_steps_per_round=10"]
STEPS = 60


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=20, check=True).stdout


def pane(session: str) -> list[str]:
    # -J joins lines the terminal wrapped: a line longer than 80 here overflowed the terminal.
    return tmux("capture-pane", "-p", "-J", "-t", session).rstrip("\n").splitlines()


def kill_leftovers(state: Path) -> None:
    """Daemons the launcher did not stop (discovery files hold their pids)."""
    for path in (state / "peerd" / "daemons").glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, ProcessLookupError):
            os.kill(int(json.loads(path.read_text())["pid"]), signal.SIGKILL)


@pytest.mark.timeout(420)
def test_swarm_progress_refreshes_in_place_at_80_columns(tmp_path: Path) -> None:
    session = f"peerd-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "peerd", "swarm", "--peers", "2", "--max-steps", str(STEPS),
           "--workdir", str(tmp_path / "w"), *[a for s in SETTINGS for a in ("--set", s)]]
    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", str(Path(__file__).resolve().parents[2])),
           "XDG_STATE_HOME": str(tmp_path / "state"), "TERM": "xterm-256color", "NO_COLOR": "1"}
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    script = f"{exports} {shlex.join(cmd)}; echo EXIT=$?; sleep 600"
    tmux("new-session", "-d", "-x", "80", "-y", "40", "-s", session, "bash", "--norc", "-c", script)
    try:
        def training() -> list[str] | None:
            lines = pane(session)
            rows = [ln for ln in lines if re.match(r"^\s*[01] …\S{6}\s+\S+\s+[1-9]\d*/60\b", ln)]
            return lines if len(rows) == 2 else None

        wait_for(training, 240, "both peers' progress rows with a step > 0")
        first = "\n".join(pane(session))
        title = re.search(r"peerd swarm: 2 peers, (\d+)s", first)
        assert title, first
        wait_for(lambda: (m := re.search(r"peerd swarm: 2 peers, (\d+)s", "\n".join(pane(session))))
                 and int(m.group(1)) >= int(title.group(1)) + 3, 60, "the live table to refresh")
        lines = pane(session)
        text = "\n".join(lines)
        print(f"\n--- live ---\n{text}")
        assert all(len(ln) <= 80 for ln in lines), text
        # In place: after several refreshes there is one live table, not one per refresh.
        assert text.count("peerd swarm: 2 peers") == 1, text
        header = next(ln for ln in lines if re.match(r"^\s*peer\s+state\b", ln))
        for col in ("state", "step", "loss", "ok/ab", "last round", "rev", "hash"):
            assert col in header, header

        def ended() -> str | None:
            text = "\n".join(pane(session))
            return text if "EXIT=" in text else None

        final = str(wait_for(ended, 300, "the swarm to end"))
        print(f"--- end ---\n{final}")
        assert "EXIT=0" in final, final
        assert all(len(ln) <= 80 for ln in pane(session)), final
        assert "eval loss" in final and "Popen" not in final and "TimeoutExpired" not in final
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            tmux("send-keys", "-t", session, "C-c")
        with contextlib.suppress(AssertionError, subprocess.SubprocessError):
            wait_for(lambda: "EXIT=" in "\n".join(pane(session)), 60, "the launcher to stop its peers")
        kill_leftovers(tmp_path / "state")
        with contextlib.suppress(subprocess.SubprocessError):
            tmux("kill-session", "-t", session)
