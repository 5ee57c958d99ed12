"""The networks' fast Dense product: same values and derivatives as ``x @ W``.

:func:`pgjax.networks.dense_dot` rewrites the derivative of a Dense layer so that
XLA:CPU computes weight gradients as ordinary products. These tests pin that it
changes nothing else: outputs, gradients, forward-mode products and Hessians
agree with the plain network (float64, to rounding), under ``vmap`` too, and
the trainer's networks use it on a CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from pgjax import envs, networks
from pgjax.algos import base
from pgjax.config import TrainConfig


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _pair(out_dim=3, hidden=(8, 5)):
    plain = networks.MLP(hidden, out_dim, "tanh", 1.0, fast_weight_grads=False)
    fast = networks.MLP(hidden, out_dim, "tanh", 1.0, fast_weight_grads=True)
    return plain, fast


def _data(shape=(3, 7, 4), seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=shape))


def _init(module, key, x):
    """Parameters in ``x``'s dtype (flax initialises float32 ones)."""
    params = module.init(key, x)
    return jax.tree.map(lambda p: p.astype(x.dtype), params)


def _loss(module, params, x):
    out = module.apply(params, x)
    return jnp.sum(jnp.sin(out) * jnp.arange(out.shape[-1]))


def test_outputs_and_gradients_match_the_plain_network(x64):
    plain, fast = _pair()
    x = _data()  # leading batch axes [3, 7] exercise the flattening
    params = _init(plain, jax.random.PRNGKey(0), x)
    np.testing.assert_array_equal(fast.apply(params, x), plain.apply(params, x))
    g_plain = jax.grad(lambda p: _loss(plain, p, x))(params)
    g_fast = jax.grad(lambda p: _loss(fast, p, x))(params)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14),
        g_fast,
        g_plain,
    )
    # The input gradient too (the activations' path through the layers).
    gx_plain = jax.grad(lambda x: _loss(plain, params, x))(x)
    gx_fast = jax.grad(lambda x: _loss(fast, params, x))(x)
    np.testing.assert_allclose(gx_fast, gx_plain, rtol=1e-12, atol=1e-14)


def test_forward_mode_and_hessians_match(x64):
    plain, fast = _pair(out_dim=2, hidden=(4,))
    x = _data((6, 3))
    params = _init(plain, jax.random.PRNGKey(1), x)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    direction = jnp.asarray(np.random.default_rng(2).normal(size=flat.shape))

    def jvp(module):
        return jax.jvp(lambda f: module.apply(unravel(f), x), (flat,), (direction,))[1]

    np.testing.assert_allclose(jvp(fast), jvp(plain), rtol=1e-12, atol=1e-14)
    h_plain = jax.hessian(lambda f: _loss(plain, unravel(f), x))(flat)
    h_fast = jax.hessian(lambda f: _loss(fast, unravel(f), x))(flat)
    np.testing.assert_allclose(h_fast, h_plain, rtol=1e-10, atol=1e-12)


def test_gradients_match_under_vmap(x64):
    plain, fast = _pair()
    x = _data((5, 4))
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    params = jax.vmap(lambda k: _init(plain, k, x))(keys)

    def grads(module):
        return jax.vmap(jax.grad(lambda p: _loss(module, p, x)))(params)

    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14),
        grads(fast),
        grads(plain),
    )


def test_weight_gradient_uses_the_transposed_copy():
    # The gradient program holds the optimisation barrier that keeps xᵀ
    # materialised: without it XLA folds the transpose back into the slow
    # batch-contracting product.
    plain, fast = _pair()
    x = _data((16, 4)).astype(jnp.float32)
    params = plain.init(jax.random.PRNGKey(0), x)

    def jaxpr_text(module):
        return str(jax.make_jaxpr(jax.grad(lambda p: _loss(module, p, x)))(params))

    assert "optimization_barrier" in jaxpr_text(fast)
    assert "optimization_barrier" not in jaxpr_text(plain)


def test_non_standard_products_fall_back_to_dot_general():
    lhs = _data((2, 3, 4)).astype(jnp.float32)
    rhs = _data((2, 4, 5), seed=1).astype(jnp.float32)
    batched = (((2,), (1,)), ((0,), (0,)))
    np.testing.assert_array_equal(
        networks._dense_dot_general(lhs, rhs, batched),
        lax.dot_general(lhs, rhs, batched),
    )


def test_trainer_networks_use_the_fast_product_on_cpu():
    spec = envs.make_env("CartPole-v1")
    policy, critic = base.make_networks(TrainConfig(), spec)
    expected = jax.default_backend() == "cpu"
    assert policy.module.fast_weight_grads is expected
    assert critic.module.fast_weight_grads is expected
    continuous = envs.make_env("Pendulum-v1")
    gaussian, _ = base.make_networks(TrainConfig(), continuous)
    assert gaussian.module.fast_weight_grads is expected
