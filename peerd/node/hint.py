"""The join hint a daemon prints: a command that works when pasted, and never the secret itself.

``peerd`` is named the way this process can be found again: bare when the ``peerd`` on PATH is
this installation (e.g. after ``source .venv/bin/activate``), else by the absolute path of this
installation's console script, else ``python -m peerd`` with this interpreter. The secret is
passed the way this peer got it: a secret file by its path (not secret), a secret value by the
environment variable the joiner must set (its value is never printed).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from peerd.core.config import SecurityConfig


def peerd_command() -> str:
    """How to run this installation's ``peerd`` from a shell."""
    mine = Path(sys.executable).parent / "peerd"
    found = shutil.which("peerd")
    if found and mine.exists() and Path(found).resolve() == mine.resolve():
        return "peerd"
    if mine.exists() and os.access(mine, os.X_OK):
        return shlex.quote(str(mine))
    return f"{shlex.quote(sys.executable)} -m peerd"


def join_hint(maddrs: list[str], run_id: str, security: SecurityConfig) -> str:
    """The lines to print once joined (the command on its own line, indented)."""
    cmd = [peerd_command(), "join", *(a for m in maddrs[:2] for a in ("--bootstrap", m))]
    if run_id != "peerd":
        cmd += ["--set", f"run_id={shlex.quote(run_id)}"]
    if security.secret_file is not None:
        cmd += ["--set", f"security.secret_file={shlex.quote(str(Path(security.secret_file).resolve()))}"]
        how = "To add a peer to this swarm, put this swarm's secret in that file on the other machine too, then run:"
    elif security.secret is not None:
        how = ("To add a peer to this swarm, export this swarm's secret as PEERD_SECURITY__SECRET in that shell "
               "(or add --set security.secret_file=PATH), then run:")
    else:
        how = "To add a peer to this swarm (open: no secret), run:"
    return f"{how}\n  {' '.join(cmd)}"
