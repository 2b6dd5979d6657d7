"""Configuration: one frozen pydantic model tree, loaded from defaults < YAML < ``PEERD_*`` env < ``--set``.

This is the only module that reads ``os.environ``. Every field has a unit in its name where it has
one (``_s``, ``_bytes``). Unknown keys are rejected everywhere (``extra="forbid"``), so a typo in
a YAML file or a ``--set`` fails loudly with the dotted key in the message instead of being
silently ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

# Measured defaults (README, "Pacing and outer optimizer"; ``python -m bench.defaults_real``): 4 real
# daemons x 2000 steps captured 65.6% of DDP's gain over one peer with these, against 61.9% with
# clock rounds and plain averaging (the earlier defaults) in the same run. Outer momentum pays at
# this H and hurts when every round syncs (43.6% with clock rounds), so unset outer keys resolve to
# it only when work-paced (PeerdConfig.effective_outer_lr / effective_outer_momentum).
DEFAULT_TARGET_H = 200
# Gossip mode's default H (``round.target_h`` unset, ``mixing.mode=gossip``): one pairwise exchange
# of a fragment per 40 inner steps of the median member. A pairwise exchange moves a peer only
# halfway to one partner, so gossip wants a far shorter H than DiLoCo's all-reduce. 40 is the H
# measured to pay (BENCHMARKS.md, "Work-paced gossip"; tests/e2e/test_gossip.py, 8 daemons x 160
# steps, reached there only by idling the workers at 20 steps a round): the peers' mean loss 2.447
# against 2.517 for their shards alone; at H 100-200 (clock rounds on a 2-core box) mixing paid
# nothing, and 20 / 40 / 80 did not differ beyond run-to-run noise where reachable. Pacing only
# holds rounds, so on a box that trains more than H / num_fragments steps a round every round
# exchanges (``peerd_pace_behind``), as with clock rounds; below that it saves the exchanges.
DEFAULT_GOSSIP_TARGET_H = 40
DILOCO_OUTER_LR = 0.8
DILOCO_OUTER_MOMENTUM = 0.5


class ConfigError(ValueError):
    """A configuration source is malformed; the message names the offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """Where the training text comes from and how it is split."""

    path: str | None = None  # None: the running Python's standard library .py files
    num_shards: int = Field(16, ge=1)
    shard: int | None = Field(None, ge=0)  # None: derived from the peer id
    max_corpus_bytes: int = Field(4_000_000, ge=1024)
    heldout_fraction: float = Field(0.02, gt=0, lt=1)


class TrainConfig(_Section):
    """The worker thread's inner loop."""

    max_steps: int = Field(0, ge=0)  # 0: train until stopped
    threads: int = Field(1, ge=1)  # torch intra-op threads of the worker
    eval_every_steps: int = Field(0, ge=0)  # 0: evaluate only at start and end
    # At most this many inner steps per wall-clock round (0: no limit). Bounds DiLoCo's H (inner
    # steps between syncs of a fragment, about num_fragments x this) whatever the device speed:
    # without it a fast box drifts hundreds of steps between syncs and the average gets worse.
    # Legacy: it idles the worker. ``round.target_h`` bounds H without idling; the two exclude each other.
    max_steps_per_round: int = Field(0, ge=0)
    log_every_s: float = Field(10.0, gt=0)
    # Scheduling niceness added to the worker thread alone (Linux; elsewhere ignored). The event
    # loop keeps the process's: on a box short of CPU its round deadlines then win over training,
    # which only loses the time the loop actually uses. 0: the worker competes with the loop.
    worker_nice: int = Field(10, ge=0, le=19)


class MixingConfig(_Section):
    """How peers combine their progress."""

    mode: Literal["diloco", "gossip"] = "diloco"
    codec: Literal["fp32", "bf16", "int8", "int4", "sparse", "sparse8"] = "int8"
    block_size: int = Field(256, ge=8, le=65536)
    # sparse codecs: share of each block's entries sent per round (top-k by magnitude; the rest
    # waits in the error-feedback residual). Every member must use the same value.
    sparse_density: float = Field(0.03, gt=0, le=1)
    # sparse codecs: share of each block an owner sends of the reduced mean, top-k with the owner's
    # own error feedback (peerd/mixing/diloco.py). None: the exact union of the contributions'
    # supports, int8 values (about members x sparse_density). Every member must use the same value.
    reduced_density: float | None = Field(None, gt=0, le=1)
    error_feedback: bool = True
    # Error-feedback decay (SparseLoCo's beta): a member scales its residual by this before adding
    # the round's outer gradient. 1.0 keeps all it has not sent until it goes out. Below 1 the
    # residual forgets: with the DiLoCo reset a member re-learns, from the new outer state, the
    # progress that still waits in its residual, so an entry left unsent for many rounds piles up
    # the same request again and again and overshoots when it finally goes out (bench.frontier:
    # sparse at density 0.05, H 20, 0.8 beats 1.0 by about 0.2 of DDP's gain). Local to a member.
    error_feedback_decay: float = Field(1.0, gt=0, le=1)
    # Where a member keeps what its contribution did not carry (diloco): "residual", the
    # error-feedback residual, added to its next outer gradient, while its worker takes the new
    # outer state; "worker", its worker's own parameters: the merge takes the new outer state
    # minus what was not sent, so the worker goes on from its own progress instead of learning
    # it again from the outer state (the residual stays 0). Shared state is the same either way.
    # bench.frontier, sparse 5% at H 20 (1009x fewer bytes than DDP): 49% of DDP's gain with
    # "worker", 7% with "residual" (outer lr 0.8, momentum 0.5: 74% vs 1%). Local to a member.
    unsent: Literal["residual", "worker"] = "residual"
    num_fragments: int = Field(2, ge=1)
    # Outer (Nesterov) SGD on the averaged outer gradient. None: the measured default
    # (``PeerdConfig.effective_outer_lr`` / ``effective_outer_momentum``): 0.8 / 0.5 for work-paced
    # DiLoCo, where it pays; plain averaging (1.0 / 0.0) with clock rounds, where momentum measured
    # harmful, and in gossip mode. DiLoCo's 0.7 / 0.9 measured harmful at these lengths (README,
    # "Pacing and outer optimizer").
    outer_lr: float | None = Field(None, gt=0)
    outer_momentum: float | None = Field(None, ge=0, lt=1)
    nesterov: bool = True

    # gossip mode only (peerd/mixing/gossip/): who pairs with whom each round, and
    # A2CiD2 momentum (helps sparse rings; breaks the hypercube's exact log2 n averaging).
    topology: Literal["random", "hypercube", "ring"] = "random"
    a2cid2: bool = False

    @model_validator(mode="after")
    def _sparse_needs_diloco(self) -> MixingConfig:
        # Gossip messages are mass vectors, not outer gradients: top-k of them is not error feedback.
        if self.mode == "gossip" and self.codec in ("sparse", "sparse8"):
            raise ValueError("mixing.codec: sparse codecs need mixing.mode=diloco")
        if self.codec in ("sparse", "sparse8") and not self.error_feedback:
            raise ValueError("mixing.error_feedback: sparse codecs need error feedback (unsent entries would be lost)")
        if self.unsent == "worker" and (self.mode != "diloco" or not self.error_feedback):
            raise ValueError("mixing.unsent=worker needs mixing.mode=diloco and mixing.error_feedback=true")
        if self.unsent == "worker" and self.error_feedback_decay != 1.0:
            raise ValueError("mixing.error_feedback_decay applies to mixing.unsent=residual only")
        return self


class RoundConfig(_Section):
    """Round clock and protocol deadlines."""

    round_s: float = Field(5.0, gt=0)
    settle_s: float = Field(0.25, ge=0)  # heartbeats settle before the plan is built
    plan_slot_s: float = Field(0.25, gt=0)  # candidate k publishes after k slots of leader silence
    plan_candidates: int = Field(3, ge=1)
    min_members: int = Field(2, ge=1)
    deadline_fraction: float = Field(0.9, gt=0, le=1)  # exchange must end by start + fraction*round_s
    # Work-paced rounds: sync a fragment every ``target_h`` inner steps of the median member
    # (DiLoCo's H; in gossip mode, one pairwise exchange of it), whatever the hardware; rounds with
    # nothing due cost no exchange. Pacing only holds rounds: H cannot go below num_fragments x the
    # steps of one round (then every round syncs; ``peerd_pace_behind`` says so). 0: every round
    # syncs fragment ``round mod num_fragments`` (H then follows round_s and the devices' speed).
    # None: ``PeerdConfig.pace_h`` decides (DEFAULT_TARGET_H for diloco, DEFAULT_GOSSIP_TARGET_H
    # for gossip; 0 with the legacy train.max_steps_per_round).
    target_h: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _slots_fit(self) -> RoundConfig:
        if self.settle_s + self.plan_slot_s * self.plan_candidates >= 0.5 * self.round_s * self.deadline_fraction:
            raise ValueError("round.plan_slot_s: settle_s + plan_slot_s * plan_candidates must be "
                             "< half of round_s * deadline_fraction")
        return self


class TransportConfig(_Section):
    """gRPC server and channels."""

    host: str = "0.0.0.0"
    port: int = Field(0, ge=0, le=65535)
    announce_host: str | None = None  # address other peers dial; None: detected
    chunk_bytes: int = Field(1 << 20, ge=1024, le=3 << 20)  # <= transport.MAX_CHUNK_BYTES (4 MiB cap)
    chunk_timeout_s: float = Field(10.0, gt=0)
    rpc_timeout_s: float = Field(10.0, gt=0)
    state_timeout_s: float = Field(120.0, gt=0)
    keepalive_time_s: float = Field(30.0, gt=0)
    keepalive_timeout_s: float = Field(10.0, gt=0)
    # auto: on join, ask a reachable peer to dial this one back (peerd/net/reach.py); server: assume
    # others can dial in (port forwarded, public address); client: never dialled (behind NAT): this
    # peer only opens connections, owns no shard and pulls reduced shards (docs/running-at-home.md).
    mode: Literal["auto", "server", "client"] = "auto"
    # Pace this peer's gRPC sends / receives to at most this many Mbit/s (0: no cap); see peerd/net/pacing.py.
    max_upload_mbit: float = Field(0.0, ge=0)
    max_download_mbit: float = Field(0.0, ge=0)


class DhtConfig(_Section):
    """The in-process hivemind DHT node and heartbeat records."""

    host: str = "0.0.0.0"
    port: int = Field(0, ge=0, le=65535)
    announce_host: str | None = None
    heartbeat_s: float = Field(1.0, gt=0)
    ttl_s: float = Field(4.0, gt=0)
    op_timeout_s: float = Field(5.0, gt=0)
    # Per-RPC wait of the DHT node (hivemind's wait_timeout, default 3 s): every dead peer still
    # in a routing table costs this much per lookup until it is blacklisted, so keep it short.
    rpc_timeout_s: float = Field(1.0, gt=0)
    startup_timeout_s: float = Field(30.0, gt=0)
    shutdown_timeout_s: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _ttl_covers_heartbeats(self) -> DhtConfig:
        if self.ttl_s < 3 * self.heartbeat_s:
            raise ValueError("dht.ttl_s: must be >= 3 * dht.heartbeat_s")
        return self


class MetricsConfig(_Section):
    """Prometheus exposition and the loopback admin endpoint."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)  # 0: ephemeral, reported in the ready file


class AdminConfig(_Section):
    """Loopback-only status endpoint used by ``peerd status``."""

    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)  # 0: ephemeral, found through the discovery file


class CheckpointConfig(_Section):
    """Where and how often state is written (atomic write, fsync, rename)."""

    dir: str | None = None
    every_s: float = Field(60.0, gt=0)


class LogConfig(_Section):
    """Structured logging."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"


class SecurityConfig(_Section):
    """Admission (swarm secret, TLS) and input caps; see README "Security" and peerd/net/auth.py."""

    # The secret never appears in logs, status or summaries (SecretStr prints as '**********').
    secret: SecretStr | None = None
    secret_file: str | None = None  # a file holding the secret (surrounding whitespace ignored)
    credential_window_s: float = Field(30.0, gt=0, le=600)  # accepted |now - credential time|
    replay_cache_size: int = Field(65536, ge=16)  # nonces remembered for the window (full: refuse)
    tls_cert: str | None = None  # PEM certificate chain of this peer (server and mTLS client)
    tls_key: str | None = None  # PEM private key of tls_cert
    tls_ca: str | None = None  # PEM CA bundle: verify peers' certs; set, the server requires client certs
    tls_server_name: str | None = None  # name checked in peers' certs (default: the dialled host)
    max_concurrent_rpcs: int = Field(256, ge=1)  # whole server
    max_streams_per_peer: int = Field(8, ge=1)  # concurrent incoming streams of one peer id, from the first byte
    max_streams_per_address: int = Field(64, ge=1)  # concurrent incoming streams from one IP address
    max_inflight_bytes_per_peer: int = Field(256 << 20, ge=1 << 20)  # announced payload bytes in flight
    norm_factor: float = Field(10.0, gt=1)  # drop a contribution whose RMS is > factor x own (limits.NormGate)
    norm_history: int = Field(16, ge=1)  # accepted RMS values per fragment that can only widen the reference

    @field_validator("secret", "secret_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # `PEERD_SECURITY__SECRET=${PEERD_SECRET:-}` in compose files: empty means not set.
        return None if value == "" else value

    @model_validator(mode="after")
    def _consistent(self) -> SecurityConfig:
        if self.secret is not None and self.secret_file is not None:
            raise ValueError("security.secret: set either secret or secret_file, not both")
        if self.secret is not None and len(self.secret.get_secret_value()) < 16:
            raise ValueError("security.secret: use at least 16 characters (e.g. `openssl rand -hex 32`)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("security.tls_cert: tls_cert and tls_key must be set together")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ValueError("security.tls_ca: needs tls_cert and tls_key (mTLS)")
        return self


class PeerdConfig(_Section):
    """Everything a daemon needs; see configs/default.yaml for a commented copy."""

    run_id: str = Field("peerd", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    task: str = "tinylm"
    task_options: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    mixing: MixingConfig = MixingConfig()
    round: RoundConfig = RoundConfig()
    transport: TransportConfig = TransportConfig()
    dht: DhtConfig = DhtConfig()
    metrics: MetricsConfig = MetricsConfig()
    admin: AdminConfig = AdminConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    log: LogConfig = LogConfig()
    security: SecurityConfig = SecurityConfig()

    @property
    def pace_h(self) -> int:
        """``round.target_h`` in effect: the configured value, else the mode's default H.

        DEFAULT_TARGET_H for diloco, DEFAULT_GOSSIP_TARGET_H for gossip. Unset, it is off (0) with
        the legacy ``train.max_steps_per_round``, which the validator below would otherwise refuse:
        a default must never make a config invalid.
        """
        if self.round.target_h is not None:
            return self.round.target_h
        if self.train.max_steps_per_round:
            return 0
        return DEFAULT_TARGET_H if self.mixing.mode == "diloco" else DEFAULT_GOSSIP_TARGET_H

    @property
    def _paced_diloco(self) -> bool:
        # The measured outer optimizer belongs to paced DiLoCo; gossip adopts the trained parameters.
        return bool(self.pace_h) and self.mixing.mode == "diloco"

    @property
    def effective_outer_lr(self) -> float:
        """``mixing.outer_lr`` in effect: the configured value, else DILOCO_OUTER_LR for paced DiLoCo, else 1."""
        if self.mixing.outer_lr is not None:
            return self.mixing.outer_lr
        return DILOCO_OUTER_LR if self._paced_diloco else 1.0

    @property
    def effective_outer_momentum(self) -> float:
        """``mixing.outer_momentum`` in effect: the configured value, else DILOCO_OUTER_MOMENTUM for paced DiLoCo.

        Else 0: momentum on every-round syncs (clock rounds, H ~130 here) measured harmful, 43.6% of
        DDP's gain against 61.9% without (bench.defaults_real, 4 x 2000); gossip was never measured
        with it and keeps plain gossip-local-SGD, paced or not.
        """
        if self.mixing.outer_momentum is not None:
            return self.mixing.outer_momentum
        return DILOCO_OUTER_MOMENTUM if self._paced_diloco else 0.0

    @model_validator(mode="after")
    def _pacing(self) -> PeerdConfig:
        if self.round.target_h and self.train.max_steps_per_round:
            raise ValueError("round.target_h: paces syncs by work without idling the worker; it excludes the "
                             "legacy train.max_steps_per_round (which idles it): set one of them to 0")
        return self


ENV_PREFIX = "PEERD_"
# PEERD_* variables that steer tooling, not the daemon's config.
_NON_CONFIG_ENV = frozenset({"PEERD_TEST_FAULTS", "PEERD_TEST_HOSTILE"})


class _Sources(BaseSettings):
    """Settings root: ``--set`` (init kwargs) > ``PEERD_*`` env > YAML file > defaults."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )
    # The YAML path is chosen at run time; pydantic-settings fixes yaml_file per class, so
    # load_config() builds a throwaway subclass carrying it.
    _yaml_file: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=cls._yaml_file))
        return tuple(sources)


class _Settings(_Sources, PeerdConfig):  # type: ignore[misc]
    pass


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    if not dotted or any(not p for p in parts):
        raise ConfigError(f"{source}: bad key {dotted!r}")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {dotted}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _parse_scalar(text: str) -> Any:
    """Parse a ``--set`` value with YAML scalar rules (``1`` int, ``true`` bool, ``null``)."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _known_path(dotted: list[str]) -> bool:
    model: type[BaseModel] = PeerdConfig
    for i, part in enumerate(dotted):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if part == "task_options":
            return True  # free-form, validated by the task itself
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return i == len(dotted) - 1
    return True


def _check_env(environ: dict[str, str]) -> None:
    """pydantic-settings ignores unknown env names; a typo'd PEERD_ variable must fail instead."""
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in _NON_CONFIG_ENV:
            continue
        dotted = name[len(ENV_PREFIX):].lower().split("__")
        if not _known_path(dotted):
            raise ConfigError(f"environment variable {name}: unknown key {'.'.join(dotted)}")


def _describe(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<root>"
        msg = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"{key}: {msg}")
    return "invalid configuration: " + "; ".join(lines)


def load_config(
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> PeerdConfig:
    """Build the effective config: defaults < YAML file < ``PEERD_*`` env < ``--set key=value``.

    Raises:
        ConfigError: unreadable file, bad YAML, an unknown key or a bad value (message names it).
    """
    path = Path(config_file) if config_file is not None else None
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot read ({exc.strerror})") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping")
    _check_env(dict(os.environ))
    cli: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value")
        _set_dotted(cli, key.strip(), _parse_scalar(raw), f"--set {key.strip()}")
    settings_cls = type("_RunSettings", (_Settings,), {"_yaml_file": path})
    try:
        settings = settings_cls(**cli)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    return PeerdConfig.model_validate(settings.model_dump())


def with_overrides(cfg: PeerdConfig, updates: dict[str, Any]) -> PeerdConfig:
    """Return a copy of ``cfg`` with dotted-key ``updates`` applied and validated."""
    tree = cfg.model_dump()
    for dotted, value in updates.items():
        _set_dotted(tree, dotted, value, f"override {dotted}")
    try:
        return PeerdConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def test_faults_spec() -> str:
    """Fault-injection spec for tests (``PEERD_TEST_FAULTS``; see peerd/core/faults.py)."""
    return os.environ.get("PEERD_TEST_FAULTS", "")


def test_hostile_spec() -> str:
    """Hostile-insider behaviour for tests (``PEERD_TEST_HOSTILE``; see peerd/net/hostile.py)."""
    return os.environ.get("PEERD_TEST_HOSTILE", "")
