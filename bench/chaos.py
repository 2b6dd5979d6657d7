"""Soak entry point for the chaos test: ``.venv/bin/python bench/chaos.py [MINUTES] [SEED]``.

Runs ``tests/e2e/test_chaos.py`` with ``CHAOS_MINUTES`` (default 30) and ``CHAOS_SEED`` set and
the schedule printed live (``-s``); the per-peer logs stay under ``--basetemp`` (printed at the
end). Exit status is pytest's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    """Run the chaos test once; returns pytest's exit status."""
    minutes = sys.argv[1] if len(sys.argv) > 1 else "30"
    env = {**os.environ, "CHAOS_MINUTES": minutes}
    if len(sys.argv) > 2:
        env["CHAOS_SEED"] = sys.argv[2]
    basetemp = tempfile.mkdtemp(prefix="peerd-chaos-")
    cmd = [sys.executable, "-m", "pytest", "tests/e2e/test_chaos.py", "-q", "-s", f"--basetemp={basetemp}"]
    code = subprocess.call(cmd, cwd=ROOT, env=env)
    print(f"peer logs and chaos.log: {basetemp}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
