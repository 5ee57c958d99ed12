"""Compiling with a backend's options (:mod:`pgjax.compilation`), and which
options the runner gives each program.

Neutral: these hold for any backend. The CPU profile's own options and what
they do to a compiled program are pinned in tests/test_cpu_profile.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pgjax import compilation, runner
from pgjax.backend import Backend
from pgjax.config import TrainConfig
from pgjax.train import make_train

LEVEL = "xla_backend_optimization_level"


@pytest.fixture
def compile_calls(monkeypatch):
    """The ``compiler_options`` of every ``Lowered.compile`` call, in order."""
    seen = []
    compile_ = jax.stages.Lowered.compile

    def spy(self, compiler_options=None):
        seen.append(compiler_options)
        return compile_(self, compiler_options=compiler_options)

    monkeypatch.setattr(jax.stages.Lowered, "compile", spy)
    return seen


def test_compile_lowered_drops_only_the_options_jaxlib_lacks(compile_calls):
    options = {"xla_cpu_no_such_option": "1", LEVEL: 1}
    lowered = compilation.lower(lambda x: x + 1.0, jnp.ones(3))
    compiled = compilation.compile_lowered(lowered, options)
    np.testing.assert_array_equal(compiled(jnp.ones(3)), 2.0)
    assert compile_calls == [options, {LEVEL: 1}]


def test_compile_lowered_keeps_known_options_and_defaults_to_none(compile_calls):
    lowered = compilation.lower(lambda x: x * 3.0, jnp.ones(3))
    compiled = compilation.compile_lowered(lowered, {LEVEL: 1})
    np.testing.assert_array_equal(compiled(jnp.ones(3)), 3.0)
    for no_options in (None, {}):
        compilation.compile_lowered(lowered, no_options)
    # One compile per call: nothing dropped, nothing retried; no options at
    # all are XLA's defaults.
    assert compile_calls == [{LEVEL: 1}, None, None]


def test_compile_with_options_agrees_with_jit():
    def fn(x, w):
        return jnp.tanh(x @ w).sum(axis=0)

    x = jax.random.normal(jax.random.PRNGKey(0), (64, 8))
    w = jax.random.normal(jax.random.PRNGKey(1), (8, 4))
    compiled = compilation.compile_with(fn, x, w, options={LEVEL: 1})
    np.testing.assert_allclose(compiled(x, w), jax.jit(fn)(x, w), rtol=1e-6)


def test_compile_with_donates_its_argument():
    compiled = compilation.compile_with(
        lambda x: x * 2.0, jnp.ones(3), donate_argnums=0
    )
    x = jnp.ones(3)
    np.testing.assert_array_equal(compiled(x), 2.0)
    if jax.default_backend() == "cpu":
        assert x.is_deleted()
    kept = jnp.ones(3)
    compilation.compile_with(lambda x: x * 2.0, kept)(kept)
    assert not kept.is_deleted()


def test_compile_with_places_outputs_as_asked():
    devices = jax.devices()[:2]
    if len(devices) < 2:
        pytest.skip("needs two devices")
    mesh = Mesh(np.asarray(devices).reshape(1, 2), ("seeds", "envs"))
    split = NamedSharding(mesh, PartitionSpec("envs"))
    compiled = compilation.compile_with(
        lambda x: x + 1.0, jax.ShapeDtypeStruct((4,), jnp.float32), out_shardings=split
    )
    out = compiled(jnp.zeros(4))
    np.testing.assert_array_equal(out, 1.0)
    assert out.sharding.is_equivalent_to(split, 1)


def test_final_evaluation_gets_heavy_options_only_when_heavy(monkeypatch):
    light, heavy = {"light": 0}, {"heavy": 1}
    backend = Backend(run_once_options=light, heavy_run_once_options=heavy)
    trainer = make_train(TrainConfig(algo="a2c", num_envs=4, num_steps=2), backend)
    calls = []

    def fake_compile_lowered(lowered, options):
        calls.append((options, len(lowered.as_text().splitlines())))
        return lowered

    monkeypatch.setattr(runner.programs, "compile_lowered", fake_compile_lowered)

    def evaluation_options(rows: int, episodes: int) -> tuple[dict, int]:
        calls.clear()
        keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(rows))
        abstract = jax.eval_shape(trainer.init_batch, keys)
        runner.compile_evaluation(trainer, abstract, None, episodes)
        [(options, lines)] = calls
        return options, lines

    cases = [(1, 128), (3, 128), (4, 128), (32, 16), (1, 1024)]
    got = [evaluation_options(rows, episodes)[0] for rows, episodes in cases]
    expected = [
        heavy if 2 * rows * episodes >= runner.HEAVY_EVALUATION_EPISODES else light
        for rows, episodes in cases
    ]
    assert light in expected and heavy in expected  # the cases straddle it
    assert got == expected
    # A program as large as the bar is heavy at any number of episodes.
    options, lines = evaluation_options(1, 8)
    assert options == light and lines < runner.HEAVY_EVALUATION_LINES
    monkeypatch.setattr(runner.programs, "HEAVY_EVALUATION_LINES", lines)
    assert evaluation_options(1, 8)[0] == heavy


def test_final_evaluation_is_placed_by_jax_without_shardings(monkeypatch):
    trainer = make_train(TrainConfig(algo="a2c", num_envs=4, num_steps=2))
    jit_kwargs = []

    def fake_lower(fn, *args, **kwargs):
        jit_kwargs.append(kwargs)
        return compilation.lower(fn, *args, **kwargs)

    monkeypatch.setattr(runner.programs, "lower", fake_lower)
    monkeypatch.setattr(runner.programs, "compile_lowered", lambda low, opts: low)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(2))
    abstract = jax.eval_shape(trainer.init_batch, keys)
    runner.compile_evaluation(trainer, abstract, None, 8)
    assert jit_kwargs == [{}]


def test_evaluation_reports_the_mode_and_the_sampled_policy():
    """On ProbeOneStep-v0 (reward 1 for action 1, else 0) an untrained
    policy's mode takes one action in every episode, so its mean return is
    exactly 0 or 1, while sampling takes both: strictly in between."""
    trainer = make_train(TrainConfig(algo="a2c", env="ProbeOneStep-v0", num_envs=4))
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(3))
    state = jax.jit(trainer.init_batch)(keys)
    evaluate = runner.compile_evaluation(trainer, state, None, episodes=128)
    returns = evaluate(state)
    assert set(returns) == {"mode", "sampled"}
    assert returns["mode"].shape == returns["sampled"].shape == (3,)
    assert all(r in (0.0, 1.0) for r in returns["mode"])
    assert np.all((returns["sampled"] > 0.1) & (returns["sampled"] < 0.9))
