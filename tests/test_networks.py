"""The networks' torsos: the MLP on flattened observations, the CNN on images."""

from __future__ import annotations

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgjax import envs, networks
from pgjax.algos import base
from pgjax.backend import IDENTITY
from pgjax.config import ConfigError, TrainConfig


@pytest.mark.parametrize(
    ("network", "shape", "resolved"),
    [
        ("auto", (4,), "mlp"),
        ("auto", (10, 10, 4), "cnn"),
        ("mlp", (10, 10, 4), "mlp"),
        ("cnn", (10, 10, 4), "cnn"),
    ],
)
def test_resolve_network(network, shape, resolved):
    assert networks.resolve_network(network, shape) == resolved


def test_init_log_std_sets_the_initial_std_of_a_continuous_policy():
    spec = envs.make_env("Pendulum-v1")
    config = TrainConfig(env="Pendulum-v1", init_log_std=-1.5)
    policy, _ = base.make_networks(config, spec, IDENTITY)
    params = policy.init(jax.random.PRNGKey(0))
    obs = jnp.zeros((3, *spec.obs_shape))
    dist = policy.apply(params, obs)
    np.testing.assert_array_equal(dist.log_std, np.full((3, 1), -1.5, np.float32))


def test_cnn_on_vector_observations_is_a_config_error_naming_the_flag():
    spec = envs.make_env("CartPole-v1")
    with pytest.raises(ConfigError, match="--network: cnn needs image"):
        base.make_networks(TrainConfig(network="cnn"), spec, IDENTITY)


def test_auto_gives_images_a_convolution_and_keeps_batch_axes():
    spec = envs.make_env("Breakout-MinAtar")
    assert spec.obs_shape == (10, 10, 4)
    policy, critic = base.make_networks(TrainConfig(hidden=(32,)), spec, IDENTITY)
    params = policy.init(jax.random.PRNGKey(0))
    kernel = params["params"]["PatchConv_0"]["Dense_0"]["kernel"]
    assert kernel.shape == (9 * 4, networks.CONV_FEATURES)
    # A valid 3×3 convolution leaves 8 × 8 × 16 features for the MLP.
    assert params["params"]["Dense_0"]["kernel"].shape == (8 * 8 * 16, 32)
    obs = jax.random.uniform(jax.random.PRNGKey(1), (5, 3, 10, 10, 4))
    dist = policy.apply(params, obs)
    assert dist.logits.shape == (5, 3, spec.num_actions)
    # Batch axes are only reshaped: each observation's logits are its own.
    one = policy.apply(params, obs[2, 1])
    np.testing.assert_allclose(dist.logits[2, 1], one.logits, rtol=1e-5, atol=1e-6)
    values = critic.apply(critic.init(jax.random.PRNGKey(2)), obs)
    assert values.shape == (5, 3)


def test_mlp_flattens_images_when_asked():
    spec = envs.make_env("Breakout-MinAtar")
    policy, _ = base.make_networks(
        TrainConfig(network="mlp", hidden=(32,)), spec, IDENTITY
    )
    params = policy.init(jax.random.PRNGKey(0))
    assert "PatchConv_0" not in params["params"]
    assert params["params"]["Dense_0"]["kernel"].shape == (400, 32)
    obs = jnp.zeros((2, 10, 10, 4))
    assert policy.apply(params, obs).logits.shape == (2, spec.num_actions)


def test_patch_convolution_is_a_valid_3x3_convolution():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 10, 9, 4))
    conv = networks.PatchConv(5)
    params = conv.init(jax.random.PRNGKey(1), x)
    dense = params["params"]["Dense_0"]
    reference = flax.linen.Conv(5, (3, 3), padding="VALID")
    expected = reference.apply(
        {
            "params": {
                "kernel": dense["kernel"].reshape(3, 3, 4, 5),
                "bias": dense["bias"],
            }
        },
        x,
    )
    np.testing.assert_allclose(conv.apply(params, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("algo", ["npg", "trpo"])
def test_natural_steps_train_through_the_cnn(algo):
    # The MinAtar presets' path: Fisher-vector products through the patch
    # convolution on a strided subset of the envs, then the step.
    from pgjax import train
    from pgjax.config import Hyperparams

    config = TrainConfig(
        algo=algo,
        env="Breakout-MinAtar",
        num_envs=4,
        num_steps=8,
        total_timesteps=64,
        hidden=(8,),
        activation="relu",
        kl_envs=2,
    )
    trainer = train.make_train(config)
    initial = trainer.init(jax.random.key(0), Hyperparams.from_config(config))
    state, metrics = jax.jit(trainer.update)(initial)
    conv = state.agent.actor["params"]["PatchConv_0"]
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(conv))
    assert all(bool(jnp.isfinite(v)) for v in metrics.values())
    moved = jax.tree.map(
        lambda a, b: float(jnp.max(jnp.abs(a - b))),
        conv,
        initial.agent.actor["params"]["PatchConv_0"],
    )
    assert max(jax.tree.leaves(moved)) > 0  # the convolution took the step
