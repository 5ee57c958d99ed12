"""PopArt statistics and output preservation (pgjax.value_norm)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pgjax import value_norm
from pgjax.networks import MLP


def test_initial_statistics_are_identity():
    state = value_norm.init()
    mean, scale = value_norm.statistics(state)
    assert float(mean) == 0.0 and float(scale) == 1.0
    values = jnp.array([3.0, -2.0])
    np.testing.assert_array_equal(value_norm.normalize(state, values), values)


def test_statistics_are_debiased_moving_averages():
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=50 * i, scale=5 + i, size=(4, 8)) for i in range(6)]
    state = value_norm.init()
    decay = 0.9
    for batch in batches:
        state = value_norm.update(state, jnp.asarray(batch, jnp.float32), decay)
    # Σ_i decayⁿ⁻ⁱ·(1 − decay)·x_i / (1 − decayⁿ), computed by hand.
    n = len(batches)
    weights = np.array([decay ** (n - 1 - i) * (1 - decay) for i in range(n)])
    weights /= weights.sum()
    mean = sum(w * b.mean() for w, b in zip(weights, batches, strict=True))
    mean_square = sum(w * (b**2).mean() for w, b in zip(weights, batches, strict=True))
    got_mean, got_scale = value_norm.statistics(state)
    np.testing.assert_allclose(got_mean, mean, rtol=1e-5)
    np.testing.assert_allclose(got_scale, np.sqrt(mean_square - mean**2), rtol=1e-4)


def test_constant_targets_give_the_minimum_scale_not_nan():
    state = value_norm.update(value_norm.init(), jnp.full((5,), 7.0))
    mean, scale = value_norm.statistics(state)
    np.testing.assert_allclose(mean, 7.0, rtol=1e-6)
    np.testing.assert_allclose(scale, value_norm.MIN_SCALE, rtol=1e-6)
    assert np.all(np.isfinite(value_norm.normalize(state, jnp.array([7.0, 8.0]))))


def test_preserve_outputs_keeps_values_exactly():
    module = MLP((8, 8), 1)
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)))
    obs = jax.random.normal(jax.random.PRNGKey(1), (32, 3))
    old = value_norm.update(value_norm.init(), jnp.array([1.0, 3.0, 2.0]))
    new = value_norm.update(old, jnp.array([400.0, 900.0, 1200.0]))
    before = value_norm.denormalize(old, module.apply(params, obs))
    rescaled = value_norm.preserve_outputs(params, old, new)
    after = value_norm.denormalize(new, module.apply(rescaled, obs))
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)
    # Only the output layer changed.
    for name in ("Dense_0", "Dense_1"):
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(
                rescaled["params"][name][leaf], params["params"][name][leaf]
            )
    assert not np.allclose(
        rescaled["params"]["Dense_2"]["kernel"], params["params"]["Dense_2"]["kernel"]
    )


def test_fold_targets_is_update_preserve_normalize():
    module = MLP((4,), 1)
    params = module.init(jax.random.PRNGKey(2), jnp.zeros((1, 3)))
    old = value_norm.update(value_norm.init(), jnp.array([1.0, 5.0]))
    targets = jnp.array([[20.0, 30.0], [25.0, 40.0]])
    state, rescaled, standardised = value_norm.fold_targets(old, params, targets)
    expected_state = value_norm.update(old, targets)
    expected_params = value_norm.preserve_outputs(params, old, expected_state)
    for got, want in zip(
        jax.tree.leaves((state, rescaled)),
        jax.tree.leaves((expected_state, expected_params)),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(
        standardised, value_norm.normalize(expected_state, targets)
    )
