"""The built-in ``tinylm`` task: a small byte-level decoder-only transformer.

The model reads raw bytes (vocabulary 256), so any text corpus works without a
tokenizer.  Architecture: token + learned positional embeddings, ``n_layers``
pre-LayerNorm blocks (causal self-attention through
``F.scaled_dot_product_attention`` and a 4x GELU MLP), a final LayerNorm and an
untied output head.  Block ``i``'s parameters are named ``blocks.{i}.*``; the
daemon relies on that to assign layer ``i`` to fragment ``i mod P``.

Everything stochastic is derived from ``ctx.seed`` (and the shard for data)
through private generators, so peers agree bit for bit and the process-wide
RNG is left untouched.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from peerd.train.tasks.base import Task, TaskContext
from peerd.train.tasks.corpus import load_corpus

__all__ = ["DEFAULT_OPTIONS", "TinyLM", "WindowStream", "parse_options", "tinylm"]

VOCAB_SIZE = 256
DEFAULT_OPTIONS: Mapping[str, Any] = {
    "d_model": 64,
    "n_layers": 4,
    "n_heads": 4,
    "seq_len": 64,
    "batch_size": 16,
    "lr": 3e-3,
    "weight_decay": 0.01,
    "eval_batches": 8,
    "max_corpus_bytes": 4_000_000,
    "heldout_fraction": 0.02,
}
_POSITIVE_INTS = ("d_model", "n_layers", "n_heads", "seq_len", "batch_size", "eval_batches", "max_corpus_bytes")


def parse_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Merges ``options`` over :data:`DEFAULT_OPTIONS` and validates them.

    Raises:
        ValueError: On an unknown key or a bad value; the message names the key.
    """
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ValueError(f"tinylm: unknown option {unknown[0]!r} (known: {', '.join(DEFAULT_OPTIONS)})")
    opts = {**DEFAULT_OPTIONS, **options}
    for key in _POSITIVE_INTS:
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"tinylm: option {key!r} must be a positive int, got {value!r}")
    for key, lo_ok in (("lr", False), ("weight_decay", True), ("heldout_fraction", False)):
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"tinylm: option {key!r} must be a finite number, got {value!r}")
        if value < 0 or (value == 0 and not lo_ok):
            raise ValueError(f"tinylm: option {key!r} must be {'>= 0' if lo_ok else '> 0'}, got {value!r}")
        opts[key] = float(value)
    if opts["heldout_fraction"] >= 1:
        raise ValueError(f"tinylm: option 'heldout_fraction' must be < 1, got {opts['heldout_fraction']!r}")
    if opts["d_model"] % opts["n_heads"]:
        raise ValueError(
            f"tinylm: option 'd_model' ({opts['d_model']}) must be divisible by n_heads ({opts['n_heads']})"
        )
    return opts


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused QKV projection."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """4x GELU feed-forward; named submodules keep the layer index the only number in names."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.proj = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    """Byte-level decoder-only transformer returning next-byte logits."""

    def __init__(self, d_model: int, n_layers: int, n_heads: int, seq_len: int) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.tok_emb = nn.Embedding(VOCAB_SIZE, d_model)
        self.pos_emb = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, VOCAB_SIZE, bias=False)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """GPT-2 style init drawn only from ``generator`` (every parameter is set)."""
        residual_std = 0.02 / math.sqrt(2 * len(self.blocks))
        with torch.no_grad():
            for name, module in self.named_modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    # Output projections feed the residual stream; scale them so its
                    # variance does not grow with depth.
                    std = residual_std if name.endswith(".proj") else 0.02
                    module.weight.normal_(0.0, std, generator=generator)
                    if getattr(module, "bias", None) is not None:
                        module.bias.zero_()
                elif isinstance(module, nn.LayerNorm):
                    module.weight.fill_(1.0)
                    module.bias.zero_()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Maps byte ids ``(batch, time)`` to next-byte logits ``(batch, time, 256)``."""
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def _batch_seed(seed: int, shard: int, position: int) -> int:
    # Hash rather than arithmetic so nearby (seed, shard, position) triples give
    # unrelated streams; 63 bits fit any torch.Generator seed.
    digest = hashlib.blake2b(f"{seed}:{shard}:{position}".encode(), digest_size=8, person=b"peerd-batch").digest()
    return int.from_bytes(digest, "big") >> 1


class WindowStream:
    """Random ``seq_len + 1`` byte windows; batch ``k`` depends only on (seed, shard, k)."""

    def __init__(self, data: torch.Tensor, seq_len: int, batch_size: int, seed: int, shard: int, device: torch.device):
        if data.numel() < seq_len + 1:
            raise ValueError(f"tinylm: training shard has {data.numel()} bytes, fewer than seq_len + 1 = {seq_len + 1}")
        self._data, self._seq_len, self._batch_size = data, seq_len, batch_size
        self._seed, self._shard, self._device = seed, shard, device
        self._offsets = torch.arange(seq_len + 1)
        self._position = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(x, y)`` long tensors of shape ``(batch_size, seq_len)``, ``y`` shifted by one."""
        gen = torch.Generator().manual_seed(_batch_seed(self._seed, self._shard, self._position))
        starts = torch.randint(0, self._data.numel() - self._seq_len, (self._batch_size,), generator=gen)
        windows = self._data[starts[:, None] + self._offsets].long().to(self._device)
        self._position += 1
        return windows[:, :-1], windows[:, 1:]

    def samples_per_batch(self) -> int:
        """Returns the number of windows per batch."""
        return self._batch_size

    def state_dict(self) -> dict[str, int]:
        """Returns ``{"position": k}``: the index of the next batch."""
        return {"position": self._position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Seeks to ``state["position"]``; the next batch is then that batch exactly."""
        position = state.get("position")
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise ValueError(f"tinylm: batch stream state needs a non-negative int 'position', got {state!r}")
        self._position = position


def _lm_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), y.reshape(-1), reduction=reduction)


def tinylm(ctx: TaskContext) -> Task:
    """Builds the tinylm task for one peer.

    Args:
        ctx: The daemon's context; ``ctx.options`` may override
            :data:`DEFAULT_OPTIONS`.

    Returns:
        The :class:`~peerd.train.tasks.base.Task`.

    Raises:
        ValueError: On bad options or unusable data.
    """
    opts = parse_options(ctx.options)
    device = torch.device(ctx.device)
    corpus = load_corpus(
        ctx.data_path,
        ctx.shard,
        ctx.num_shards,
        heldout_fraction=opts["heldout_fraction"],
        max_corpus_bytes=opts["max_corpus_bytes"],
    )
    seq_len, batch_size = opts["seq_len"], opts["batch_size"]
    if corpus.heldout.numel() < seq_len + 1:
        raise ValueError(f"tinylm: held-out set has {corpus.heldout.numel()} bytes, fewer than seq_len + 1")

    # Build on CPU inside fork_rng so module construction's default init does not
    # advance the process RNG; the real init then comes from a private generator,
    # making weights identical on every peer regardless of device.
    with torch.random.fork_rng(devices=[]):
        model = TinyLM(opts["d_model"], opts["n_layers"], opts["n_heads"], seq_len)
    model.reset_parameters(torch.Generator().manual_seed(ctx.seed))
    model.to(device).train()

    # Evenly spaced windows: the same on every peer, independent of shard and seed.
    n_eval = opts["eval_batches"] * batch_size
    starts = torch.linspace(0, corpus.heldout.numel() - seq_len - 1, n_eval).long()
    eval_windows = corpus.heldout[starts[:, None] + torch.arange(seq_len + 1)].long().to(device)

    def make_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        # Decay matrices (and embeddings) only; decaying gains and biases hurts.
        params = [p for p in params if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": opts["weight_decay"]},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]] or [{"params": []}]
        return torch.optim.AdamW(groups, lr=opts["lr"], betas=(0.9, 0.95))

    def evaluate(model: nn.Module) -> float:
        was_training = model.training
        # Follow the model, which the daemon may evaluate off ctx.device (e.g. a CPU copy).
        windows = eval_windows.to(next(model.parameters()).device)
        model.eval()
        try:
            total = 0.0
            with torch.no_grad():
                for chunk in windows.split(batch_size):
                    total += _lm_loss(model, (chunk[:, :-1], chunk[:, 1:]), reduction="sum").item()
            return total / (n_eval * seq_len)
        finally:
            model.train(was_training)

    return Task(
        model=model,
        make_optimizer=make_optimizer,
        batches=WindowStream(corpus.train, seq_len, batch_size, ctx.seed, ctx.shard, device),
        loss=_lm_loss,
        evaluate=evaluate,
    )
