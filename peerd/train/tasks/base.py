"""The task plug-in contract between the daemon and what it trains.

A *task* bundles everything model-specific the daemon needs: the model, how to
build its inner optimizer, an infinite deterministic stream of training
batches, the training loss, and a held-out evaluation.  The daemon itself only
ever sees these definitions; concrete tasks live in their own modules
(``peerd.train.tasks.tinylm`` is the built-in one) and are located by a spec string
through :func:`load_task_factory`.

This module holds pure definitions: no file or network I/O happens here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = [
    "BUILTIN_TASKS",
    "BatchStream",
    "Task",
    "TaskContext",
    "TaskFactory",
    "load_task_factory",
]


@dataclass(frozen=True)
class TaskContext:
    """What a task factory gets from the daemon.

    Attributes:
        seed: Model init seed. Identical on every peer of a run, so every peer
            starts from bit-identical weights.
        shard: This peer's training shard index, ``0 <= shard < num_shards``.
        num_shards: Number of training shards in the run.
        device: Device the model and batches must live on.
        data_path: Training data location; ``None`` selects the built-in
            corpus (the ``.py`` files of the running Python's stdlib).
        options: Task-specific options from the config. For ``tinylm``:
            d_model, n_layers, n_heads, seq_len, batch_size, lr, weight_decay,
            eval_batches, max_corpus_bytes, heldout_fraction.
    """

    seed: int
    shard: int
    num_shards: int
    device: torch.device
    data_path: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Fail at construction: a bad shard index would otherwise surface as
        # silently overlapping data between peers.
        if isinstance(self.num_shards, bool) or not isinstance(self.num_shards, int) or self.num_shards < 1:
            raise ValueError(f"num_shards must be a positive int, got {self.num_shards!r}")
        if isinstance(self.shard, bool) or not isinstance(self.shard, int) or not 0 <= self.shard < self.num_shards:
            raise ValueError(f"shard must be an int in [0, {self.num_shards}), got {self.shard!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")


@runtime_checkable
class BatchStream(Protocol):
    """An infinite, checkpointable stream of training batches.

    Batch ``k`` must be a pure function of (seed, shard, k), so restoring
    :meth:`state_dict` on another process replays exactly the same data.
    """

    def next_batch(self) -> Any:
        """Returns the next batch and advances the data position."""
        ...

    def samples_per_batch(self) -> int:
        """Returns how many samples one batch holds (for throughput accounting)."""
        ...

    def state_dict(self) -> dict[str, int]:
        """Returns the data position as plain ints, for checkpoints."""
        ...

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restores a position previously returned by :meth:`state_dict`."""
        ...


@dataclass
class Task:
    """A ready-to-train task, as built by a :data:`TaskFactory`.

    Attributes:
        model: The model, already on ``ctx.device`` and initialised from
            ``ctx.seed``.
        make_optimizer: Builds the inner optimizer for the given parameters.
        batches: The training batch stream for this peer's shard.
        loss: Training loss of one batch, as a scalar tensor.
        evaluate: Mean held-out loss of a model. Deterministic, on the same
            held-out data on every peer; runs under ``torch.no_grad`` and
            restores the model's training mode.
    """

    model: torch.nn.Module
    make_optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
    batches: BatchStream
    loss: Callable[[torch.nn.Module, Any], torch.Tensor]
    evaluate: Callable[[torch.nn.Module], float]


TaskFactory = Callable[[TaskContext], Task]

# Short names for tasks shipped with peerd, mapped to their full specs.
BUILTIN_TASKS: Mapping[str, str] = {"tinylm": "peerd.train.tasks.tinylm:tinylm"}


def load_task_factory(spec: str) -> TaskFactory:
    """Resolves a task spec to its factory.

    Only importable modules are ever loaded (via :mod:`importlib`); code is
    never loaded from bytes received over the network or read from a config.

    Args:
        spec: Either a built-in name (``"tinylm"``) or ``"package.module:attr"``
            where ``attr`` may be a dotted path inside the module.

    Returns:
        The factory callable.

    Raises:
        ValueError: If the spec is malformed, the module cannot be imported, the
            attribute is missing, or it is not callable. The message names
            the spec.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"task spec must be a non-empty string, got {spec!r}")
    target = BUILTIN_TASKS.get(spec, spec)
    module_name, sep, attr_path = target.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(
            f"task spec {spec!r} is neither a built-in task ({', '.join(sorted(BUILTIN_TASKS))}) "
            "nor of the form 'package.module:factory'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"task spec {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ValueError(f"task spec {spec!r}: module {module_name!r} has no attribute {attr_path!r}") from exc
    if not callable(obj):
        raise ValueError(f"task spec {spec!r}: {attr_path!r} is not callable (got {type(obj).__name__})")
    return obj
