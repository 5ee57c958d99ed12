"""Tests of pgjax.parallel: the envs split across two CPU devices (conftest).

Each split pass is checked against the same pass on one device, and one
update of every algorithm against a process with a single device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgjax import parallel
from pgjax.algos import base
from pgjax.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def test_two_devices_split_envs_they_divide():
    assert len(jax.devices()) == 2
    assert parallel.env_shards(8) == 2
    assert parallel.env_shards(7) == 1  # odd counts stay on one device
    assert parallel.env_mesh(7) is None
    assert base.block_count(3, 8, 4) == 2 * base.num_blocks(12, 4)
    assert base.block_count(3, 7, 4) == base.num_blocks(21, 4)


def test_first_envs_takes_each_devices_first_envs():
    x = jnp.arange(16).reshape(2, 8)
    np.testing.assert_array_equal(parallel.first_envs(x, 4), x[:, [0, 1, 4, 5]])
    np.testing.assert_array_equal(parallel.first_envs(x, 3), x[:, :3])  # 3 ∤ 2
    np.testing.assert_array_equal(parallel.first_envs(x, 8), x)
    np.testing.assert_array_equal(parallel.first_envs(x, 100), x)
    y = jnp.arange(48.0).reshape(2, 8, 3)
    np.testing.assert_array_equal(parallel.first_envs(y, 4), y[:, [0, 1, 4, 5]])


def _mlp_problem():
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    obs = jax.random.normal(keys[0], (4, 8, 3))
    targets = jax.random.normal(keys[1], (4, 8))
    params = {
        "w": jax.random.normal(keys[2], (3, 5)),
        "v": jnp.linspace(-1.0, 1.0, 5),
    }

    def forward(p, x):
        return jnp.tanh(x @ p["w"]) @ p["v"]

    return params, obs, targets, forward


@pytest.mark.parametrize("block_rows", [0, 4, 6])
def test_blocked_grad_split_equals_one_device(block_rows):
    params, obs, targets, forward = _mlp_problem()

    def full_loss(p):
        return jnp.mean(jnp.square(forward(p, obs) - targets))

    expected = jax.grad(full_loss)(params)

    def loss(count):
        def block_loss(p, block):
            x, y = block
            prediction = forward(p, x)
            value = jnp.mean(jnp.square(prediction - y)) / count
            return value, (value, {"prediction": prediction})

        return block_loss

    split = base.blocked_grad(
        loss(base.block_count(4, 8, block_rows)),
        params,
        (obs, targets),
        block_rows,
        with_outputs=True,
    )
    local = jax.jit(base.blocked_grad_local, static_argnums=(0, 3, 4))(
        loss(base.num_blocks(32, block_rows)),
        params,
        (obs, targets),
        block_rows,
        True,
    )
    for grads, summed, outputs in (split, local):
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(summed, full_loss(params), rtol=1e-5)
        np.testing.assert_allclose(
            outputs["prediction"], forward(params, obs), rtol=1e-5, atol=1e-6
        )
    # The per-row outputs come back split like the batch.
    assert len(split[2]["prediction"].sharding.device_set) == 2


def test_blocked_map_split_keeps_row_order():
    params, obs, _, forward = _mlp_problem()
    out = jax.jit(lambda o: base.blocked_map(lambda x: forward(params, x), o, 4))(obs)
    np.testing.assert_allclose(out, forward(params, obs), rtol=1e-5, atol=1e-6)


def test_compacted_grad_and_map_split_equal_the_masked_batch():
    params, obs, targets, forward = _mlp_problem()
    valid = jnp.arange(4)[:, None] < jnp.array([4, 1, 0, 2, 3, 4, 4, 1])[None]
    num_valid = jnp.sum(valid)

    def block_loss(p, block):
        (x, y), in_range = block
        errors = jnp.square(forward(p, x) - y)
        return jnp.sum(jnp.where(in_range, errors, 0.0)) / num_valid, ()

    grads, _ = base.compacted_grad(block_loss, params, (obs, targets), valid, 3)

    def masked(p):
        errors = jnp.square(forward(p, obs) - targets)
        return jnp.sum(jnp.where(valid, errors, 0.0)) / jnp.sum(valid)

    for a, b in zip(
        jax.tree.leaves(grads), jax.tree.leaves(jax.grad(masked)(params)), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    values = base.compacted_map(lambda x: forward(params, x), obs, valid, 3)
    np.testing.assert_allclose(
        values, jnp.where(valid, forward(params, obs), 0.0), rtol=1e-5, atol=1e-6
    )


# One critic minibatch and a KL estimate over every env: then the split
# changes nothing but rounding, and two updates on 2 devices must match a
# process with one.
EQUAL_SETTINGS = dict(
    env="CartPole-v1",
    num_envs=8,
    num_steps=4,
    total_timesteps=10**6,
    updates_per_chunk=2,
    critic_minibatches=1,
    kl_envs=8,
    block_rows=8,
)


def two_updates(algo: str) -> dict[str, list[float]]:
    """Every agent leaf and metric after 2 updates of ``algo`` (flattened)."""
    from pgjax.train import make_train

    settings = dict(EQUAL_SETTINGS, algo=algo)
    if algo == "reinforce":
        settings.pop("critic_minibatches")
    trainer = make_train(TrainConfig(**settings))
    state = jax.jit(trainer.init_batch)(jax.random.PRNGKey(0)[None])
    state, metrics = jax.jit(trainer.train_chunk_batch)(state)
    leaves = {f"agent/{i}": x for i, x in enumerate(jax.tree.leaves(state.agent))}
    leaves.update({f"metric/{name}": x for name, x in metrics.items()})
    return {k: np.asarray(v, np.float64).ravel().tolist() for k, v in leaves.items()}


ALGOS = ("a2c", "npg", "trpo", "reinforce")


def test_split_updates_match_one_device():
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]);"
        "from tests.test_parallel import ALGOS, two_updates;"
        "print(json.dumps({a: two_updates(a) for a in ALGOS}))"
    )
    environment = dict(os.environ, JAX_NUM_CPU_DEVICES="1", JAX_PLATFORMS="cpu")
    # The one-device runs compile in the subprocess while the split ones
    # compile here (a compile leaves a core idle part of the time).
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(ROOT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=ROOT,
    )
    try:
        splits = {algo: two_updates(algo) for algo in ALGOS}
    finally:
        stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr[-2000:]
    one_device = json.loads(stdout.strip().splitlines()[-1])
    for algo in ALGOS:
        split = splits[algo]
        assert split.keys() == one_device[algo].keys()
        for name, values in split.items():
            np.testing.assert_allclose(
                values,
                one_device[algo][name],
                rtol=2e-4,
                atol=2e-5,
                err_msg=f"{algo} {name}",
            )


def test_replicated_parameters_stay_identical_on_every_device():
    # Each device applies the all-reduced gradient itself: the copies must
    # agree bit for bit after updates (else they would drift apart).
    from pgjax.train import make_train

    for algo in ("a2c", "npg"):
        trainer = make_train(TrainConfig(**dict(EQUAL_SETTINGS, algo=algo)))
        state = jax.jit(trainer.init_batch)(jax.random.PRNGKey(1)[None])
        state, _ = jax.jit(trainer.train_chunk_batch)(state)
        for leaf in jax.tree.leaves((state.agent.actor, state.agent.critic)):
            shards = [np.asarray(s.data) for s in leaf.addressable_shards]
            assert len(shards) == 2
            for other in shards[1:]:
                np.testing.assert_array_equal(shards[0], other)


def test_envs_the_devices_do_not_divide_run_on_one_device():
    # 9 envs stay whole, though the 4 KL envs would split: one program, one
    # device, called again with its own output.
    from pgjax.train import make_train

    settings = dict(EQUAL_SETTINGS, algo="npg", num_envs=9, kl_envs=4)
    trainer = make_train(TrainConfig(**settings))
    assert parallel.env_shards(9) == 1
    state = jax.jit(trainer.init_batch)(jax.random.PRNGKey(2)[None])
    chunk = jax.jit(trainer.train_chunk_batch)
    state, metrics = chunk(chunk(state)[0])
    assert np.all(np.isfinite(metrics["kl"]))
    assert len(jax.tree.leaves(state.agent.actor)[0].sharding.device_set) == 1
