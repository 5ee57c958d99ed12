"""The CPU profile's speed tricks (:mod:`pgjax.cpu`), each pinned where it lives.

Every choice here pays on XLA:CPU only (measured on a 2-core CPU: see
docs/performance.md). These tests say what each trick is and that it changes
no result: the transposed-copy Dense product gives the plain product's values
and derivatives, the chunk's compile options give what ``jax.jit`` gives, and
:func:`pgjax.cpu.cpu_backend` hands all of them to the core. A failure here
means a CPU trick changed or broke, not that pgjax's algorithms did; retuning
a trick means updating its test here.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from pgjax import backend as backend_lib
from pgjax import cpu, envs, hardware, networks
from pgjax.algos import base
from pgjax.backend import Backend
from pgjax.compilation import compile_with
from pgjax.config import TrainConfig
from pgjax.train import make_train

ALGOS = ("a2c", "npg", "trpo", "reinforce")
YNNPACK = "xla_cpu_experimental_ynn_fusion_type"
LEVEL = "xla_backend_optimization_level"


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _pair(out_dim=3, hidden=(8, 5)):
    """The same MLP with the plain product and with the CPU profile's."""
    plain = networks.MLP(hidden, out_dim, "tanh", 1.0, dot_general=None)
    fast = networks.MLP(hidden, out_dim, "tanh", 1.0, cpu.dense_dot_general)
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


def _close(a, b, rtol=1e-12, atol=1e-14):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol, atol), a, b)


# ------------------------------------------------- the transposed-copy product


def test_cpu_dense_dot_values_and_derivatives_equal_the_plain_product(x64):
    x = _data((3, 7, 4))  # leading batch axes [3, 7] exercise the flattening
    kernel = _data((4, 5), seed=1)
    np.testing.assert_array_equal(cpu.dense_dot(x, kernel), x @ kernel)

    def loss(product):
        return lambda x, k: jnp.sum(jnp.sin(product(x, k)) * jnp.arange(5))

    both = (0, 1)
    _close(
        jax.grad(loss(cpu.dense_dot), both)(x, kernel),
        jax.grad(loss(jnp.matmul), both)(x, kernel),
    )
    directions = (_data((3, 7, 4), seed=2), _data((4, 5), seed=3))
    _close(
        jax.jvp(cpu.dense_dot, (x, kernel), directions)[1],
        jax.jvp(jnp.matmul, (x, kernel), directions)[1],
    )


def test_cpu_fast_product_network_matches_the_plain_one(x64):
    plain, fast = _pair()
    x = _data()
    params = _init(plain, jax.random.PRNGKey(0), x)
    np.testing.assert_array_equal(fast.apply(params, x), plain.apply(params, x))
    _close(
        jax.grad(lambda p: _loss(fast, p, x))(params),
        jax.grad(lambda p: _loss(plain, p, x))(params),
    )
    # The input gradient too (the activations' path through the layers).
    _close(
        jax.grad(lambda x: _loss(fast, params, x))(x),
        jax.grad(lambda x: _loss(plain, params, x))(x),
    )


def test_cpu_fast_product_forward_mode_and_hessians_match(x64):
    plain, fast = _pair(out_dim=2, hidden=(4,))
    x = _data((6, 3))
    params = _init(plain, jax.random.PRNGKey(1), x)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    direction = jnp.asarray(np.random.default_rng(2).normal(size=flat.shape))

    def jvp(module):
        return jax.jvp(lambda f: module.apply(unravel(f), x), (flat,), (direction,))[1]

    _close(jvp(fast), jvp(plain))
    h_plain = jax.hessian(lambda f: _loss(plain, unravel(f), x))(flat)
    h_fast = jax.hessian(lambda f: _loss(fast, unravel(f), x))(flat)
    np.testing.assert_allclose(h_fast, h_plain, rtol=1e-10, atol=1e-12)


def test_cpu_fast_product_gradients_match_under_vmap(x64):
    plain, fast = _pair()
    x = _data((5, 4))
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    params = jax.vmap(lambda k: _init(plain, k, x))(keys)

    def grads(module):
        return jax.vmap(jax.grad(lambda p: _loss(module, p, x)))(params)

    _close(grads(fast), grads(plain))


_LEADING_AXES_PRODUCT = re.compile(
    r"lhs_contracting_dims=\{0\}, rhs_contracting_dims=\{0\}"
)


def test_cpu_weight_gradient_uses_the_transposed_copy():
    # The gradient program holds the optimisation barrier that keeps xᵀ
    # materialised; without it XLA folds the transpose back into the slow
    # product that contracts both operands on their leading (batch) axis.
    # The compiled program shows the result: one such product per layer in
    # the plain network's weight gradients, none with the CPU profile's.
    plain, fast = _pair()
    x = _data((16, 4)).astype(jnp.float32)
    params = plain.init(jax.random.PRNGKey(0), x)

    def gradient(module):
        return jax.grad(lambda p: _loss(module, p, x))

    def jaxpr_text(module):
        return str(jax.make_jaxpr(gradient(module))(params))

    def leading_axes_products(module):
        hlo = jax.jit(gradient(module)).lower(params).compile().as_text()
        return len(_LEADING_AXES_PRODUCT.findall(hlo))

    assert "optimization_barrier" in jaxpr_text(fast)
    assert "optimization_barrier" not in jaxpr_text(plain)
    if jax.default_backend() == "cpu":
        layers = len(plain.hidden) + 1
        assert leading_axes_products(plain) == layers
        assert leading_axes_products(fast) == 0


def test_cpu_fast_product_leaves_non_standard_products_to_dot_general():
    lhs = _data((2, 3, 4)).astype(jnp.float32)
    rhs = _data((2, 4, 5), seed=1).astype(jnp.float32)
    batched = (((2,), (1,)), ((0,), (0,)))
    np.testing.assert_array_equal(
        cpu.dense_dot_general(lhs, rhs, batched),
        lax.dot_general(lhs, rhs, batched),
    )
    # An explicit precision is honoured by lax.dot_general, not rerouted.
    x, kernel = _data((6, 4)).astype(jnp.float32), rhs[0]
    standard = (((1,), (0,)), ((), ()))
    jaxpr = jax.make_jaxpr(
        lambda a, b: cpu.dense_dot_general(a, b, standard, lax.Precision.HIGHEST)
    )(x, kernel)
    assert "custom_jvp_call" not in str(jaxpr)
    assert "custom_jvp_call" in str(
        jax.make_jaxpr(lambda a, b: cpu.dense_dot_general(a, b, standard))(x, kernel)
    )


# ------------------------------------------------------------ compile options


def test_cpu_chunk_options_per_algorithm():
    for algo in ALGOS:
        options = cpu.CHUNK_OPTIONS[algo]
        # YNNPACK on single products for the actor-critic methods only.
        assert (YNNPACK in options) == (algo != "reinforce")
        if YNNPACK in options:
            assert options[YNNPACK] == "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
        assert options[LEVEL] == 1
    # Programs that run once: level 0, or 1 when they carry much work.
    assert cpu.RUN_ONCE_OPTIONS == {LEVEL: 0}
    assert cpu.HEAVY_RUN_ONCE_OPTIONS == {LEVEL: 1}


def _kl_of_two_mlps(actor, other, obs):
    """The pattern YNNPACK fused slowly under vmap: a policy's KL between two
    small MLPs (products, tanh, log-softmax, a mean) in one subgraph."""

    def logits(params, x):
        return jnp.tanh(x @ params[0]) @ params[1]

    a = jax.nn.log_softmax(logits(actor, obs))
    b = jax.nn.log_softmax(logits(other, obs))
    return jnp.mean(jnp.sum(jnp.exp(a) * (a - b), axis=-1))


def test_cpu_chunk_options_keep_ynnpack_to_single_products_and_agree_with_jit():
    seeds, keys = 32, jax.random.split(jax.random.PRNGKey(0), 5)
    actor = [
        jax.random.normal(keys[0], (seeds, 4, 64)),
        jax.random.normal(keys[1], (seeds, 64, 2)),
    ]
    other = [
        jax.random.normal(keys[2], (seeds, 4, 64)),
        jax.random.normal(keys[3], (seeds, 64, 2)),
    ]
    obs = jax.random.normal(keys[4], (seeds, 1024, 4))
    fn = jax.vmap(_kl_of_two_mlps)
    compiled = compile_with(fn, actor, other, obs, options=cpu.CHUNK_OPTIONS["a2c"])
    plain = jax.jit(fn).lower(actor, other, obs).compile()
    np.testing.assert_allclose(
        compiled(actor, other, obs), plain(actor, other, obs), rtol=1e-4
    )
    if jax.default_backend() == "cpu":
        text = compiled.as_text()
        # One YNNPACK call per product, none fusing products with the rest.
        assert text.count("__ynn_fusion") == text.count(" dot(") == 4


# -------------------------------------------------------------- the profile


def test_cpu_backend_carries_the_profile():
    devices = jax.devices()[:1]
    for algo in ALGOS:
        profile = cpu.cpu_backend(algo, devices, rows=1, num_envs=16)
        assert profile.chunk_options == cpu.CHUNK_OPTIONS[algo]
        assert profile.run_once_options == cpu.RUN_ONCE_OPTIONS
        assert profile.heavy_run_once_options == cpu.HEAVY_RUN_ONCE_OPTIONS
        assert profile.block_rows == cpu.BLOCK_ROWS
        assert profile.dot_general is cpu.dense_dot_general
        assert profile.mesh is None  # one device
    assert cpu.cpu_backend("other", devices, 1, 16).chunk_options == {}
    # Copies: a backend cannot change the tables.
    profile = cpu.cpu_backend("a2c", devices, 1, 16)
    profile.chunk_options[LEVEL] = 3
    profile.run_once_options[LEVEL] = 3
    assert cpu.CHUNK_OPTIONS["a2c"][LEVEL] == 1
    assert cpu.RUN_ONCE_OPTIONS[LEVEL] == 0


def test_identity_backend_has_none_of_the_cpu_tricks():
    identity = Backend()
    assert identity.mesh is None
    assert identity.block_rows == 0
    assert identity.dot_general is None
    assert not identity.chunk_options
    assert not identity.run_once_options
    assert not identity.heavy_run_once_options


@pytest.mark.parametrize(
    "rows, num_envs", [(1, 16), (2, 16), (4, 16), (3, 16), (1, 3), (3, 3), (2, 1)]
)
def test_cpu_backend_mesh_splits_seeds_first(rows, num_envs):
    devices = jax.devices()
    profile = cpu.cpu_backend("a2c", devices, rows, num_envs)
    seed_shards, env_shards = backend_lib.mesh_shape(len(devices), rows, num_envs)
    if seed_shards * env_shards == 1:
        assert profile.mesh is None
    else:
        assert profile.mesh.axis_names == (backend_lib.SEEDS, backend_lib.ENVS)
        assert dict(profile.mesh.shape) == {
            backend_lib.SEEDS: seed_shards,
            backend_lib.ENVS: env_shards,
        }
    assert (profile.seed_shards, profile.env_shards) == (seed_shards, env_shards)
    if len(devices) == 2:  # conftest's two devices
        expected = {
            (1, 16): (1, 2),  # one seed: its envs are split
            (2, 16): (2, 1),  # seeds first: no collectives
            (4, 16): (2, 1),
            (3, 16): (1, 2),  # 3 seeds do not divide 2 devices: split envs
            (1, 3): (1, 1),  # nothing divides: one device
            (3, 3): (1, 1),
            (2, 1): (2, 1),
        }
        assert (seed_shards, env_shards) == expected[rows, num_envs]


def test_cpu_devices_get_the_cpu_profile():
    config = TrainConfig(algo="npg", num_envs=16, num_steps=8)
    profile = hardware.backend_for(config, 1, jax.devices())
    assert profile.dot_general is cpu.dense_dot_general
    assert profile.chunk_options == cpu.CHUNK_OPTIONS["npg"]
    assert profile.block_rows == cpu.BLOCK_ROWS


@pytest.mark.parametrize(
    "algo, num_envs, num_steps, cores, rows, expected",
    [
        ("a2c", 1024, 4, 2, 1, 1),  # too few rows per device to pay
        ("a2c", 4096, 16, 2, 1, 2),
        ("npg", 1024, 4, 2, 1, 2),  # more work per row: splits sooner
        ("trpo", 256, 4, 2, 1, 1),
        ("reinforce", 512, 500, 2, 1, 1),  # per-device envs, not rows
        ("reinforce", 1024, 1, 2, 1, 2),
        ("a2c", 16, 4, 2, 2, 2),  # seeds split without collectives
        ("a2c", 16, 4, 4, 8, 4),
        ("reinforce", 16, 1, 2, 4, 2),
        ("a2c", 16, 4, 2, 3, 1),  # 3 seeds do not divide 2 cores
        ("a2c", 4096, 16, 3, 1, 2),  # 3 does not divide 4096 envs
        ("a2c", 4096, 16, 1, 1, 1),  # one core
    ],
)
def test_cpu_devices_that_pay(algo, num_envs, num_steps, cores, rows, expected):
    assert cpu.devices_that_pay(algo, num_envs, num_steps, cores, rows) == expected


# ------------------------------------------- the trainer's networks use them


def test_cpu_profile_networks_use_the_fast_product_identity_ones_do_not():
    profile = cpu.cpu_backend("a2c", jax.devices()[:1], rows=1, num_envs=16)
    cartpole = envs.make_env("CartPole-v1")
    pendulum = envs.make_env("Pendulum-v1")
    for backend, expected in [(profile, cpu.dense_dot_general), (Backend(), None)]:
        policy, critic = base.make_networks(TrainConfig(), cartpole, backend)
        assert policy.module.dot_general is expected
        assert critic.module.dot_general is expected
        _, q_critic = base.make_networks(TrainConfig(), cartpole, backend, True)
        assert q_critic.module.dot_general is expected
        gaussian, _ = base.make_networks(TrainConfig(), pendulum, backend)
        assert gaussian.module.dot_general is expected


def test_cpu_profile_reaches_the_trainers_update():
    # End to end: the training chunk that make_train builds holds the
    # transposed copy's barrier under the CPU profile, and not without it.
    config = TrainConfig(algo="a2c", num_envs=4, num_steps=2, hidden=(8,))
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(1))

    def chunk_jaxpr(backend):
        trainer = make_train(config, backend)
        abstract = jax.eval_shape(trainer.init_batch, keys)
        return str(jax.make_jaxpr(trainer.train_chunk_batch)(abstract))

    profile = cpu.cpu_backend("a2c", jax.devices()[:1], rows=1, num_envs=4)
    assert "optimization_barrier" in chunk_jaxpr(profile)
    assert "optimization_barrier" not in chunk_jaxpr(Backend())
