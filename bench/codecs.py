"""Codec throughput: quantize + dequantize of one fp32 tensor on 1 thread, against memcpy.

Every codec sees the same tensor (normal, std 0.02, like an outer gradient). Throughput is
fp32 input bytes / (encode + decode time), best of ``repeats`` taken round-robin (the machine is
shared, so the minimum is the least noisy estimate of what the code can do). memcpy is ``dst.copy_(src)`` into
a preallocated tensor: one read and one write of the same bytes, the floor any codec pays.
hivemind's codecs run through their public ``compress``/``extract`` API in the same process
(they allocate their outputs, so compare them with the ``*_alloc`` figures and ``memcpy_clone``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from peerd.core import codec


def _best_round_robin(ops: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float | str]:
    """Best time of each op, timing them in turn (one of each per round).

    Round-robin rather than op after op: on a shared machine a burst of outside load then hits
    every op alike instead of whichever happened to run during it, so ratios stay comparable.
    An op that raises is recorded by its error and dropped.
    """
    best: dict[str, float | str] = {}
    for name, fn in ops.items():
        try:
            fn()  # warm-up: first-touch page faults and lazy init are not throughput
            best[name] = float("inf")
        except Exception as exc:  # noqa: BLE001 - recorded, never replaced by a made-up number
            best[name] = f"{type(exc).__name__}: {exc}"
    for _ in range(repeats):
        for name, fn in ops.items():
            if isinstance(best[name], str):
                continue
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)  # type: ignore[type-var]
    return best


def _hivemind_codecs() -> dict[str, Any]:
    from hivemind.compression import Float16Compression, Uniform8BitQuantization

    return {"hivemind_float16": Float16Compression(), "hivemind_uniform8": Uniform8BitQuantization()}


def _patched_uniform8() -> Any:
    """Uniform8BitQuantization with upstream master's one-line NumPy >= 2.4 fix (``.item()``)."""
    import numpy as np
    from hivemind.compression import Uniform8BitQuantization

    class Patched(Uniform8BitQuantization):
        def extract(self, serialized_tensor):  # noqa: ANN001, ANN202 - hivemind's signature
            size = np.frombuffer(serialized_tensor.buffer, count=1, dtype=np.int64).item()
            book = np.frombuffer(serialized_tensor.buffer, offset=8, count=size, dtype=self.codebook_dtype)
            idx = np.frombuffer(serialized_tensor.buffer, offset=8 + book.nbytes, dtype=self.indices_dtype)
            idx = torch.as_tensor(idx, dtype=torch.int64).reshape(tuple(serialized_tensor.size))
            return torch.as_tensor(book).to(dtype=getattr(torch, serialized_tensor.dtype))[idx]

    return Patched()


def run(numel: int = 1 << 24, repeats: int = 5, include_hivemind: bool = True) -> dict[str, Any]:
    """Measure every codec; returns GB/s (1e9 bytes of fp32 input per second) and ratios to memcpy.

    Args:
        numel: fp32 elements in the test tensor (16M = 64 MB by default).
        repeats: timed repetitions per codec (best one is kept).
        include_hivemind: also time hivemind's codecs (importing hivemind takes seconds).
    """
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.randn(numel, generator=torch.Generator().manual_seed(0)) * 0.02
        nbytes = 4 * numel
        dst = torch.empty_like(x)
        out: dict[str, Any] = {"numel": numel, "threads": 1, "repeats": repeats}
        # clone = memcpy into a fresh allocation: the fair baseline for the *_alloc figures.
        ops: dict[str, Callable[[], Any]] = {"memcpy": lambda: dst.copy_(x), "memcpy_clone": x.clone}
        for name in codec.CODECS:
            # Headline: decode into a preallocated tensor, as memcpy writes into one (a receiver
            # reuses its buffer); *_alloc: decode into a fresh tensor every time.
            ops[name] = lambda name=name: codec.decode(codec.encode(x, name), name, numel, out=dst)
            ops[f"{name}_alloc"] = lambda name=name: codec.decode(codec.encode(x, name), name, numel)
            out[f"{name}_ratio"] = nbytes / len(codec.encode(x, name))
        try:
            if not include_hivemind:
                raise ImportError("skipped (include_hivemind=False)")
            from hivemind.compression.base import CompressionInfo

            info = CompressionInfo.from_tensor(x)
            for name, comp in {**_hivemind_codecs(), "hivemind_uniform8_patched": _patched_uniform8()}.items():
                ops[name] = lambda comp=comp: comp.extract(comp.compress(x, info))
        except Exception as exc:  # noqa: BLE001 - hivemind missing must not sink the other numbers
            out["hivemind_error"] = repr(exc)
        for name, best in _best_round_robin(ops, repeats).items():
            if isinstance(best, str):
                out[f"{name}_gbps"], out[f"{name}_error"] = None, best
            else:
                out[f"{name}_gbps"] = nbytes / best / 1e9
        for key in [k for k in out if k.endswith("_gbps") and not k.startswith("memcpy")]:
            if out[key] is not None:
                base = out["memcpy_clone_gbps"] if key.endswith("_alloc_gbps") else out["memcpy_gbps"]
                out[key.replace("_gbps", "_vs_memcpy")] = out[key] / base
        return out
    finally:
        torch.set_num_threads(prev_threads)


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
