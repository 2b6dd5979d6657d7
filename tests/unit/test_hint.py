"""The join hint: pasteable, says how to pass the secret, never prints it."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from peerd.core.config import SecurityConfig
from peerd.node.hint import join_hint, peerd_command

MADDRS = ["/ip4/203.0.113.5/tcp/7001/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", "/ip4/b", "/ip4/c"]


def test_secret_value_is_named_never_printed() -> None:
    secret = "s3cret-" + "x" * 20
    text = join_hint(MADDRS, "myrun", SecurityConfig(secret=secret))
    assert secret not in text and "PEERD_SECURITY__SECRET" in text
    cmd = shlex.split(text.splitlines()[1])
    assert cmd[1:] == ["join", "--bootstrap", MADDRS[0], "--bootstrap", MADDRS[1], "--set", "run_id=myrun"]


def test_secret_file_is_passed_by_absolute_path(tmp_path: Path) -> None:
    text = join_hint(MADDRS[:1], "peerd", SecurityConfig(secret_file=str(tmp_path / "secret")))
    assert f"security.secret_file={tmp_path / 'secret'}" in text and "run_id" not in text


def test_open_swarm_says_so() -> None:
    assert "open: no secret" in join_hint(MADDRS[:1], "peerd", SecurityConfig())


def test_command_is_runnable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Without a peerd next to the interpreter: python -m peerd with this interpreter.
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python3"))
    assert peerd_command() == f"{tmp_path / 'python3'} -m peerd"
    script = tmp_path / "peerd"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert peerd_command() == str(script)  # not on PATH: the full path
    monkeypatch.setenv("PATH", str(tmp_path))
    assert peerd_command() == "peerd"  # on PATH (an activated venv): bare
