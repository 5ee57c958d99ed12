"""Algorithm internals: the cheap next-state values equal the full computation,
blocked gradients equal full ones, the critic fit takes the steps it says."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgjax import envs, parallel, rollout
from pgjax.algos import base, blocks
from pgjax.algos import critic as critic_lib
from pgjax.backend import IDENTITY, Backend, make_mesh
from pgjax.config import TrainConfig

# The envs of these tests split over the test process's two CPU devices, as a
# run on two devices splits them (pgjax.parallel).
SPLIT = Backend(mesh=make_mesh(jax.devices(), rows=1, num_envs=8))


@pytest.mark.parametrize(
    ("env_id", "num_steps"), [("CartPole-v1", 24), ("ProbeConstantReward-v0", 45)]
)
def test_next_state_values_match_full_pass(env_id, num_steps):
    spec = envs.make_env(env_id)
    policy, critic = base.make_networks(TrainConfig(), spec, IDENTITY)
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
    cheap = critic_lib.next_state_values(
        value_fn, batch, values, spec.max_episode_steps
    )
    full = value_fn(batch.next_obs)
    # Wherever the value is used (not after a termination) the two agree.
    used = ~np.asarray(batch.terminated)
    np.testing.assert_allclose(
        np.asarray(cheap)[used], np.asarray(full)[used], rtol=1e-5, atol=1e-5
    )


def test_num_blocks_tiles_rows():
    assert blocks.num_blocks(65536, 2048) == 32
    assert blocks.num_blocks(100, 0) == 1
    assert blocks.num_blocks(96, 40) == 3
    assert 96 % blocks.num_blocks(96, 40) == 0


def test_blocked_grad_equals_full_grad():
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 6, 3))
    w = jnp.arange(3.0)

    def loss(w, block):
        return jnp.mean(jnp.tanh(block @ w)) / count, jnp.zeros(())

    count = blocks.block_count(8, 6, 16, SPLIT)
    blocked, _ = blocks.blocked_grad(loss, w, x, 16, SPLIT)
    full = jax.grad(lambda w: jnp.mean(jnp.tanh(x @ w)))(w)
    np.testing.assert_allclose(blocked, full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("block_rows", [16, 0])
def test_blocked_grad_outputs_are_the_per_row_forward_pass(block_rows):
    """with_outputs hands back each row's output in [T, N] order, and the same
    gradient and sums as without it."""
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 6, 3))
    w = jnp.arange(3.0)
    count = blocks.block_count(8, 6, block_rows, SPLIT)

    def loss(w, block):
        y = jnp.tanh(block @ w)
        return jnp.mean(y) / count, jnp.sum(y)

    def loss_with_outputs(w, block):
        y = jnp.tanh(block @ w)
        return jnp.mean(y) / count, (jnp.sum(y), {"y": y, "twice": 2 * y})

    grads, total = blocks.blocked_grad(loss, w, x, block_rows, SPLIT)
    grads_o, total_o, outputs = blocks.blocked_grad(
        loss_with_outputs, w, x, block_rows, SPLIT, with_outputs=True
    )
    np.testing.assert_array_equal(grads_o, grads)
    np.testing.assert_array_equal(total_o, total)
    np.testing.assert_allclose(outputs["y"], jnp.tanh(x @ w), rtol=1e-6)
    assert outputs["twice"].shape == (8, 6)
    np.testing.assert_array_equal(outputs["twice"], 2 * outputs["y"])


@pytest.mark.parametrize("algo", ["npg", "trpo"])
def test_natural_phases_compose_to_the_update(algo, monkeypatch):
    """NPG/TRPO's update is the composition of its phases, bit for bit, and
    benchmark.py's programs that stop after each phase run those phases."""
    import importlib
    from pathlib import Path

    from pgjax.algos import natural_pg
    from pgjax.train import make_train

    # PopArt and advantage normalisation: every branch of the targets phase.
    config = TrainConfig(
        algo=algo,
        num_envs=8,
        num_steps=8,
        kl_envs=4,
        value_norm=True,
        normalize_advantages=True,
    )
    trainer = make_train(config, SPLIT)
    state = trainer.init(jax.random.PRNGKey(0))
    algorithm, hyper = trainer.algorithm, state.hyper
    _, batch, _ = algorithm.collect(state.agent, state.env, state.key, hyper)
    phases = natural_pg.make_natural_phases(
        config, trainer.spec, SPLIT, line_search=algo == "trpo"
    )

    def composed(agent, batch, key, hyper, progress):
        targets = phases.targets(agent, batch, hyper)
        gradient = phases.policy_gradient(agent.actor, batch, targets, hyper)
        step = phases.natural_step(agent.actor, batch, gradient, hyper)
        policy = phases.line_search(agent.actor, batch, targets, gradient, step, hyper)
        fit = phases.fit_critic(agent.critic_opt, batch, targets, key, hyper, progress)
        agent = agent.replace(
            actor=policy.actor,
            critic=fit.critic,
            critic_opt=fit.critic_opt,
            value_stats=targets.value_stats,
        )
        return agent, (gradient, step, policy, fit)

    key = jax.random.PRNGKey(1)
    # Compiled, as train.py runs the update.
    full, metrics = jax.jit(algorithm.update)(state.agent, batch, key, hyper, 0.5)
    agent, (gradient, step, policy, fit) = jax.jit(composed)(
        state.agent, batch, key, hyper, 0.5
    )
    assert float(policy.accepted) == 1.0  # the actor moved: a real comparison
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(agent), strict=True):
        np.testing.assert_array_equal(a, b)
    expected = {
        "policy_loss": -gradient.objective,
        "entropy": gradient.entropy,
        "value_loss": fit.value_loss,
        "kl": policy.kl,
        "cg_residual": step.info.cg_residual,
        "xfx": step.info.xfx,
        "step_norm": policy.step_fraction * step.info.step_norm,
    }
    for name, value in expected.items():
        np.testing.assert_array_equal(metrics[name], value, err_msg=name)

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "scripts"))
    benchmark = importlib.import_module("benchmark")
    prefixes = benchmark.natural_phase_prefixes(trainer)
    names = ["policy_gradient", "cg_solve", "critic_fit"]
    if algo == "trpo":
        names.insert(2, "line_search")
    assert list(prefixes) == names
    # The checksum of the phase that stops before the critic's fit depends on
    # its output; the agent is left as it was.
    before_fit = prefixes[names[-2]]
    unchanged, checksum = jax.jit(before_fit)(state.agent, batch, key, hyper, 0.5)
    expected = policy.actor if algo == "trpo" else step.step
    np.testing.assert_allclose(checksum, base.global_norm(expected), rtol=1e-6)
    leaves = zip(jax.tree.leaves(unchanged), jax.tree.leaves(state.agent), strict=True)
    for a, b in leaves:
        np.testing.assert_array_equal(a, b)


def _regression_problem():
    """A linear critic ``V(x) = w·x + b`` and targets on ``[T=3, N=8]`` rows."""
    key_x, key_y = jax.random.split(jax.random.PRNGKey(4))
    obs = jax.random.normal(key_x, (3, 8, 2))
    targets = jax.random.normal(key_y, (3, 8))
    params = {"w": jnp.array([0.5, -1.0]), "b": jnp.zeros(())}

    def loss_fn(p, block):
        block_obs, block_targets = block
        return jnp.mean(jnp.square(block_obs @ p["w"] + p["b"] - block_targets))

    return params, (obs, targets), loss_fn


# block_rows 8 splits each minibatch into cache blocks whose losses and
# gradients must add up to the minibatch's (24 rows: 3 blocks; 6 rows: 3).
@pytest.mark.parametrize("block_rows", [0, 8])
def test_fit_critic_one_minibatch_is_one_clipped_adam_step(block_rows):
    params, data, loss_fn = _regression_problem()
    lr, clip = jnp.asarray(0.1), jnp.asarray(0.5)
    fitted, _, loss, grad_norm = critic_lib.fit_critic(
        loss_fn, params, base.ADAM.init(params), data, jax.random.PRNGKey(0),
        lr, clip, epochs=1, minibatches=1, block_rows=block_rows, backend=SPLIT,
    )  # fmt: skip
    assert grad_norm > clip  # the step below is a clipped one
    obs, targets = data
    grads = jax.grad(loss_fn)(params, (obs.reshape(24, 2), targets.reshape(24)))
    np.testing.assert_allclose(grad_norm, base.global_norm(grads), rtol=1e-5)
    grads, _ = base.clip_by_global_norm(grads, clip)
    expected, _ = base.adam_step(params, base.ADAM.init(params), grads, lr)
    np.testing.assert_allclose(loss, loss_fn(params, data), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(fitted), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _env_groups(order, minibatches):
    """The envs of each minibatch of one epoch of :func:`critic_lib.fit_critic`:
    minibatch ``m`` holds the envs at positions ``j ≡ m (mod M)`` of the
    epoch's order (over global env indices, whatever the devices)."""
    return [order[m::minibatches] for m in range(minibatches)]


def _epoch_orders(key, epochs, envs, minibatches):
    """Each epoch's env order: in order first; then, within each of the
    ``G`` groups of consecutive envs (:func:`critic_lib.shuffle_groups`), each
    env gets two random uint32 per later epoch (``bits(key, (epochs - 1, G,
    N / G, 2))``) and the group's envs go in the order of theirs."""
    groups = critic_lib.shuffle_groups(envs, minibatches)
    size = envs // groups
    orders = [np.arange(envs)]
    if epochs > 1:
        bits = np.asarray(jax.random.bits(key, (epochs - 1, groups, size, 2)))
        for epoch_bits in bits:
            orders.append(
                np.concatenate(
                    [
                        g * size + np.lexsort((b[:, 1], b[:, 0]))
                        for g, b in enumerate(epoch_bits)
                    ]
                )
            )
    return orders


@pytest.mark.parametrize("block_rows", [0, 2])
def test_fit_critic_steps_over_disjoint_env_groups(block_rows):
    # 3 epochs × 4 minibatches = 12 Adam steps, each on all T steps of 2 of
    # the 8 envs, every env once per epoch: the first epoch in order, the
    # others shuffled (on each device, its own envs: pgjax.parallel). Replay
    # them by hand (clipped to 0.5).
    params, (obs, targets), loss_fn = _regression_problem()
    lr, clip, key = jnp.asarray(0.05), jnp.asarray(0.5), jax.random.PRNGKey(7)
    fitted, _, _, _ = critic_lib.fit_critic(
        loss_fn, params, base.ADAM.init(params), (obs, targets), key,
        lr, clip, epochs=3, minibatches=4, block_rows=block_rows,
        backend=SPLIT,
    )  # fmt: skip
    expected, opt_state = params, base.ADAM.init(params)
    epochs = [_env_groups(order, 4) for order in _epoch_orders(key, 3, 8, 4)]
    assert not all(
        np.array_equal(a, b) for a, b in zip(epochs[1], epochs[2], strict=True)
    )
    for groups in epochs:
        assert sorted(np.concatenate(groups)) == list(range(8))
        for group in groups:
            block = (obs[:, group].reshape(6, 2), targets[:, group].reshape(6))
            grads, _ = base.clip_by_global_norm(
                jax.grad(loss_fn)(expected, block), clip
            )
            expected, opt_state = base.adam_step(expected, opt_state, grads, lr)
    for a, b in zip(jax.tree.leaves(fitted), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    before = loss_fn(params, (obs, targets))
    assert loss_fn(fitted, (obs, targets)) < before


def test_fit_critic_single_epoch_takes_env_groups_in_order():
    # One epoch × 4 minibatches: fixed groups of 2 envs, unshuffled
    # (exchangeable envs make that a random split already), whatever the key.
    params, (obs, targets), loss_fn = _regression_problem()
    lr, clip = jnp.asarray(0.05), jnp.asarray(0.5)
    fits = [
        critic_lib.fit_critic(
            loss_fn, params, base.ADAM.init(params), (obs, targets),
            jax.random.PRNGKey(seed), lr, clip, epochs=1, minibatches=4,
            block_rows=0, backend=SPLIT,
        )[0]
        for seed in (0, 1)
    ]  # fmt: skip
    expected, opt_state = params, base.ADAM.init(params)
    (order,) = _epoch_orders(jax.random.PRNGKey(0), 1, 8, 4)
    for group in _env_groups(order, 4):
        block = (obs[:, group].reshape(6, 2), targets[:, group].reshape(6))
        grads, _ = base.clip_by_global_norm(jax.grad(loss_fn)(expected, block), clip)
        expected, opt_state = base.adam_step(expected, opt_state, grads, lr)
    for fitted in fits:
        for a, b in zip(
            jax.tree.leaves(fitted), jax.tree.leaves(expected), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fit_critic_traces_its_minibatch_step_once():
    # All epochs run in one scan (the first one's order picked by a branch),
    # so the step's loss, gradient and Adam step appear once in the program,
    # however many epochs there are.
    params, data, loss_fn = _regression_problem()
    traced = []

    def counted_loss(p, block):
        traced.append(1)
        return loss_fn(p, block)

    for epochs in (1, 3):
        traced.clear()
        jax.make_jaxpr(
            lambda p, d, e=epochs: critic_lib.fit_critic(
                counted_loss, p, base.ADAM.init(p), d, jax.random.PRNGKey(0),
                jnp.asarray(0.05), jnp.asarray(0.5), epochs=e, minibatches=4,
                block_rows=0, backend=SPLIT,
            )
        )(params, data)  # fmt: skip
        assert len(traced) == 1, epochs


def test_valid_rows_lists_the_valid_flat_rows_first():
    valid = jnp.array([[True, False, True], [False, True, False]])
    index, count = blocks.valid_rows(valid)
    assert int(count) == 3
    np.testing.assert_array_equal(index, [0, 2, 4, 0, 0, 0])


@pytest.mark.parametrize("block_rows", [0, 4, 7, 1000])
def test_compacted_grad_and_map_equal_the_masked_full_pass(block_rows):
    # Episodes of different lengths, all starting at row 0 (a REINFORCE
    # buffer): only the 33 valid rows are computed, in blocks of block_rows
    # (0: one block of all 80 rows; 7 does not divide 33; 1000 > 80).
    lengths = np.array([10, 7, 5, 5, 3, 2, 1, 0])
    valid = jnp.asarray(np.arange(10)[:, None] < lengths[None, :])  # [T=10, N=8]
    x = jax.random.normal(jax.random.PRNGKey(0), (10, 8, 3))
    w = jnp.array([0.3, -0.2, 0.5])

    def loss(w, block):
        block_x, in_range = block
        return jnp.sum(in_range * jnp.tanh(block_x @ w)), jnp.sum(in_range)

    grads, rows = blocks.compacted_grad(loss, w, x, valid, block_rows, SPLIT)
    full = jax.grad(lambda w: jnp.sum(valid * jnp.tanh(x @ w)))(w)
    np.testing.assert_allclose(grads, full, rtol=1e-5, atol=1e-6)
    assert int(rows) == 33  # every valid row once, no padding row
    values = blocks.compacted_map(
        lambda b: jnp.tanh(b @ w), x, valid, block_rows, SPLIT
    )
    expected = np.where(np.asarray(valid), np.tanh(np.asarray(x @ w)), 0.0)
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)


def test_compacted_grad_of_no_valid_row_is_zero():
    valid = jnp.zeros((4, 2), bool)
    x = jnp.ones((4, 2, 3))

    def loss(w, block):
        return jnp.sum(block[1] * (block[0] @ w)), jnp.zeros(())

    grads, _ = blocks.compacted_grad(loss, jnp.ones(3), x, valid, 2, SPLIT)
    np.testing.assert_array_equal(grads, 0.0)
    values = blocks.compacted_map(lambda b: b @ jnp.ones(3), x, valid, 2, SPLIT)
    np.testing.assert_array_equal(values, 0.0)


def _while_loops(jaxpr):
    """Every ``while`` equation of ``jaxpr``, nested ones included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "while":
            yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _while_loops(inner)


def test_compacted_passes_under_a_vmap_over_seeds_share_one_block_loop():
    # Two seeds with 33 and 9 valid rows: named parallel.SEEDS, the block loop
    # runs to the larger count for both (its counter unbatched, so vmap does not
    # select the [T·N] output at every block), and each seed's result is its own.
    lengths = jnp.array([[10, 7, 5, 5, 3, 2, 1, 0], [1, 2, 0, 1, 3, 0, 1, 1]])
    valid = jnp.arange(10)[None, :, None] < lengths[:, None, :]  # [S=2, T, N]
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 10, 8, 3))
    w = jnp.array([0.3, -0.2, 0.5])

    def loss(w, block):
        block_x, in_range = block
        return jnp.sum(in_range * jnp.tanh(block_x @ w)), jnp.sum(in_range)

    def passes(x, valid):
        grads, _ = blocks.compacted_grad(loss, w, x, valid, 4, SPLIT)
        return grads, blocks.compacted_map(
            lambda b: jnp.tanh(b @ w), x, valid, 4, SPLIT
        )

    shared = jax.vmap(passes, axis_name=parallel.SEEDS)
    loops = list(_while_loops(jax.make_jaxpr(shared)(x, valid).jaxpr))
    assert len(loops) == 2
    for loop in loops:
        assert loop.outvars[0].aval.shape == ()  # the block counter
    grads, values = jax.jit(shared)(x, valid)
    for seed in range(2):
        alone = passes(x[seed], valid[seed])
        np.testing.assert_allclose(grads[seed], alone[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(values[seed], alone[1], rtol=1e-5, atol=1e-6)


def test_global_norm_over_leaves_of_any_shape():
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.array([3.0]), "s": 2.0}
    expected = np.sqrt(np.sum(np.arange(6.0) ** 2) + 9.0 + 4.0)
    np.testing.assert_allclose(base.global_norm(tree), expected, rtol=1e-6)
    np.testing.assert_allclose(base.global_norm(jnp.array([3.0, 4.0])), 5.0)
    assert float(base.global_norm({})) == 0.0
    grads, norm = base.clip_by_global_norm(tree, jnp.asarray(1.0))
    np.testing.assert_allclose(norm, expected, rtol=1e-6)
    np.testing.assert_allclose(base.global_norm(grads), 1.0, rtol=1e-5)
