"""Unit tests for the task contract, the corpus and the built-in tinylm task."""

from __future__ import annotations

import math
import sys
import textwrap

import pytest
import torch

from peerd.train.tasks.base import Task, TaskContext, load_task_factory
from peerd.train.tasks.corpus import discover_files, load_corpus, split_files
from peerd.train.tasks.tinylm import tinylm

# Small enough that building a task and training it take well under a second.
SMALL = {"d_model": 32, "n_layers": 2, "n_heads": 2, "seq_len": 32, "batch_size": 16, "max_corpus_bytes": 300_000}


@pytest.fixture(autouse=True)
def _one_thread():
    # Be nice to small CI machines; nothing here is timed.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def stdlib_files():
    """The default corpus file list, discovered once."""
    return discover_files(None)


def ctx(seed=0, shard=0, num_shards=1, data_path=None, **options) -> TaskContext:
    """A CPU context with the small options, overridable."""
    return TaskContext(seed, shard, num_shards, torch.device("cpu"), data_path, {**SMALL, **options})


def write_tree(root, n_files=20, size=3000):
    """Writes n_files distinct .txt files under root, in three subdirectories."""
    for i in range(n_files):
        sub = root / f"d{i % 3}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i}.txt").write_bytes(bytes((i * 7 + j) % 251 for j in range(size)))


# --- corpus ------------------------------------------------------------------------------


def test_stdlib_corpus_excludes_tests_and_is_deterministic(stdlib_files):
    """The default corpus is sorted stdlib .py files with no test packages."""
    rels = [f.rel for f in stdlib_files]
    assert rels == sorted(rels) == [f.rel for f in discover_files(None)]
    assert all(r.endswith(".py") for r in rels)
    for r in rels:
        parts = r.split("/")
        assert not any(p.startswith("test") for p in parts), r
        assert "site-packages" not in parts and "idle_test" not in parts, r
    assert "os.py" in rels and "json/decoder.py" in rels
    assert 5_000_000 < sum(f.size for f in stdlib_files) < 30_000_000


def test_split_disjoint_shards_shared_heldout(stdlib_files):
    """Shards partition the non-held-out files; the held-out set ignores the shard count."""
    heldout, shards = split_files(stdlib_files, 4)
    heldout_rels = {f.rel for f in heldout}
    assert len(heldout) == round(0.02 * len(stdlib_files))
    shard_rels = [{f.rel for f in s} for s in shards]
    assert all(shard_rels)
    assert sum(map(len, shard_rels)) + len(heldout_rels) == len(stdlib_files)
    union = set().union(*shard_rels)
    assert len(union) == sum(map(len, shard_rels)) and not union & heldout_rels
    # The held-out set depends on the file list only, not on the shard count.
    assert [f.rel for f in split_files(stdlib_files, 7)[0]] == [f.rel for f in heldout]


def test_load_corpus_shards_and_heldout():
    """Peers share the held-out bytes, differ in training bytes, and reload identically."""
    a, b = load_corpus(None, 0, 2, max_corpus_bytes=100_000), load_corpus(None, 1, 2, max_corpus_bytes=100_000)
    for c in (a, b):
        assert c.train.dtype == torch.uint8 and c.train.dim() == 1 and c.train.numel() == 100_000
        assert c.mode == "files" and 0 < c.heldout.numel() <= 256 * 1024
    assert torch.equal(a.heldout, b.heldout)
    assert not torch.equal(a.train, b.train)
    assert torch.equal(a.train, load_corpus(None, 0, 2, max_corpus_bytes=100_000).train)


def test_data_path_directory(tmp_path):
    """A directory data_path reads its text files only."""
    write_tree(tmp_path)
    (tmp_path / "skip.bin").write_bytes(b"\0" * 100)
    files = discover_files(tmp_path)
    assert len(files) == 20 and all(f.rel.endswith(".txt") for f in files)
    c = load_corpus(str(tmp_path), 1, 3)
    assert c.mode == "files" and c.train.numel() > 0 and c.heldout.numel() == 3000


def test_data_path_single_file_falls_back_to_byte_ranges(tmp_path):
    """A single file is cut into disjoint byte ranges plus a shared held-out tail."""
    data = bytes(range(256)) * 100
    path = tmp_path / "corpus.dat"  # any extension is fine for a single file
    path.write_bytes(data)
    parts = [load_corpus(str(path), s, 3) for s in range(3)]
    assert all(p.mode == "bytes" and p.train.numel() > 0 for p in parts)
    assert all(torch.equal(p.heldout, parts[0].heldout) for p in parts)
    train = torch.cat([p.train for p in parts])
    assert bytes(torch.cat([train, parts[0].heldout]).tolist()) == data


def test_missing_or_empty_data_path_raises(tmp_path):
    """A missing path, or one with no readable text, is a ValueError naming the problem."""
    with pytest.raises(ValueError, match="does-not-exist"):
        load_corpus(str(tmp_path / "does-not-exist"), 0, 1)
    (tmp_path / "x.bin").write_bytes(b"ignored extension")
    with pytest.raises(ValueError, match="no bytes"):
        load_corpus(str(tmp_path), 0, 1)


# --- tinylm ------------------------------------------------------------------------------


def test_same_seed_identical_weights_different_seed_differs():
    """The seed alone fixes the initial weights, and the global RNG is untouched."""
    rng_before = torch.get_rng_state()
    a, b, c = tinylm(ctx(seed=5)), tinylm(ctx(seed=5, shard=1, num_shards=2)), tinylm(ctx(seed=6))
    assert torch.equal(rng_before, torch.get_rng_state()), "building a task must not touch the global RNG"
    pa, pb, pc = (dict(t.model.named_parameters()) for t in (a, b, c))
    assert all(torch.equal(pa[n], pb[n]) for n in pa)
    assert not torch.equal(pa["blocks.0.attn.qkv.weight"], pc["blocks.0.attn.qkv.weight"])


def test_parameter_names_carry_layer_index():
    """Block i's parameters are named blocks.i.* and carry no other number."""
    names = [n for n, _ in tinylm(ctx(n_layers=3)).model.named_parameters()]
    for i in range(3):
        assert any(n.startswith(f"blocks.{i}.") for n in names)
    for n in names:
        # The layer index must be the only numeric component, so no partitioner misreads it.
        numeric = [p for p in n.split(".") if p.isdigit()]
        assert numeric == ([n.split(".")[1]] if n.startswith("blocks.") else []), n


def test_batch_stream_reproducible_after_load_state_dict():
    """Batch k depends only on (seed, shard, k)."""
    stream = tinylm(ctx()).batches
    assert stream.samples_per_batch() == 16
    stream.next_batch()
    state = stream.state_dict()
    assert state == {"position": 1}
    x, y = stream.next_batch()
    assert x.shape == y.shape == (16, 32) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    other = tinylm(ctx()).batches
    other.load_state_dict(state)
    x2, y2 = other.next_batch()
    assert torch.equal(x, x2) and torch.equal(y, y2)
    # A different shard draws different data.
    other_shard = tinylm(ctx(shard=1, num_shards=2)).batches
    other_shard.load_state_dict(state)
    assert not torch.equal(other_shard.next_batch()[0], x)


def test_evaluate_deterministic_near_uniform_at_init():
    """Evaluation is repeatable, shard-independent, ~ln(256) at init, and keeps train mode."""
    task = tinylm(ctx())
    first = task.evaluate(task.model)
    assert isinstance(first, float) and abs(first - math.log(256)) < 0.1
    assert task.evaluate(task.model) == first
    assert task.model.training
    other = tinylm(ctx(shard=1, num_shards=2))
    assert other.evaluate(other.model) == first  # same weights, same held-out data


def test_training_decreases_eval_loss():
    """A few dozen AdamW steps clearly lower the held-out loss."""
    task: Task = tinylm(ctx())
    opt = task.make_optimizer(task.model.parameters())
    before = task.evaluate(task.model)
    for _ in range(60):
        loss = task.loss(task.model, task.batches.next_batch())
        assert loss.dim() == 0
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = task.evaluate(task.model)
    assert after < before - 1.0, (before, after)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"d_modle": 32}, "d_modle"),
        ({"d_model": 0}, "d_model"),
        ({"n_layers": -1}, "n_layers"),
        ({"seq_len": 2.5}, "seq_len"),
        ({"batch_size": True}, "batch_size"),
        ({"lr": 0}, "lr"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"heldout_fraction": 1.0}, "heldout_fraction"),
        ({"d_model": 30, "n_heads": 4}, "d_model"),
    ],
)
def test_bad_options_raise_naming_key(options, key):
    """Unknown keys and bad values are rejected with the key in the message."""
    with pytest.raises(ValueError, match=key):
        tinylm(ctx(**options))


def test_context_validates_shard():
    """A shard index outside [0, num_shards) is rejected up front."""
    with pytest.raises(ValueError, match="shard"):
        TaskContext(0, 2, 2, torch.device("cpu"))


# --- load_task_factory -------------------------------------------------------------------


def test_load_builtin_factory():
    """The built-in name and its full spec resolve to the same factory."""
    assert load_task_factory("tinylm") is tinylm
    assert load_task_factory("peerd.train.tasks.tinylm:tinylm") is tinylm


@pytest.mark.parametrize(
    "spec", ["nonexistent.mod:f", "peerd.train.tasks.tinylm:nope", "peerd.train.tasks.tinylm:VOCAB_SIZE", "nocolon"]
)
def test_bad_factory_spec_raises(spec):
    """Unresolvable specs raise ValueError quoting the spec."""
    with pytest.raises(ValueError) as info:
        load_task_factory(spec)
    assert spec in str(info.value)


def test_user_factory_from_sys_path(tmp_path, monkeypatch):
    """A user factory in any importable module loads by spec."""
    module = "peerd_test_user_task_mod"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            """
            from peerd.train.tasks.tinylm import tinylm

            def make(ctx):
                return tinylm(ctx)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    try:
        factory = load_task_factory(f"{module}:make")
        assert isinstance(factory(ctx()), Task)
    finally:
        sys.modules.pop(module, None)
