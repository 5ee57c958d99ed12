"""Actor and critic networks (flax.linen), with separate parameter pytrees.

Each network is a torso and a head. The torso is an MLP on the flattened
observation (``--network mlp``), or for image observations ``[H, W, C]`` a
small CNN before the MLP (``--network cnn``): one 3×3 convolution with 16
filters and ReLU, as in MinAtar's reference agents (Young & Tian 2019,
https://arxiv.org/abs/1903.03176), whose output is flattened into the MLP;
it is computed as a Dense layer on 3×3 patches (:class:`PatchConv`).
``--network auto`` picks the CNN for observations with three axes.

The actor's head follows the action space: categorical logits for discrete
actions, or a Gaussian mean with a learned, state-independent log-std for
continuous ones. The critic outputs ``V(s)`` (one number) or ``Q(s, ·)`` (one
number per discrete action).

Initialisation follows common practice for on-policy methods (Andrychowicz et
al. 2020, https://arxiv.org/abs/2006.05990): orthogonal weights with gain √2 in
hidden layers, 0.01 for the policy head (near-uniform initial policy), 1 for the
value head, zero biases.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from pgjax.distributions import Categorical, DiagGaussian, Distribution
from pgjax.envs import EnvSpec

Array = jax.Array

NETWORKS = ("auto", "mlp", "cnn")

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": nn.relu,
    "elu": nn.elu,
    "gelu": nn.gelu,
    "silu": nn.silu,
}


def patches3x3(x: Array) -> Array:
    """The 3×3 neighbourhoods of an image, ``[B, H, W, C] → [B, H−2, W−2, 9C]``
    (ordered row, column, channel: a ``[3, 3, C, F]`` kernel reshaped to
    ``[9C, F]`` multiplies them as a valid convolution does)."""
    h, w = x.shape[1] - 2, x.shape[2] - 2
    return jnp.concatenate(
        [x[:, i : i + h, j : j + w, :] for i in range(3) for j in range(3)], axis=-1
    )


class PatchConv(nn.Module):
    """A valid 3×3 convolution with ``features`` filters, computed as a Dense
    layer on :func:`patches3x3`.

    The same function as ``nn.Conv(features, (3, 3), padding="VALID")``, in
    the form XLA's CPU backend runs well: A2C's update on MinAtar (256 × 16
    rows) took 879 ms with ``nn.Conv`` and 102 ms with this, whose
    derivatives are products and slices.
    """

    features: int
    dot_general: Callable | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return nn.Dense(
            self.features,
            kernel_init=nn.initializers.orthogonal(2**0.5),
            dot_general=self.dot_general or lax.dot_general,
        )(patches3x3(x))


class MLP(nn.Module):
    """``Dense → activation`` for each hidden width, then a linear output layer.

    ``dot_general``: the Dense layers' product (None: ``lax.dot_general``); a
    backend may give one with the same values and derivatives that its
    compiler runs faster (:class:`pgjax.backend.Backend`).
    """

    hidden: Sequence[int]
    out_dim: int
    activation: str = "tanh"
    out_scale: float = 1.0
    dot_general: Callable | None = None
    conv_features: int = 0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``x``: ``[B, *obs_shape]``; images ``[B, H, W, C]`` when
        ``conv_features`` > 0 (a 3×3 convolution with that many filters and ReLU
        first), anything else is flattened to ``[B, D]``."""
        act = ACTIVATIONS[self.activation]
        dot = self.dot_general or lax.dot_general
        if self.conv_features:
            x = nn.relu(PatchConv(self.conv_features, dot_general=dot)(x))
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.Dense(
                width,
                kernel_init=nn.initializers.orthogonal(2**0.5),
                dot_general=dot,
            )(x)
            x = act(x)
        return nn.Dense(
            self.out_dim,
            kernel_init=nn.initializers.orthogonal(self.out_scale),
            dot_general=dot,
        )(x)


class GaussianHead(nn.Module):
    """MLP mean and a learned log-std vector shared by all states."""

    hidden: Sequence[int]
    action_dim: int
    activation: str
    init_log_std: float
    dot_general: Callable | None = None
    conv_features: int = 0

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        mean = MLP(
            self.hidden,
            self.action_dim,
            self.activation,
            0.01,
            self.dot_general,
            self.conv_features,
        )(x)
        log_std = self.param(
            "log_std",
            nn.initializers.constant(self.init_log_std),
            (self.action_dim,),
        )
        return mean, log_std


@dataclasses.dataclass(frozen=True)
class Policy:
    """A policy network: ``init(key) → params`` and ``apply(params, obs) → dist``.

    ``obs`` is ``[..., *obs_shape]``; the distribution has batch shape ``[...]``.
    """

    module: nn.Module
    discrete: bool
    obs_shape: tuple[int, ...]

    def init(self, key: Array):
        return self.module.init(key, jnp.zeros((1, *self.obs_shape), jnp.float32))

    def apply(self, params, obs: Array) -> Distribution:
        batch = obs.shape[: obs.ndim - len(self.obs_shape)]
        out = self.module.apply(params, obs.reshape(-1, *self.obs_shape))
        unbatch = lambda x: x.reshape(*batch, *x.shape[1:])  # noqa: E731
        if self.discrete:
            return Categorical(logits=unbatch(out))
        mean, log_std = out
        mean = unbatch(mean)
        return DiagGaussian(mean=mean, log_std=jnp.broadcast_to(log_std, mean.shape))


@dataclasses.dataclass(frozen=True)
class Critic:
    """A critic network: ``apply(params, obs)`` gives ``[...]`` for V or
    ``[..., num_actions]`` for Q."""

    module: nn.Module
    obs_shape: tuple[int, ...]
    q_values: bool

    def init(self, key: Array):
        return self.module.init(key, jnp.zeros((1, *self.obs_shape), jnp.float32))

    def apply(self, params, obs: Array) -> Array:
        batch = obs.shape[: obs.ndim - len(self.obs_shape)]
        out = self.module.apply(params, obs.reshape(-1, *self.obs_shape))
        out = out.reshape(*batch, out.shape[-1])
        return out if self.q_values else out[..., 0]


#: Filters of the CNN torso's convolution.
CONV_FEATURES = 16


def resolve_network(network: str, obs_shape: tuple[int, ...]) -> str:
    """``"mlp"`` or ``"cnn"`` for ``network`` (``"auto"``: the CNN for images,
    observations with three axes ``[H, W, C]``).

    Raises:
      ValueError: an unknown name, or ``"cnn"`` for observations that are not
        images.
    """
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}; choose from {NETWORKS}")
    if network == "auto":
        return "cnn" if len(obs_shape) == 3 else "mlp"
    if network == "cnn" and len(obs_shape) != 3:
        raise ValueError(
            f"cnn needs image observations [H, W, C]; these have shape {obs_shape}"
        )
    return network


def _conv_features(network: str, obs_shape: tuple[int, ...]) -> int:
    return CONV_FEATURES if resolve_network(network, obs_shape) == "cnn" else 0


def make_policy(
    spec: EnvSpec,
    hidden: Sequence[int] = (64, 64),
    activation: str = "tanh",
    init_log_std: float = 0.0,
    dot_general: Callable | None = None,
    network: str = "auto",
) -> Policy:
    """The actor for ``spec``'s action space (``dot_general``: see :class:`MLP`;
    ``network``: see :func:`resolve_network`)."""
    hidden = tuple(hidden)
    conv = _conv_features(network, spec.obs_shape)
    if spec.discrete:
        module = MLP(hidden, spec.num_actions, activation, 0.01, dot_general, conv)
    else:
        action_dim = math.prod(spec.action_shape)
        module = GaussianHead(
            hidden, action_dim, activation, init_log_std, dot_general, conv
        )
    return Policy(module=module, discrete=spec.discrete, obs_shape=spec.obs_shape)


def make_critic(
    spec: EnvSpec,
    hidden: Sequence[int] = (64, 64),
    activation: str = "tanh",
    q_values: bool = False,
    dot_general: Callable | None = None,
    network: str = "auto",
) -> Critic:
    """A state-value critic, or an action-value critic (discrete actions only);
    ``dot_general``: see :class:`MLP`; ``network``: see :func:`resolve_network`."""
    if q_values and not spec.discrete:
        raise ValueError("an action-value (Q) critic needs a discrete action space")
    out_dim = spec.num_actions if q_values else 1
    conv = _conv_features(network, spec.obs_shape)
    module = MLP(tuple(hidden), out_dim, activation, 1.0, dot_general, conv)
    return Critic(module=module, obs_shape=spec.obs_shape, q_values=q_values)
