"""Config precedence (--set > PEERD_* env > YAML > defaults) and error messages naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from peerd.core.config import ConfigError, PeerdConfig, load_config


def test_defaults() -> None:
    cfg = load_config()
    assert cfg.mixing.mode == "diloco" and cfg.mixing.codec == "int8" and cfg.metrics.port == 0
    assert cfg.transport.host == "0.0.0.0"  # reachable on a public box by default


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("mixing:\n  codec: int4\n  outer_lr: 0.5\nround:\n  round_s: 9\n")
    monkeypatch.setenv("PEERD_MIXING__OUTER_LR", "0.3")
    monkeypatch.setenv("PEERD_ROUND__ROUND_S", "7")
    cfg = load_config(f, ["round.round_s=3", "task_options.d_model=32"])
    assert cfg.mixing.codec == "int4"  # YAML over default
    assert cfg.mixing.outer_lr == 0.3  # env over YAML
    assert cfg.round.round_s == 3  # --set over env
    assert cfg.task_options == {"d_model": 32}


@pytest.mark.parametrize(
    ("overrides", "key"),
    [(["mixing.codecx=int8"], "mixing.codecx"), (["nope=1"], "nope"), (["round.round_s=-1"], "round.round_s"),
     (["mixing.codec=int3"], "mixing.codec"), (["metrics.port=70000"], "metrics.port"),
     (["dht.ttl_s=1"], "dht.ttl_s"), (["mixing"], "mixing")],
)
def test_bad_overrides_name_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, overrides)


def test_bad_yaml_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("mixing: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError, match=r"train\.max_stepz: unknown key"):
        load_config(unknown)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    monkeypatch.setenv("PEERD_MIXING__CODECZ", "int8")
    with pytest.raises(ConfigError, match="PEERD_MIXING__CODECZ"):
        load_config()


def test_shipped_configs_are_valid() -> None:
    paths = sorted(Path(__file__).parents[2].joinpath("configs").glob("*.yaml"))
    assert paths, "no shipped configs found"
    for path in paths:
        assert isinstance(load_config(path), PeerdConfig), path


def test_sparse_codec_settings() -> None:
    cfg = load_config(None, ["mixing.codec=sparse", "mixing.sparse_density=0.02"])
    assert cfg.mixing.codec == "sparse" and cfg.mixing.sparse_density == 0.02
    assert load_config(None, []).mixing.sparse_density == 0.03
    for bad in (["mixing.sparse_density=0"], ["mixing.sparse_density=1.5"],
                ["mixing.codec=sparse", "mixing.mode=gossip"], ["mixing.codec=sparse", "mixing.error_feedback=false"]):
        with pytest.raises(ConfigError):
            load_config(None, bad)


def test_the_commented_default_yaml_is_the_defaults() -> None:
    """configs/default.yaml documents every default; a drift between it and the model is a doc bug."""
    shipped = Path(__file__).resolve().parents[2] / "configs" / "default.yaml"
    assert load_config(shipped).model_dump() == load_config(None).model_dump()


def test_unsent_setting() -> None:
    assert load_config(None, []).mixing.unsent == "residual"
    assert load_config(None, ["mixing.codec=sparse", "mixing.unsent=worker"]).mixing.unsent == "worker"
    for bad in (["mixing.unsent=elsewhere"], ["mixing.unsent=worker", "mixing.mode=gossip"],
                ["mixing.unsent=worker", "mixing.error_feedback=false"],
                ["mixing.unsent=worker", "mixing.error_feedback_decay=0.8"]):
        with pytest.raises(ConfigError):
            load_config(None, bad)


def test_error_feedback_decay_setting() -> None:
    assert load_config(None, []).mixing.error_feedback_decay == 1.0
    assert load_config(None, ["mixing.error_feedback_decay=0.8"]).mixing.error_feedback_decay == 0.8
    for bad in ("0", "-0.5", "1.5", "nan"):
        with pytest.raises(ConfigError):
            load_config(None, [f"mixing.error_feedback_decay={bad}"])
