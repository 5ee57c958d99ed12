"""Checkpointer: round trips, pruning, atomicity of interrupted saves, fallbacks.

These use small pytrees instead of a training state: the Checkpointer is
agnostic to what it saves (test_resume.py checks whole training states).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import struct
from orbax.checkpoint._src.handlers import base_pytree_checkpoint_handler

from pgjax import runner
from pgjax.checkpoints import CHECKPOINT_DIR, Checkpointer, CheckpointError


@struct.dataclass
class Tree:
    params: dict
    key: jax.Array
    count: jax.Array


def make_tree(seed: int) -> Tree:
    rng = np.random.default_rng(seed)
    return Tree(
        params={
            "w": rng.normal(size=(3, 4)).astype(np.float32),
            "b": np.full(4, np.nan, np.float32),  # NaNs survive bit for bit
        },
        key=np.asarray(jax.random.PRNGKey(seed)),
        count=np.asarray(seed, np.int32),
    )


ABSTRACT = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), make_tree(0))


def assert_tree_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y, equal_nan=True)


def save_steps(run_dir: Path, steps, keep: int = 3) -> None:
    with Checkpointer(run_dir, keep=keep) as checkpointer:
        for step in steps:
            checkpointer.save(step, make_tree(step), {"step_seen": step, "x": None})


def test_round_trip_and_pruning(tmp_path):
    save_steps(tmp_path, [10, 20, 30, 40], keep=2)
    with Checkpointer(tmp_path, read_only=True) as checkpointer:
        assert checkpointer.steps() == [30, 40]
        state, host, step = checkpointer.restore(ABSTRACT)
        assert step == 40
        assert isinstance(state, Tree)
        assert_tree_equal(state, make_tree(40))
        assert host["step_seen"] == 40 and host["x"] is None and host["step"] == 40
        state, host, step = checkpointer.restore(ABSTRACT, step=30)
        assert step == 30 and host["step_seen"] == 30
        assert_tree_equal(state, make_tree(30))


def test_saving_an_existing_step_keeps_the_first(tmp_path):
    with Checkpointer(tmp_path) as checkpointer:
        checkpointer.save(5, make_tree(5), {"which": "first"})
        checkpointer.save(5, make_tree(6), {"which": "second"})
        _, host, _ = checkpointer.restore(ABSTRACT)
    assert host["which"] == "first"


def test_restore_errors(tmp_path):
    with Checkpointer(tmp_path, read_only=True) as checkpointer:
        assert checkpointer.steps() == []
        with pytest.raises(CheckpointError, match="no checkpoint"):
            checkpointer.restore(ABSTRACT)
    assert not (tmp_path / CHECKPOINT_DIR).exists()  # read-only creates nothing
    save_steps(tmp_path, [1, 2])
    with Checkpointer(tmp_path, read_only=True) as checkpointer:
        with pytest.raises(CheckpointError, match="available: 1, 2"):
            checkpointer.restore(ABSTRACT, step=3)
        other = jax.tree.map(lambda x: jax.ShapeDtypeStruct((7,), x.dtype), ABSTRACT)
        with pytest.raises(CheckpointError):
            checkpointer.restore(other, step=2)
        with pytest.raises(CheckpointError, match="read-only"):
            checkpointer.save(3, make_tree(3), {})


def test_partial_tmp_checkpoint_is_ignored_then_cleaned(tmp_path):
    """What a save killed half way leaves: a tmp folder, never a step folder."""
    save_steps(tmp_path, [100])
    partial = tmp_path / CHECKPOINT_DIR / "200.orbax-checkpoint-tmp"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "manifest.ocdbt").write_bytes(b"\0" * 10)
    with Checkpointer(tmp_path, read_only=True) as checkpointer:
        assert checkpointer.steps() == [100]
        state, _, step = checkpointer.restore(ABSTRACT)
    assert step == 100
    assert_tree_equal(state, make_tree(100))
    assert partial.exists()  # reading never deletes
    # The next writer cleans it up and can save step 200 itself.
    save_steps(tmp_path, [200])
    assert not partial.exists()
    with Checkpointer(tmp_path, read_only=True) as checkpointer:
        assert checkpointer.steps() == [100, 200]
        assert_tree_equal(checkpointer.restore(ABSTRACT)[0], make_tree(200))


def test_save_failing_half_way_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    save_steps(tmp_path, [1, 2], keep=2)

    # The state item's arrays are written, then its metadata file fails (in
    # the background, where orbax writes files). The failure waits for the
    # array writes so that none is still in flight when the next writer
    # cleans the temporary folder; orbax stops waiting at the first failed
    # item (items go in name order: a failing host item would leave the
    # state's writes running).
    async def broken(self, commit_futures, **kwargs):
        for commit in commit_futures:
            await asyncio.to_thread(commit.result)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(
        base_pytree_checkpoint_handler.BasePyTreeCheckpointHandler,
        "_write_metadata_after_commits",
        broken,
    )
    checkpointer = Checkpointer(tmp_path, keep=2)
    with pytest.raises(CheckpointError, match="disk full"):
        checkpointer.save(3, make_tree(3), {})
        checkpointer.wait()
    checkpointer.close()
    monkeypatch.undo()

    with Checkpointer(tmp_path, read_only=True) as checkpointer:
        # Nothing was pruned for the failed save, and step 2 restores.
        assert checkpointer.steps() == [1, 2]
        state, _, step = checkpointer.restore(ABSTRACT)
    assert step == 2
    assert_tree_equal(state, make_tree(2))
    save_steps(tmp_path, [3], keep=2)  # and saving works again
    with Checkpointer(tmp_path, read_only=True) as checkpointer:
        assert checkpointer.steps() == [2, 3]


def test_damaged_newest_checkpoint_falls_back(tmp_path, caplog):
    save_steps(tmp_path, [1, 2])
    newest = tmp_path / CHECKPOINT_DIR / "2"
    for path in (newest / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    with Checkpointer(tmp_path, read_only=True) as checkpointer:
        with caplog.at_level(logging.WARNING, logger="pgjax.checkpoints"):
            state, _, step = checkpointer.restore(ABSTRACT)
        assert step == 1
        assert_tree_equal(state, make_tree(1))
        assert "cannot read checkpoint 2" in caplog.text
        with pytest.raises(CheckpointError):
            checkpointer.restore(ABSTRACT, step=2)  # named: no fallback


def test_truncate_metrics(tmp_path):
    path = tmp_path / "metrics.csv"
    columns = ["seed", "update", "x"]
    path.write_text("seed,update,x\n0,1,0.5\n1,1,0.25\n0,2,0.1\n1,2")
    assert runner.truncate_metrics(path, columns, 2) == 2
    assert path.read_text() == "seed,update,x\n0,1,0.5\n1,1,0.25\n"
    # A torn last line is never kept, even when asked for.
    path.write_text("seed,update,x\n0,1,0.5\n1,1")
    assert runner.truncate_metrics(path, columns, 2) == 1
    with pytest.raises(runner.RunFolderError, match="columns"):
        runner.truncate_metrics(path, ["seed", "update", "y"], 1)
    assert runner.truncate_metrics(tmp_path / "missing.csv", columns, 3) == 0


def test_truncate_metrics_moves_an_older_header_under_the_new_columns(tmp_path):
    """A run written before its algorithm gained a metric (nac's backtracks)
    or reordered them resumes: the kept rows' values move under their
    columns, the new column is empty; a column the algorithm no longer has
    is still refused."""
    path = tmp_path / "metrics.csv"
    path.write_text("seed,update,x,z\r\n0,1,0.5,7\r\n1,1,0.25,8\r\n0,2,0.1,9\r\n")
    columns = ["seed", "update", "x", "y", "z"]
    assert runner.truncate_metrics(path, columns, 2) == 2
    assert path.read_bytes() == b"seed,update,x,y,z\r\n0,1,0.5,,7\r\n1,1,0.25,,8\r\n"
    with pytest.raises(runner.RunFolderError, match="columns"):
        runner.truncate_metrics(path, ["seed", "update", "x", "z"], 2)


def test_write_json_atomic_leaves_old_or_new(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    runner.write_json_atomic(path, {"v": 1})

    def crash(*args):
        raise KeyboardInterrupt  # a second Ctrl-C just before the rename

    monkeypatch.setattr(runner.folder.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        runner.write_json_atomic(path, {"v": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"v": 1}


@struct.dataclass
class GrownTree:
    """:class:`Tree` with a field more, as a later version's state may have."""

    params: dict
    key: jax.Array
    count: jax.Array
    extra: jax.Array


def test_a_state_with_other_fields_is_refused_in_one_line(tmp_path):
    save_steps(tmp_path, [1])
    grown = GrownTree(
        params=ABSTRACT.params,
        key=ABSTRACT.key,
        count=ABSTRACT.count,
        extra=jax.ShapeDtypeStruct((1,), np.float32),
    )
    with (
        Checkpointer(tmp_path, read_only=True) as checkpointer,
        pytest.raises(CheckpointError) as raised,
    ):
        checkpointer.restore(grown)
    message = str(raised.value)
    assert "\n" not in message and "extra" in message, message
