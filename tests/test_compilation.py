"""The chunk's XLA options: which algorithms get them, and that they compile."""

import jax
import jax.numpy as jnp
import numpy as np

from pgjax import compilation


def test_chunk_options_per_algorithm_on_cpu_only():
    ynnpack = "xla_cpu_experimental_ynn_fusion_type"
    level = "xla_backend_optimization_level"
    for algo in ("a2c", "npg", "trpo", "reinforce"):
        options = compilation.chunk_options(algo, "cpu")
        assert options == compilation.CPU_CHUNK_OPTIONS[algo]
        assert (ynnpack in options) == (algo != "reinforce")
        assert options[level] == 1
        assert compilation.chunk_options(algo, "gpu") == {}
    assert compilation.chunk_options("other", "cpu") == {}
    # A copy: callers cannot change the table.
    compilation.chunk_options("a2c", "cpu")[level] = 3
    assert compilation.CPU_CHUNK_OPTIONS["a2c"][level] == 1


def _kl_of_two_mlps(actor, other, obs):
    """The pattern YNNPACK fused slowly under vmap: a policy's KL between two
    small MLPs (products, tanh, log-softmax, a mean) in one subgraph."""

    def logits(params, x):
        return jnp.tanh(x @ params[0]) @ params[1]

    a = jax.nn.log_softmax(logits(actor, obs))
    b = jax.nn.log_softmax(logits(other, obs))
    return jnp.mean(jnp.sum(jnp.exp(a) * (a - b), axis=-1))


def test_compile_chunk_keeps_ynnpack_to_single_products_and_agrees_with_jit():
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
    compiled = compilation.compile_chunk(fn, "a2c", actor, other, obs)
    plain = jax.jit(fn).lower(actor, other, obs).compile()
    np.testing.assert_allclose(
        compiled(actor, other, obs), plain(actor, other, obs), rtol=1e-4
    )
    if jax.default_backend() == "cpu":
        text = compiled.as_text()
        # One YNNPACK call per product, none fusing products with the rest.
        assert text.count("__ynn_fusion") == text.count(" dot(") == 4


def test_compile_chunk_drops_only_the_options_jaxlib_lacks(monkeypatch):
    options = {"xla_cpu_no_such_option": "1", "xla_backend_optimization_level": 1}
    monkeypatch.setattr(compilation, "chunk_options", lambda algo: dict(options))
    seen = []
    compile_ = jax.stages.Lowered.compile

    def spy(self, compiler_options=None):
        seen.append(dict(compiler_options or {}))
        return compile_(self, compiler_options=compiler_options)

    monkeypatch.setattr(jax.stages.Lowered, "compile", spy)
    compiled = compilation.compile_chunk(lambda x: x + 1.0, "a2c", jnp.ones(3))
    np.testing.assert_array_equal(compiled(jnp.ones(3)), 2.0)
    assert seen == [options, {"xla_backend_optimization_level": 1}]


def test_compile_chunk_donates_its_argument():
    compiled = compilation.compile_chunk(
        lambda x: x * 2.0, "a2c", jnp.ones(3), donate_argnums=0
    )
    x = jnp.ones(3)
    np.testing.assert_array_equal(compiled(x), 2.0)
    if jax.default_backend() == "cpu":
        assert x.is_deleted()


def test_final_evaluation_is_compiled_at_o1_only_when_heavy(monkeypatch):
    from pgjax import runner
    from pgjax.config import TrainConfig
    from pgjax.train import make_train

    trainer = make_train(TrainConfig(algo="a2c", num_envs=4, num_steps=2))
    heavy_flags = []

    def fake_compile_once(fn, *args, heavy=False):
        heavy_flags.append(heavy)
        return fn

    monkeypatch.setattr(runner, "compile_once", fake_compile_once)
    for rows, episodes in [(1, 128), (3, 128), (4, 128), (32, 16)]:
        keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(rows))
        abstract = jax.eval_shape(trainer.init_batch, keys)
        runner.compile_evaluation(trainer, abstract, episodes)
    assert heavy_flags == [False, False, True, True]
