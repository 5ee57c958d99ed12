"""Tests of pgjax.parallel and of the same run on any device layout.

The test process has two CPU devices (conftest). Each split pass is checked
against the same pass with the identity backend (one device, nothing split),
and whole updates of every algorithm against it, with the envs split over
the devices and with the seeds split over them: only the order of
floating-point sums may differ.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgjax import parallel, runner
from pgjax.algos import base, blocks, critic
from pgjax.backend import IDENTITY, Backend, make_mesh, mesh_shape
from pgjax.config import TrainConfig
from pgjax.train import make_train

ENV_SPLIT = Backend(mesh=make_mesh(jax.devices(), rows=1, num_envs=8))
SEED_SPLIT = Backend(mesh=make_mesh(jax.devices(), rows=2, num_envs=8))


def test_mesh_splits_seeds_first_then_envs():
    assert len(jax.devices()) == 2
    assert (ENV_SPLIT.seed_shards, ENV_SPLIT.env_shards) == (1, 2)
    assert (SEED_SPLIT.seed_shards, SEED_SPLIT.env_shards) == (2, 1)
    assert mesh_shape(8, rows=4, num_envs=16) == (4, 2)
    assert mesh_shape(8, rows=3, num_envs=16) == (1, 8)
    assert mesh_shape(8, rows=6, num_envs=5) == (2, 1)  # 4 devices idle
    assert mesh_shape(1, rows=4, num_envs=16) == (1, 1)
    assert make_mesh(jax.devices()[:1], rows=2, num_envs=8) is None
    assert IDENTITY.devices == 1


def test_env_shards_of_sizes_the_devices_do_not_divide():
    assert parallel.env_shards_of(ENV_SPLIT, 8) == 2
    assert parallel.env_shards_of(ENV_SPLIT, 7) == 1
    assert parallel.env_shards_of(IDENTITY, 8) == 1
    assert blocks.block_count(3, 8, 4, ENV_SPLIT) == 2 * blocks.num_blocks(12, 4)
    assert blocks.block_count(3, 7, 4, ENV_SPLIT) == blocks.num_blocks(21, 4)


def test_strided_envs_are_defined_over_global_indices():
    x = jnp.arange(16).reshape(2, 8)
    np.testing.assert_array_equal(parallel.strided_envs(x, 4), x[:, ::2])
    np.testing.assert_array_equal(parallel.strided_envs(x, 2), x[:, ::4])
    np.testing.assert_array_equal(parallel.strided_envs(x, 3), x[:, :3])  # 3 ∤ 8
    np.testing.assert_array_equal(parallel.strided_envs(x, 8), x)
    y = jnp.arange(48.0).reshape(2, 8, 3)
    np.testing.assert_array_equal(parallel.strided_envs(y, 4), y[:, ::2])
    # The same envs whether the batch is split or not.
    split = jax.jit(
        lambda v: parallel.strided_envs(parallel.split_envs(v, ENV_SPLIT, 1), 4)
    )(y)
    np.testing.assert_array_equal(split, y[:, ::2])


def test_minibatches_are_strided_over_global_env_indices():
    x = jnp.arange(2 * 8).reshape(2, 8)
    split = critic.minibatch_split(x, 4)
    assert split.shape == (4, 2, 2)
    for m in range(4):
        np.testing.assert_array_equal(split[m], x[:, m::4])


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

    def run(backend):
        count = blocks.block_count(4, 8, block_rows, backend)

        def block_loss(p, block):
            x, y = block
            prediction = forward(p, x)
            value = jnp.mean(jnp.square(prediction - y)) / count
            return value, (value, {"prediction": prediction})

        return jax.jit(
            lambda p, d: blocks.blocked_grad(
                block_loss, p, d, block_rows, backend, with_outputs=True
            )
        )(params, (obs, targets))

    split = run(ENV_SPLIT)
    for grads, summed, outputs in (split, run(IDENTITY)):
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
    out = jax.jit(
        lambda o: blocks.blocked_map(lambda x: forward(params, x), o, 4, ENV_SPLIT)
    )(obs)
    np.testing.assert_allclose(out, forward(params, obs), rtol=1e-5, atol=1e-6)


def test_compacted_grad_and_map_split_equal_the_masked_batch():
    params, obs, targets, forward = _mlp_problem()
    valid = jnp.arange(4)[:, None] < jnp.array([4, 1, 0, 2, 3, 4, 4, 1])[None]
    num_valid = jnp.sum(valid)

    def block_loss(p, block):
        (x, y), in_range = block
        errors = jnp.square(forward(p, x) - y)
        return jnp.sum(jnp.where(in_range, errors, 0.0)) / num_valid, ()

    grads, _ = blocks.compacted_grad(
        block_loss, params, (obs, targets), valid, 3, ENV_SPLIT
    )

    def masked(p):
        errors = jnp.square(forward(p, obs) - targets)
        return jnp.sum(jnp.where(valid, errors, 0.0)) / jnp.sum(valid)

    for a, b in zip(
        jax.tree.leaves(grads), jax.tree.leaves(jax.grad(masked)(params)), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    values = blocks.compacted_map(
        lambda x: forward(params, x), obs, valid, 3, ENV_SPLIT
    )
    np.testing.assert_allclose(
        values, jnp.where(valid, forward(params, obs), 0.0), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("minibatches", [2, 4, 8])
def test_critic_fit_is_the_same_split_or_not(minibatches):
    # 8 envs in 2, 4 or 8 minibatches over 3 epochs (2 shuffled): with 8 the
    # minibatches have 1 env, which the 2 devices cannot split (runs whole).
    params, obs, targets, forward = _mlp_problem()

    def adam_fit(backend):
        def loss_fn(p, block):
            x, y = block
            return jnp.mean(jnp.square(forward(p, x) - y))

        def fit(params, data):
            return critic.fit_critic(
                loss_fn,
                params,
                base.ADAM.init(params),
                data,
                jax.random.PRNGKey(5),
                jnp.asarray(0.05),
                jnp.asarray(10.0),
                3,
                minibatches,
                4,
                backend,
            )

        return jax.jit(fit)(params, (obs, targets))

    one, split = adam_fit(IDENTITY), adam_fit(ENV_SPLIT)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(split), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # And the fit moved the critic.
    assert not np.allclose(one[0]["w"], params["w"])


# Two critic minibatches over two epochs (one shuffled) and a KL estimate on
# half the envs: what a seed computes must not depend on the devices.
SETTINGS = dict(
    env="CartPole-v1",
    num_envs=8,
    num_steps=4,
    total_timesteps=10**6,
    updates_per_chunk=2,
    critic_minibatches=2,
    critic_epochs=2,
    kl_envs=4,
    block_rows=8,
    hidden=(16,),
)
ALGOS = ("a2c", "npg", "trpo", "reinforce", "ac-lambda", "nac")


def chunk_results(algo: str, backend: Backend, seeds: int = 2):
    """Every agent leaf and metric after one chunk of 2 updates of ``algo``
    on ``backend`` for ``seeds`` seeds, compiled as the runner compiles it;
    also the state (to check where it is)."""
    settings = dict(SETTINGS, algo=algo)
    if algo == "reinforce":
        settings.pop("critic_minibatches")
        settings.pop("critic_epochs")
    if algo == "ac-lambda":
        # Online: one step per update; 12 of them, so that some episodes end
        # and their per-env traces restart (split over the envs like them).
        settings.update(num_steps=1, updates_per_chunk=12)
    trainer = make_train(TrainConfig(**settings), backend)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(seeds))
    abstract = jax.eval_shape(trainer.init_batch, keys)
    shardings = trainer.state_shardings(abstract)
    state = jax.jit(trainer.init_batch, out_shardings=shardings)(keys)
    chunk = jax.jit(
        trainer.train_chunk_batch, **runner.chunk_shardings(backend, shardings)
    )
    state, metrics = chunk(state)
    leaves = {f"agent/{i}": x for i, x in enumerate(jax.tree.leaves(state.agent))}
    leaves.update({f"metric/{name}": x for name, x in metrics.items()})
    values = {k: np.asarray(v, np.float64) for k, v in leaves.items()}
    return values, state


@pytest.mark.parametrize("algo", ALGOS)
def test_updates_are_the_same_on_any_layout(algo):
    one_device, _ = chunk_results(algo, IDENTITY)
    for backend in (ENV_SPLIT, SEED_SPLIT):
        split, state = chunk_results(algo, backend)
        assert split.keys() == one_device.keys()
        for name, values in split.items():
            np.testing.assert_allclose(
                values,
                one_device[name],
                rtol=2e-4,
                atol=2e-5,
                err_msg=f"{algo} {name} on {backend.mesh.shape}",
            )
        # The state stays where the layout puts it between chunks.
        obs = state.env.obs
        assert obs.sharding.is_equivalent_to(
            jax.sharding.NamedSharding(
                backend.mesh, jax.sharding.PartitionSpec("seeds", "envs")
            ),
            obs.ndim,
        )


def test_replicated_parameters_stay_identical_on_every_device():
    # Each device applies the all-reduced gradient itself: the copies must
    # agree bit for bit after updates (else they would drift apart).
    for algo in ("a2c", "npg"):
        _, state = chunk_results(algo, ENV_SPLIT, seeds=1)
        for leaf in jax.tree.leaves((state.agent.actor, state.agent.critic)):
            shards = [np.asarray(s.data) for s in leaf.addressable_shards]
            assert len(shards) == 2
            for other in shards[1:]:
                np.testing.assert_array_equal(shards[0], other)


def test_epoch_shuffles_are_stratified_over_fixed_groups_of_envs():
    assert critic.shuffle_groups(4096, 4) == critic.MAX_SHUFFLE_GROUPS
    assert critic.shuffle_groups(8, 4) == 2
    assert critic.shuffle_groups(24, 4) == 2  # 6 per minibatch: 2 groups of 12
    assert critic.shuffle_groups(8, 8) == 1
    orders = critic.epoch_orders(jax.random.PRNGKey(0), 3, 16, 4)
    assert orders.shape == (3, 4, 4)
    np.testing.assert_array_equal(orders[0], np.tile(np.arange(4), (4, 1)))
    for order in orders[1:]:
        for group in np.asarray(order):
            assert sorted(group) == [0, 1, 2, 3]
    assert not np.array_equal(orders[1], orders[2])
    x = jnp.arange(2 * 16).reshape(2, 16)
    out = critic.shuffled(x, orders[1])
    expected = np.concatenate([g * 4 + np.asarray(o) for g, o in enumerate(orders[1])])
    np.testing.assert_array_equal(out, x[:, expected])
    # Split over two devices, each holds whole groups: the same result.
    split = jax.jit(
        lambda v: critic.shuffled(parallel.split_envs(v, ENV_SPLIT, 1), orders[1])
    )(x)
    np.testing.assert_array_equal(split, out)


def test_one_seed_per_device_runs_on_when_another_seed_is_done():
    """REINFORCE's seeds end at different updates (episodes vary in length).
    With one seed per device, the seed that is done idles while the other's
    episode loop runs on: no reduction over the seeds may wait for it (without
    :func:`pgjax.parallel.seeds_apart` XLA aborts after a minute's wait)."""
    backend = Backend(mesh=make_mesh(jax.devices(), rows=2, num_envs=4))
    config = TrainConfig(
        algo="reinforce",
        num_envs=4,
        total_timesteps=150,
        updates_per_chunk=12,
        hidden=(8,),
    )
    trainer = make_train(config, backend)
    state = jax.jit(trainer.init_batch)(jax.vmap(jax.random.PRNGKey)(jnp.arange(2)))
    state, metrics = jax.jit(trainer.train_chunk_batch)(state)
    updates = np.asarray(metrics["active"]).sum(axis=1)
    assert updates[0] != updates[1]  # the case this test is for
    np.testing.assert_array_equal(np.asarray(state.update), updates)
    assert np.all(np.asarray(state.experience) >= config.total_timesteps)
    # Each seed's program is the one it runs alone.
    alone, _ = jax.jit(make_train(config).train_chunk_batch)(
        jax.tree.map(
            lambda x: x[1:],
            jax.jit(trainer.init_batch)(jax.vmap(jax.random.PRNGKey)(jnp.arange(2))),
        )
    )
    np.testing.assert_array_equal(np.asarray(alone.update), updates[1:])
