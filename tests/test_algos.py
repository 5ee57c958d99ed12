"""Algorithm internals: the cheap next-state values equal the full computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgjax import envs, rollout
from pgjax.algos import base
from pgjax.config import TrainConfig


@pytest.mark.parametrize(
    ("env_id", "num_steps"), [("CartPole-v1", 24), ("ProbeConstantReward-v0", 45)]
)
def test_next_state_values_match_full_pass(env_id, num_steps):
    spec = envs.make_env(env_id)
    policy, critic = base.make_networks(TrainConfig(), spec)
    key = jax.random.PRNGKey(3)
    actor_params, critic_params = policy.init(key), critic.init(key)
    state = envs.reset(spec, key, 16)
    _, batch = rollout.collect_steps(
        spec, base.sampling_act_fn(policy, actor_params), state, key, num_steps
    )
    assert bool(batch.truncated.any()) or env_id == "CartPole-v1"

    def value_fn(obs):
        return critic.apply(critic_params, obs)

    values = value_fn(batch.obs)
    cheap = base.next_state_values(value_fn, batch, values, spec.max_episode_steps)
    full = value_fn(batch.next_obs)
    # Wherever the value is used (not after a termination) the two agree.
    used = ~np.asarray(batch.terminated)
    np.testing.assert_allclose(
        np.asarray(cheap)[used], np.asarray(full)[used], rtol=1e-5, atol=1e-5
    )


def test_num_blocks_tiles_rows():
    assert base.num_blocks(65536, 2048) == 32
    assert base.num_blocks(100, 0) == 1
    assert base.num_blocks(96, 40) == 3
    assert 96 % base.num_blocks(96, 40) == 0


def test_blocked_grad_equals_full_grad():
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 6, 3))
    w = jnp.arange(3.0)

    def loss(w, block):
        return jnp.mean(jnp.tanh(block @ w)) / count, jnp.zeros(())

    count = base.num_blocks(48, 16)
    blocked, _ = base.blocked_grad(loss, w, x, 16)
    full = jax.grad(lambda w: jnp.mean(jnp.tanh(x @ w)))(w)
    np.testing.assert_allclose(blocked, full, rtol=1e-5, atol=1e-6)
