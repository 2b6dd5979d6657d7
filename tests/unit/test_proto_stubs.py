"""The committed protobuf/gRPC stubs are exactly what scripts/gen_proto.sh generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_generated_stubs_are_up_to_date(tmp_path: Path) -> None:
    env_path = Path(sys.executable).parent
    subprocess.run(["bash", str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)], check=True,
                   env={"PATH": f"{env_path}:/usr/bin:/bin"}, timeout=120, capture_output=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated, "generator produced nothing"
    for rel in generated:
        committed = ROOT / rel
        assert committed.exists(), f"{rel} is generated but not committed"
        assert committed.read_text() == (tmp_path / rel).read_text(), f"{rel} is stale: run scripts/gen_proto.sh"
