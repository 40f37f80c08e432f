"""Losses: masked MSE, GAN losses on logits, WGAN losses and the gradient penalty.

All losses are computed in float32 whatever the activation dtype. `GAN_KINDS` is the table the
training steps look a config's `loss.gan` up in: one `GanLoss` per kind, instead of if/else
branches in the discriminator loss, the adversarial term and the metrics.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """GLCIC's reconstruction loss ||M * (C(x, M) - x)||^2 with the paper's normalisation.

    The paper does not say how the norm is normalised, and its authors released inference code
    only. We follow GLCIC-PyTorch (`completion_network_loss`: `mse_loss(output * mask,
    input * mask)`): the squared error summed over the hole and divided by the number of *all*
    elements B*H*W*C, not the number of hole pixels. alpha = 0.0004 (the paper's) is used with this
    normalisation there too.

    pred, target: [B, H, W, C]; mask: [B, H, W, 1] with 1 inside holes.
    """
    pred = pred.astype(jnp.float32)
    target = target.astype(jnp.float32)
    diff = (pred - target) * mask.astype(jnp.float32)
    return jnp.mean(jnp.square(diff))


def d_bce_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """Discriminator BCE on logits: real -> 1, completed -> 0 (sum of the two batch means)."""
    real = optax.sigmoid_binary_cross_entropy(real_logits.astype(jnp.float32), 1.0)
    fake = optax.sigmoid_binary_cross_entropy(fake_logits.astype(jnp.float32), 0.0)
    return jnp.mean(real) + jnp.mean(fake)


def g_bce_loss(fake_logits: jax.Array) -> jax.Array:
    """Completion network's adversarial term: BCE(D(completed), real), on logits."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(fake_logits.astype(jnp.float32), 1.0))


def wgan_critic_loss(real_scores: jax.Array, fake_scores: jax.Array) -> jax.Array:
    """WGAN critic loss E[D(G(x))] - E[D(x)] (the gradient penalty is added separately)."""
    return jnp.mean(fake_scores.astype(jnp.float32)) - jnp.mean(real_scores.astype(jnp.float32))


def wgan_generator_loss(fake_scores: jax.Array) -> jax.Array:
    """WGAN generator loss -E[D(G(x))]."""
    return -jnp.mean(fake_scores.astype(jnp.float32))


def gradient_penalty(
    critic: Callable[[Any], jax.Array],
    real: Any,
    fake: Any,
    key: jax.Array,
) -> jax.Array:
    """WGAN-GP penalty E[(||grad_x D(x_hat)||_2 - 1)^2] on random interpolates (Gulrajani 2017).

    `real` and `fake` are arrays [B, ...] or matching pytrees of them (e.g. the context
    discriminator's `(global_image, local_crop)`): each sample's leaves are interpolated with the
    same epsilon, and the norm is taken over all of that sample's input gradients together.
    `critic` maps such an input to scores [B] or [B, 1] and must treat samples independently
    (no BatchNorm in train mode): per-sample gradients are then the gradient of the summed scores.
    """
    real = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), real)
    fake = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), fake)
    batch = jax.tree_util.tree_leaves(real)[0].shape[0]
    eps = jax.random.uniform(key, (batch,))

    def interpolate(r, f):
        e = eps.reshape((batch,) + (1,) * (r.ndim - 1))
        return e * r + (1.0 - e) * f

    x_hat = jax.tree_util.tree_map(interpolate, real, fake)
    grads = jax.grad(lambda x: jnp.sum(critic(x).astype(jnp.float32)))(x_hat)
    sq = sum(
        jnp.sum(jnp.square(g), axis=tuple(range(1, g.ndim)))
        for g in jax.tree_util.tree_leaves(grads)
    )
    norms = jnp.sqrt(sq + 1e-12)
    return jnp.mean(jnp.square(norms - 1.0))


def _identity(x: jax.Array) -> jax.Array:
    return x


@dataclasses.dataclass(frozen=True)
class GanLoss:
    """One GAN loss kind (`loss.gan`): what the steps need to know about it.

    Attributes:
      d_loss: `(real_logits, fake_logits) -> scalar`, D's (the critic's) loss without penalty.
      g_loss: `fake_logits -> scalar`, the completion network's adversarial term.
      score: what D's output means in metrics and sample grids: `sigmoid` (the probability of
        "real") for BCE, the raw critic score for WGAN.
      gradient_penalty: D's loss adds `loss.gp_weight` times `gradient_penalty`, and D's update
        reports `gp` and `wasserstein` (minus the critic loss: the Wasserstein estimate).
      alpha_weighs_d: phase 3 multiplies D's loss by alpha (GLCIC's BCE, see steps.py); the
        WGAN-GP critic's loss is never weighted (landscape report 4a).
    """

    d_loss: Callable[[jax.Array, jax.Array], jax.Array]
    g_loss: Callable[[jax.Array], jax.Array]
    score: Callable[[jax.Array], jax.Array]
    gradient_penalty: bool
    alpha_weighs_d: bool


# The names are config_lib.GAN_LOSSES (configs import no JAX, so they list the names only).
GAN_KINDS: dict[str, GanLoss] = {
    "bce": GanLoss(d_loss=d_bce_loss, g_loss=g_bce_loss, score=jax.nn.sigmoid,
                   gradient_penalty=False, alpha_weighs_d=True),
    "wgan-gp": GanLoss(d_loss=wgan_critic_loss, g_loss=wgan_generator_loss, score=_identity,
                       gradient_penalty=True, alpha_weighs_d=False),
}
