"""Losses against numpy references and analytic values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glcic_jax import losses


def np_softplus(x):
    return np.logaddexp(0.0, x)  # log(1 + e^x), stable


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_masked_mse_matches_torch_mse_criterion():
    rng = np.random.default_rng(0)
    b, h, w, c = 3, 8, 10, 3
    pred = rng.uniform(0, 1, (b, h, w, c)).astype(np.float32)
    target = rng.uniform(0, 1, (b, h, w, c)).astype(np.float32)
    mask = (rng.uniform(0, 1, (b, h, w, 1)) < 0.3).astype(np.float32)
    got = float(losses.masked_mse(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask)))
    diff = (pred.astype(np.float64) - target) * mask
    expected = np.sum(diff ** 2) / (b * h * w * c)  # summed over the hole / all elements
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # Not the per-hole-pixel mean, which would be larger by the inverse hole fraction.
    per_hole = np.sum(diff ** 2) / (mask.sum() * c)
    assert not np.isclose(got, per_hole, rtol=1e-3)


def test_masked_mse_ignores_pixels_outside_the_hole():
    rng = np.random.default_rng(1)
    target = jnp.asarray(rng.uniform(0, 1, (2, 6, 6, 3)), jnp.float32)
    mask = jnp.zeros((2, 6, 6, 1)).at[:, 2:4, 1:5].set(1.0)
    pred = target + 10.0 * (1.0 - mask)  # wrong only outside the hole
    assert float(losses.masked_mse(pred, target, mask)) == 0.0
    pred = target + 0.5 * mask  # off by 0.5 inside: 2*2*4 pixels * 3 channels * 0.25 / 216
    np.testing.assert_allclose(float(losses.masked_mse(pred, target, mask)),
                               2 * 8 * 3 * 0.25 / (2 * 6 * 6 * 3), rtol=1e-6)


def test_masked_mse_bfloat16_inputs_give_float32():
    x = jnp.full((1, 4, 4, 3), 0.5, jnp.bfloat16)
    out = losses.masked_mse(x, jnp.zeros((1, 4, 4, 3), jnp.bfloat16), jnp.ones((1, 4, 4, 1)))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(float(out), 0.25, rtol=1e-6)


REAL = np.array([[2.0], [-1.0], [0.5], [3.0]], np.float32)
FAKE = np.array([[-3.0], [0.0], [1.5], [-0.25]], np.float32)


def test_d_bce_loss_matches_formula():
    got = float(losses.d_bce_loss(jnp.asarray(REAL), jnp.asarray(FAKE)))
    r, f = REAL.astype(np.float64), FAKE.astype(np.float64)
    expected = np.mean(-np.log(np_sigmoid(r))) + np.mean(-np.log(1.0 - np_sigmoid(f)))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_g_bce_loss_matches_formula():
    got = float(losses.g_bce_loss(jnp.asarray(FAKE)))
    expected = np.mean(-np.log(np_sigmoid(FAKE.astype(np.float64))))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # The non-saturating generator loss differs from the minimax -log(1 - D).
    assert not np.isclose(got, np.mean(np.log(1.0 - np_sigmoid(FAKE.astype(np.float64)))))


@pytest.mark.parametrize("big", [100.0, 1e4])
def test_bce_losses_stable_for_large_logits(big):
    pos = jnp.full((4, 1), big)
    neg = jnp.full((4, 1), -big)
    # Confident and right: zero loss; confident and wrong: |logit| (softplus), never inf/nan.
    right = float(losses.d_bce_loss(pos, neg))
    wrong = float(losses.d_bce_loss(neg, pos))
    assert np.isfinite(right) and np.isfinite(wrong)
    np.testing.assert_allclose(right, 2 * np_softplus(-big), atol=1e-6)
    np.testing.assert_allclose(wrong, 2 * big, rtol=1e-6)
    np.testing.assert_allclose(float(losses.g_bce_loss(neg)), big, rtol=1e-6)
    np.testing.assert_allclose(float(losses.g_bce_loss(pos)), 0.0, atol=1e-6)
    # Gradients stay finite as well (they saturate at +-1 / batch).
    grad = jax.grad(lambda r, f: losses.d_bce_loss(r, f), argnums=(0, 1))(neg, pos)
    for g in grad:
        assert np.all(np.isfinite(np.asarray(g)))
        np.testing.assert_allclose(np.abs(np.asarray(g)), 0.25, rtol=1e-6)


def test_wgan_losses():
    real = jnp.asarray(REAL)
    fake = jnp.asarray(FAKE)
    np.testing.assert_allclose(float(losses.wgan_critic_loss(real, fake)),
                               FAKE.mean() - REAL.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(losses.wgan_generator_loss(fake)), -FAKE.mean(), rtol=1e-6)
    # Scores of shape [B] work the same.
    np.testing.assert_allclose(float(losses.wgan_critic_loss(real[:, 0], fake[:, 0])),
                               FAKE.mean() - REAL.mean(), rtol=1e-6)


def _linear_critic(w):
    """D(x) = sum(w * x) per sample, whose input gradient is w everywhere."""
    return lambda x: jnp.sum(w * x, axis=tuple(range(1, x.ndim)))


@pytest.mark.parametrize("norm_w", [0.3, 1.0, 2.5])
def test_gradient_penalty_linear_critic(norm_w):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 4, 3)).astype(np.float32)
    w = jnp.asarray(w / np.linalg.norm(w) * norm_w)
    real = jnp.asarray(rng.uniform(size=(6, 5, 4, 3)), jnp.float32)
    fake = jnp.asarray(rng.uniform(size=(6, 5, 4, 3)), jnp.float32)
    gp = float(losses.gradient_penalty(_linear_critic(w), real, fake, jax.random.PRNGKey(0)))
    np.testing.assert_allclose(gp, (norm_w - 1.0) ** 2, rtol=1e-4, atol=1e-6)
    # Scores of shape [B, 1] give the same penalty.
    def critic_2d(x):
        return _linear_critic(w)(x)[:, None]

    gp2 = float(losses.gradient_penalty(critic_2d, real, fake, jax.random.PRNGKey(0)))
    np.testing.assert_allclose(gp2, gp, rtol=1e-6)


def test_gradient_penalty_pytree_inputs():
    """(global image, local crop) pairs: the norm runs over all leaves of a sample."""
    rng = np.random.default_rng(1)
    w1 = jnp.asarray(rng.normal(size=(8, 8, 3)) * 0.1, jnp.float32)
    w2 = jnp.asarray(rng.normal(size=(4, 4, 3)) * 0.3, jnp.float32)
    expected_norm = np.sqrt(np.sum(np.square(w1)) + np.sum(np.square(w2)))

    def critic(inputs):
        g, loc = inputs
        return _linear_critic(w1)(g) + _linear_critic(w2)(loc)

    real = (jnp.asarray(rng.uniform(size=(3, 8, 8, 3)), jnp.float32),
            jnp.asarray(rng.uniform(size=(3, 4, 4, 3)), jnp.float32))
    fake = (jnp.asarray(rng.uniform(size=(3, 8, 8, 3)), jnp.float32),
            jnp.asarray(rng.uniform(size=(3, 4, 4, 3)), jnp.float32))
    gp = float(losses.gradient_penalty(critic, real, fake, jax.random.PRNGKey(0)))
    np.testing.assert_allclose(gp, (expected_norm - 1.0) ** 2, rtol=1e-4, atol=1e-6)
    # Not the penalty of either leaf alone.
    for alone in (np.linalg.norm(w1), np.linalg.norm(w2)):
        assert not np.isclose(gp, (alone - 1.0) ** 2, rtol=1e-3)


def test_gradient_penalty_evaluated_at_interpolates():
    """D(x) = 0.5 * ||x||^2 has gradient x: the penalty sees x_hat = eps*real + (1-eps)*fake."""
    def critic(x):
        return 0.5 * jnp.sum(jnp.square(x), axis=(1, 2))

    a = jnp.full((4, 2, 2), 0.2)  # ||a|| = 0.4 per sample
    # real == fake: x_hat is a whatever eps is.
    gp = float(losses.gradient_penalty(critic, a, a, jax.random.PRNGKey(3)))
    np.testing.assert_allclose(gp, (0.4 - 1.0) ** 2, rtol=1e-5)
    # real = 0, fake = 2a: ||x_hat|| = 0.8 (1 - eps), eps ~ U(0, 1) per sample, so the penalty lies
    # strictly between its values at the ends (1.0 at eps=1 and 0.04 at eps=0).
    key = jax.random.PRNGKey(3)
    gp = float(losses.gradient_penalty(critic, jnp.zeros_like(a), 2 * a, key))
    assert 0.04 < gp < 1.0
    # Exactly: one epsilon per sample, eps ~ U(0, 1) drawn from the key as [B] (the docstring's
    # contract), so the penalty is the mean of four different per-sample values.
    eps = np.asarray(jax.random.uniform(key, (4,)), np.float64)
    assert len(np.unique(eps)) == 4
    per_sample = (0.8 * (1.0 - eps) - 1.0) ** 2
    np.testing.assert_allclose(gp, per_sample.mean(), rtol=1e-5)
    # A single epsilon for the whole batch gives one of these instead, never their mean.
    assert not np.any(np.isclose(gp, per_sample, rtol=1e-3))


def test_the_gan_loss_table_has_one_entry_per_config_choice():
    # config_lib lists the names without importing JAX; the steps look each one up here.
    from glcic_jax import config_lib

    assert tuple(losses.GAN_KINDS) == config_lib.GAN_LOSSES
    bce, wgan = losses.GAN_KINDS["bce"], losses.GAN_KINDS["wgan-gp"]
    assert (bce.d_loss, bce.g_loss, bce.gradient_penalty, bce.alpha_weighs_d) == (
        losses.d_bce_loss, losses.g_bce_loss, False, True)
    assert (wgan.d_loss, wgan.g_loss, wgan.gradient_penalty, wgan.alpha_weighs_d) == (
        losses.wgan_critic_loss, losses.wgan_generator_loss, True, False)
    z = jnp.asarray([-2.0, 0.0, 3.0])
    np.testing.assert_array_equal(np.asarray(bce.score(z)), np.asarray(jax.nn.sigmoid(z)))
    np.testing.assert_array_equal(np.asarray(wgan.score(z)), np.asarray(z))
