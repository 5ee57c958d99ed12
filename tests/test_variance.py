"""The estimator variance lab (pgjax.variance, scripts/variance.py).

Exact answers: per-step gradients summed in Python loops, returns and GAE by
loops, and the exact gradient of a tabular MDP (pgjax.tabular) as the mean
every unbiased estimator must reach within its sampling error.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_CONFIG, assert_one_line_error, load_script, run_main
from jax.flatten_util import ravel_pytree

from pgjax import envs, rollout, runner, tabular, variance
from pgjax.config import ConfigError
from pgjax.networks import make_policy

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.usefixtures("compilation_cache")


script = load_script("variance")


def corridor_spec() -> envs.EnvSpec:
    """The short corridor with one-hot observations: the policy sees the state."""
    env = tabular.TabularEnv(tabular.short_corridor(), env_id="OneHotCorridor")
    return variance.tabular_spec(env)


def corridor_lab(episodes_per_batch: int, batches: int) -> variance.LabResult:
    spec = corridor_spec()
    policy = make_policy(spec, (8,))
    params = policy.init(jax.random.PRNGKey(0))
    config = variance.LabConfig(
        batches=batches,
        episodes_per_batch=episodes_per_batch,
        gamma=1.0,
        lambdas=(0.0, 0.9, 1.0),
        fit_episodes=256,
        critic_hidden=(16,),
        critic_steps=300,
        chunk=16,
    )
    return variance.compare_estimators(
        spec, policy, params, jax.random.PRNGKey(1), config
    )


@pytest.fixture(scope="module")
def corridor() -> variance.LabResult:
    """400 batches of 8 episodes on the one-hot corridor, exact reference."""
    return corridor_lab(episodes_per_batch=8, batches=400)


# ---------------------------------------------------------------------------
# Exact identities.


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_weighted_score_sums_equal_sums_of_per_step_gradients(env_id):
    spec = envs.make_env(env_id)
    policy = make_policy(spec, (5,))
    params = policy.init(jax.random.PRNGKey(0))
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    rows = 7
    obs = jax.random.normal(keys[0], (rows, *spec.obs_shape))
    actions = policy.apply(params, obs).sample(keys[1])
    weights = jax.random.normal(keys[2], (3, rows))
    theta, log_prob = variance.flat_log_prob(policy, params)
    sums = variance.weighted_score_sums(log_prob, theta, obs, actions, weights)

    step_grad = score_fn(policy, params)
    per_step = [step_grad(obs[r], actions[r]) for r in range(rows)]
    expected = [
        sum(float(weights[k, r]) * per_step[r] for r in range(rows)) for k in range(3)
    ]
    np.testing.assert_allclose(sums, np.stack(expected), rtol=1e-5, atol=1e-6)


def score_fn(policy, params):
    """``(obs, action) ↦ ∇_θ log π(action|obs)`` of one step, flat (numpy)."""

    @jax.jit
    def grad(obs, action):
        one = jax.grad(lambda p: policy.apply(p, obs).log_prob(action))(params)
        return ravel_pytree(one)[0]

    return lambda obs, action: np.asarray(grad(obs, action))


def handmade_batch() -> rollout.Transition:
    """Two episodes ``[T=5, n=2]``: the first terminates after 3 steps (then
    padding), the second is truncated after 5."""
    reward = jnp.array([[1.0, 2.0], [0.5, -1.0], [2.0, 0.0], [9.0, 1.0], [9.0, 3.0]])
    valid = jnp.array([[1, 1], [1, 1], [1, 1], [0, 1], [0, 1]], bool)
    terminated = jnp.zeros((5, 2), bool).at[2, 0].set(True)
    truncated = jnp.zeros((5, 2), bool).at[4, 1].set(True)
    zeros = jnp.zeros((5, 2))
    return rollout.Transition(
        obs=jnp.arange(10.0).reshape(5, 2, 1),
        action=jnp.array([[0, 1], [1, 1], [0, 0], [1, 0], [1, 1]]),
        log_prob=zeros,
        reward=reward,
        terminated=terminated,
        truncated=truncated,
        next_obs=jnp.zeros((5, 2, 1)),
        completed_return=zeros,
        completed_length=zeros,
        valid=valid,
    )


def loop_terms(batch, gamma, discount_steps, shift):
    """Reward-to-go, step weights and whole-return weights by Python loops."""
    rewards = np.asarray(batch.reward, np.float64) + shift
    valid = np.asarray(batch.valid)
    to_go, c, whole = np.zeros((3, *rewards.shape))
    for i in range(rewards.shape[1]):
        steps = [t for t in range(rewards.shape[0]) if valid[t, i]]
        ret = sum(gamma**t * rewards[t, i] for t in steps)
        for t in steps:
            to_go[t, i] = sum(gamma ** (u - t) * rewards[u, i] for u in steps if u >= t)
            c[t, i] = gamma**t if discount_steps else 1.0
            past = sum(gamma**u * rewards[u, i] for u in steps if u < t)
            whole[t, i] = c[t, i] * to_go[t, i] + past
            if discount_steps:
                assert abs(whole[t, i] - ret) < 1e-9  # Williams' R(τ)
    return to_go, c, whole


@pytest.mark.parametrize("discount_steps", [True, False])
def test_episode_terms_match_loops(discount_steps):
    batch = handmade_batch()
    terms = variance.episode_terms(batch, 0.9, discount_steps, reward_shift=0.5)
    to_go, c, whole = loop_terms(batch, 0.9, discount_steps, 0.5)
    valid = np.asarray(batch.valid)
    np.testing.assert_allclose(np.where(valid, terms.to_go, 0), to_go, rtol=1e-6)
    np.testing.assert_allclose(np.where(valid, terms.step_weight, 0), c, rtol=1e-6)
    np.testing.assert_allclose(terms.whole, whole, rtol=1e-6)


def test_batch_estimates_match_per_step_loop():
    """Every estimator of one batch against ``(1/n)·Σ_i Σ_t c_t ψ_t Â_t`` with
    ``Â`` computed by loops and ``ψ`` by one ``jax.grad`` per step."""
    spec = corridor_spec()
    policy = make_policy(spec, (4,))
    params = policy.init(jax.random.PRNGKey(0))
    config = variance.LabConfig(gamma=0.9, lambdas=(0.0, 0.5), critic_hidden=(3,))
    lab, theta = variance._make_lab(spec, policy, params, config)
    batch = jax.tree.map(
        lambda x: x[0],
        variance.collect_batches(spec, policy, params, jax.random.PRNGKey(2), 1, 3),
    )
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    critics = variance.FittedCritics(
        value_params=lab.value_net.init(keys[0]),
        value_loc=jnp.asarray(-2.0),
        value_scale=jnp.asarray(3.0),
        value_explained=jnp.zeros(()),
        q_weights=jax.random.normal(keys[1], (2, 5)),
        compatible_weights=jax.random.normal(keys[2], theta.shape),
        mean_return=jnp.asarray(-4.0),
        b_star=jnp.asarray(-3.0),
        b_star_return=jnp.asarray(-5.0),
    )
    rows = int(np.sum(batch.valid))
    got = jax.jit(lambda *a: variance.batch_estimates(lab, *a, rows))(
        theta, critics, batch
    )
    expected = loop_estimates(lab, params, critics, batch)
    for k, name in enumerate(lab.names):
        np.testing.assert_allclose(got[k], expected[name], rtol=2e-4, atol=1e-5)


def loop_estimates(lab, params, critics, batch) -> dict[str, np.ndarray]:
    gamma, lambdas = lab.config.gamma, lab.config.lambdas
    to_go, c, whole = loop_terms(batch, gamma, True, 0.0)
    valid = np.asarray(batch.valid)
    rewards = np.asarray(batch.reward)
    n = valid.shape[1]
    value = np.asarray(lab.values(critics, batch.obs))
    q_all = np.asarray(batch.obs) @ np.asarray(critics.q_weights)[:, :-1].T
    q_all = q_all + np.asarray(critics.q_weights)[:, -1]
    probs = np.asarray(lab.policy.apply(params, batch.obs).probs())
    mean_q = to_go[valid].mean()
    score = score_fn(lab.policy, params)
    sums = {}
    for i in range(n):
        steps = [t for t in range(valid.shape[0]) if valid[t, i]]
        others = [(t, j) for j in range(n) if j != i for t in range(valid.shape[0])]
        loo = np.mean([to_go[t, j] for t, j in others if valid[t, j]])
        for t in steps:
            psi = score(batch.obs[t, i], batch.action[t, i])
            a = int(batch.action[t, i])
            weights = {
                "return": whole[t, i],
                "return-const": whole[t, i] - float(critics.mean_return),
                "return-bstar": whole[t, i] - float(critics.b_star_return),
                "rtg": c[t, i] * to_go[t, i],
                "rtg-const": c[t, i] * (to_go[t, i] - float(critics.mean_return)),
                "rtg-batch-mean": c[t, i] * (to_go[t, i] - mean_q),
                "rtg-loo-mean": c[t, i] * (to_go[t, i] - loo),
                "rtg-bstar": c[t, i] * (to_go[t, i] - float(critics.b_star)),
                "rtg-V": c[t, i] * (to_go[t, i] - value[t, i]),
                "usual-rtg-V": to_go[t, i] - value[t, i],
                "q-critic": c[t, i] * q_all[t, i, a],
                "q-advantage": c[t, i] * (q_all[t, i, a] - probs[t, i] @ q_all[t, i]),
                "compatible": c[t, i] * psi @ np.asarray(critics.compatible_weights),
            }
            for lam in lambdas:
                adv, scale = 0.0, 1.0
                for u in steps[steps.index(t) :]:
                    nxt = value[u + 1, i] if u + 1 in steps else 0.0
                    adv += scale * (rewards[u, i] + gamma * nxt - value[u, i])
                    scale *= gamma * lam
                weights[f"gae-{lam:g}"] = c[t, i] * adv
            for name, w in weights.items():
                sums[name] = sums.get(name, 0.0) + w * psi
    return {name: total / n for name, total in sums.items()}


# ---------------------------------------------------------------------------
# Statistics against the exact gradient of the one-hot short corridor.


def test_the_reference_is_the_exact_gradient(corridor):
    assert corridor.reference_kind == "exact"
    spec = corridor_spec()
    policy = make_policy(spec, (8,))
    params = policy.init(jax.random.PRNGKey(0))
    exact = jax.jit(
        lambda p: tabular.exact_gradient(
            tabular.short_corridor(), lambda q: policy.apply(q, jnp.eye(4)).probs(), p
        )
    )(params)
    np.testing.assert_allclose(corridor.reference, ravel_pytree(exact)[0], rtol=1e-5)


def test_unbiased_estimators_reach_the_exact_gradient(corridor):
    """Each parameter's mean within 4.5 sample standard errors of ``∇J``; the
    biased GAE(0) and batch mean fail the same check."""
    reference = np.asarray(corridor.reference)
    z = {
        name: np.max(
            np.abs(corridor.stats.mean[k] - reference)
            / np.maximum(corridor.stats.std_error[k], 1e-9)
        )
        for k, name in enumerate(corridor.names)
    }
    unbiased = [name for name in corridor.names if variance.is_unbiased(name)]
    assert len(unbiased) == 9
    for name in unbiased:
        assert z[name] < 4.5, (name, z[name])
        row = corridor.row(name)
        assert row["bias"] < 3 * row["noise_floor"], row
    assert z["gae-0"] > 4.5 and z["rtg-batch-mean"] > 4.5


def test_gae_one_is_reward_to_go_minus_value(corridor):
    k1, k2 = corridor.index("gae-1"), corridor.index("rtg-V")
    np.testing.assert_allclose(
        corridor.stats.mean[k1], corridor.stats.mean[k2], rtol=1e-4, atol=1e-4
    )


def test_variance_falls_with_causality_and_a_value_baseline(corridor):
    """Every reward is −1: the rewards before ``t`` add ``−t`` to every weight
    (zero mean, pure noise), and the remaining episode length ``Q̂_t`` varies
    around ``V(s_t)``."""
    var = {name: corridor.row(name)["variance"] for name in corridor.names}
    assert var["return"] > 2 * var["rtg"] > 4 * var["rtg-V"]
    # GAE trades variance for bias as λ falls.
    assert var["gae-1"] > var["gae-0.9"] > var["gae-0"]


def test_optimal_constant_beats_the_mean_return(corridor):
    row = corridor.critics
    assert abs(float(row.b_star_return) - float(row.mean_return)) > 3
    var = {name: corridor.row(name)["variance"] for name in corridor.names}
    assert var["return-bstar"] < 0.8 * var["return-const"]


def test_batch_mean_baseline_bias_shrinks_with_batch_size(corridor):
    """The batch mean includes the episode's own return: bias O(1/N)."""
    single = corridor_lab(episodes_per_batch=1, batches=800).row("rtg-batch-mean")
    eight = corridor.row("rtg-batch-mean")
    assert single["bias"] > 5 * single["noise_floor"]
    assert single["bias"] > 2.5 * eight["bias"]


def test_lab_config_errors_name_the_flag():
    spec = corridor_spec()
    policy = make_policy(spec, (4,))
    params = policy.init(jax.random.PRNGKey(0))
    for kwargs, flag in [
        (dict(batches=1), "--batches"),
        (dict(episodes_per_batch=0), "--episodes-per-batch"),
        (dict(gamma=0.0), "--gamma"),
        (dict(lambdas=(0.5, 1.5)), "--lambdas"),
        (dict(compatible_ridge=-1.0), "--compatible-ridge"),
        (dict(reward_shift=float("nan")), "--reward-shift"),
    ]:
        config = variance.LabConfig(**kwargs)
        with pytest.raises(ConfigError) as error:
            variance.compare_estimators(
                spec, policy, params, jax.random.PRNGKey(0), config
            )
        assert error.value.flag == flag


# ---------------------------------------------------------------------------
# The script.


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("variance") / "run"
    runner.run(TINY_CONFIG, run_dir, progress=False)
    return run_dir


def test_script_on_a_run_folder_writes_json_and_figure(trained, tmp_path, capsys):
    out = tmp_path / "lab.json"
    argv = [
        *("--run-dir", str(trained), "--seed-index", "1"),
        *("--batches", "6", "--episodes-per-batch", "2", "--lambdas", "0,1"),
        *("--fit-episodes", "16", "--reference-episodes", "16"),
        *("--critic-steps", "20", "--out", str(out)),
    ]
    code, stdout, err = run_main(script.main, argv, capsys)
    assert code == 0, err
    summary = json.loads(out.read_text())
    assert summary["env"] == "CartPole-v1" and summary["reference"] == "sampled"
    assert summary["config"]["gamma"] == TINY_CONFIG.gamma
    assert summary["policy"]["seed_index"] == 1
    names = [row["estimator"] for row in summary["estimators"]]
    assert names == list(variance.estimator_names((0.0, 1.0), True, usual=True))
    assert "| rtg-V |" in stdout and summary["command"].startswith("python scripts")
    assert out.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--batches", "1"], "--batches"),
        (["--episodes-per-batch", "x"], "--episodes-per-batch"),
        (["--env", "NoSuchEnv-v0"], "--env"),
        (["--lambdas", "0,2"], "--lambdas"),
        (["--hidden", "0"], "--hidden"),
        (["--activation", "cosine"], "--activation"),
        (["--out", "table.txt"], "--out"),
        (["--checkpoint", "5"], "--checkpoint"),
        (["--run-dir", "/nonexistent/run"], "--run-dir"),
    ],
)
def test_script_bad_input_is_one_line(argv, flag, capsys):
    code, _, err = run_main(script.main, ["--env", "ShortCorridor-v0", *argv], capsys)
    assert_one_line_error(code, err, flag)


def test_script_names_a_wrong_seed_index_and_env(trained, capsys):
    code, _, err = run_main(
        script.main, ["--run-dir", str(trained), "--seed-index", "7"], capsys
    )
    assert_one_line_error(code, err, "--seed-index")
    code, _, err = run_main(
        script.main, ["--run-dir", str(trained), "--env", "Acrobot-v1"], capsys
    )
    assert_one_line_error(code, err, "--env")
