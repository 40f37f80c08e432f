"""Pure, jit-compiled training steps for GLCIC's three phases, plus inference helpers.

GLCIC 3.3 / Algorithm 1:
  phase 1 (t < Tc):            `completion_step`    update C on the hole MSE; D untouched.
  phase 2 (Tc <= t < Tc + Td): `discriminator_step` C frozen; update D on real vs completed,
                               its plain BCE loss.
  phase 3 (t >= Tc + Td):      `joint_step`         update D on alpha * its loss, then C on
                               MSE + alpha * adversarial.
With an update ratio other than 1:1 (the landscape report's WGAN runs), phase 3 alternates
`discriminator_step` and `generator_step` instead of the fused `joint_step`.

Each step takes `(state, images)` with images `[B, H, W, 3]` uint8 (or float in [0, 1]), draws its
masks on the device from `fold_in(state.rng, state.step)`, and returns `(new_state, metrics)`, a
dict of float32 scalars; nothing syncs with the host. With `mask.shape='files'` the images carry
a 4th channel, the user's hole (255 = hole), from the input pipeline.

The discriminator always sees the *composited* image: generated pixels inside the hole and the
original pixels outside (GLCIC 3.2), and a local crop around the hole (`_prepare`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from glcic_jax import config_lib, inference, losses, masks, models
from glcic_jax.inference import to_float_images  # noqa: F401  (re-exported: steps' inputs)
from glcic_jax.state import GANState, ModelState, Networks



class StepSettings(NamedTuple):
    """Static (hashable) settings the steps are compiled with."""

    mask: masks.MaskSpec
    gan_loss: str = "bce"
    alpha: float = 0.0004  # weight of the adversarial terms (the paper's alpha)
    mse_weight: float = 1.0  # weight of the MSE term in the joint generator loss
    gp_weight: float = 10.0  # WGAN-GP lambda
    perceptual_weight: float = 0.0
    real_crop: str = "hole"  # 'hole': real crops at the hole's window; 'random' (GLCIC-PyTorch)
    skip_nonfinite: bool = False  # keep the old state (and count) instead of applying NaN updates
    input_norm: str = "mean_fill"  # how the completion input is built (config_lib.INPUT_NORMS)
    # First phase-3 step (Tc + Td): a discriminator step from here on (ratio schedules) weighs
    # the BCE loss by alpha as the joint step does; before it (phase 2) the loss is plain.
    phase3_start: int = 0
    # The completion network's learning rate at the end of phase 1, as a fraction of
    # optimizer.learning_rate: cosine from 1 over phase 1's Tc steps, then constant. 1.0 (the
    # default, the paper's constant rate) leaves the steps exactly as without it.
    g_lr_final: float = 1.0
    tc: int = 0

    @property
    def gan(self) -> losses.GanLoss:
        """The loss kind's entry in losses.GAN_KINDS."""
        return losses.GAN_KINDS[self.gan_loss]

    @classmethod
    def from_config(cls, config) -> "StepSettings":
        loss = config.loss
        config_lib.check_choice("loss.gan", loss.gan)
        real_crop = str(config.mask.real_crop)
        config_lib.check_choice("mask.real_crop", real_crop)
        return cls(
            mask=masks.MaskSpec.from_config(config.mask),
            gan_loss=str(loss.gan),
            alpha=float(loss.alpha),
            mse_weight=float(loss.mse_weight),
            gp_weight=float(loss.gp_weight),
            perceptual_weight=float(loss.perceptual_weight),
            real_crop=real_crop,
            skip_nonfinite=config.nan_policy == "skip",
            input_norm=inference.input_norm_of(config),
            phase3_start=config_lib.phase_starts(config)[2],
            g_lr_final=float(config.optimizer.g_lr_final),
            tc=config_lib.phase_starts(config)[1],
        )


class Steps(NamedTuple):
    completion: Callable  # phase 1
    discriminator: Callable  # phase 2 (and critic updates in phase 3 with n_critic > 1)
    joint: Callable  # phase 3, fused D then G update
    generator: Callable  # phase 3 generator-only update (ratio schedules)
    complete: Callable  # inference: (g_vars, images, mask, mean_pixel) -> completed images
    evaluate: Callable  # (state, images, mask, local corners) -> dict for sample grids
    compiler_options: dict | None = None  # the steps' jit options (models.compiler_options)
    # evaluate's: it runs every sample_every steps, forward only (the inference options)
    evaluate_compiler_options: dict | None = None


def _variables(ms: ModelState, params=None) -> dict:
    v = {"params": ms.params if params is None else params}
    if ms.batch_stats:
        v["batch_stats"] = ms.batch_stats
    return v


def _generate(nets: Networks, ms: ModelState, params, x, train: bool):
    """Run the generator; returns (final output, all outputs to reconstruct, new batch stats)."""
    if train and ms.batch_stats:
        out, upd = nets.generator.apply(
            _variables(ms, params), x, train=True, mutable=["batch_stats"]
        )
        new_stats = upd["batch_stats"]
    else:
        out = nets.generator.apply(_variables(ms, params), x, train=train)
        new_stats = ms.batch_stats
    outs = out if isinstance(out, tuple) else (out,)
    return outs[0], outs, new_stats


def _discriminate(nets: Networks, params, batch_stats, global_img, local_img, train: bool):
    """Run D; returns (logits [B, 1], new batch stats)."""
    v = {"params": params}
    if batch_stats:
        v["batch_stats"] = batch_stats
    if train and batch_stats:
        logits, upd = nets.discriminator.apply(
            v, global_img, local_img, train=True, mutable=["batch_stats"]
        )
        return logits, upd["batch_stats"]
    return nets.discriminator.apply(v, global_img, local_img, train=train), batch_stats


def _apply_updates(tx, ms: ModelState, grads, new_stats, lr_factor=None) -> ModelState:
    """One optimizer update; `lr_factor` (a scalar) multiplies it, i.e. the learning rate (every
    optimizer here ends with its learning-rate scaling, so this is exact)."""
    updates, opt_state = tx.update(grads, ms.opt_state, ms.params)
    if lr_factor is not None:
        updates = jax.tree_util.tree_map(lambda u: u * lr_factor.astype(u.dtype), updates)
    return ModelState(optax.apply_updates(ms.params, updates), new_stats, opt_state)


def g_lr_factor(settings: StepSettings, step: jax.Array) -> jax.Array | None:
    """The completion network's learning-rate factor at global step `step` (optimizer.g_lr_final);
    None when the rate is constant (nothing is added to the compiled step)."""
    if settings.g_lr_final == 1.0 or settings.tc <= 0:
        return None
    t = jnp.minimum(step.astype(jnp.float32) / settings.tc, 1.0)
    final = settings.g_lr_final
    return (final + (1.0 - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))).astype(jnp.float32)


def _all_finite(*trees) -> jax.Array:
    """Losses, gradients and the updated model state (params, statistics, optimizer state): an
    update can overflow although the loss and gradients that made it were finite."""
    leaves = [x for t in trees for x in jax.tree_util.tree_leaves(t)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _guard(settings: StepSettings, old: GANState, new: GANState, ok: jax.Array) -> GANState:
    """With nan_policy='skip', a non-finite update leaves the state as it was (the step counter
    still advances)."""
    if not settings.skip_nonfinite:
        return new
    # One conditional over the whole state, not a select per leaf: a jnp.where per leaf made
    # XLA's CPU compile of the :tiny completion step 5x and of the joint step 7x slower (21.8 s
    # and 74.8 s against 4.4 s and 10.1 s without a guard; with lax.cond 4.3 s and 9.4 s:
    # benchmarks/bench_nan_guard.py, results/nan_guard_compile_tiny*.json). On a GPU, XLA may
    # copy the predicate to the host to pick the branch: a small per-step wait, paid only with
    # nan_policy='skip'.
    kept = jax.lax.cond(ok, lambda: new, lambda: old)
    return kept.replace(step=new.step)


def _finish(settings: StepSettings, state: GANState, metrics: dict, checked: tuple,
            **updated: ModelState) -> tuple[GANState, dict]:
    """The tail every training step shares: the new state (`updated` networks, step + 1), the
    finite check over `checked` (losses, gradients, the updated model states), the nan_policy
    guard, and the `nonfinite` metric."""
    new = state.replace(step=state.step + 1, **updated)
    ok = _all_finite(*checked)
    metrics["nonfinite"] = 1.0 - ok.astype(jnp.float32)
    return _guard(settings, state, new, ok), metrics


class _Batch(NamedTuple):
    images: jax.Array  # [B, H, W, 3] float32 in [0, 1]
    masks: masks.Masks
    x: jax.Array  # [B, H, W, 4] completion input
    real_local: jax.Array  # [B, L, L, 3] crops of real images (hole's or random windows)
    k_gp: jax.Array


def _prepare(settings: StepSettings, state: GANState, images) -> _Batch:
    step_key = jax.random.fold_in(state.rng, state.step)
    k_mask, k_real, k_gp = jax.random.split(step_key, 3)
    if settings.mask.shape == "files":
        # The user's masks ride in the batch's 4th channel (input_pipeline: 255 = hole).
        holes = (images[..., 3:] > 127) if images.dtype == jnp.uint8 else images[..., 3:] > 0.5
        images = to_float_images(images[..., :3])
        m = masks.masks_from_holes(holes.astype(jnp.float32), settings.mask)
    else:
        images = to_float_images(images)
        m = masks.sample_masks(k_mask, *images.shape[:3], settings.mask)
    b, h, w, _ = images.shape
    x = masks.fill_holes(images, m.mask, state.mean_pixel, settings.input_norm)
    size = settings.mask.local_size
    # A real image is cropped at the same window as its hole's by default
    # (`mask.real_crop='hole'`): the seed report's trainer crops "the 128*128 hole-centered images
    # ... for both the intact and the completed images" with one function, and with equal windows
    # D cannot tell real from completed crops by where they were cut (with
    # `mask.position='center'` the completed crops would otherwise always show the image centre).
    # That report's network description also says an intact image's crop "is centered on a random
    # pixel"; we follow its trainer (our judgement: the code is what was run).
    # `mask.real_crop='random'` crops real images at an independent random window instead, as
    # GLCIC-PyTorch's train.py does (its `hole_area_real`).
    if settings.real_crop == "random":
        real_corners = masks.random_corners(k_real, b, h, w, size)
    else:
        real_corners = m.corners
    real_local = masks.crop(images, real_corners, size)
    return _Batch(images, m, x, real_local, k_gp)


def _recon_loss(settings, outs, batch: _Batch, perceptual_fn) -> tuple[jax.Array, dict]:
    mse = sum(losses.masked_mse(o, batch.images, batch.masks.mask) for o in outs)
    total, metrics = mse, {"mse": mse}
    if settings.perceptual_weight and perceptual_fn is not None:
        size = settings.mask.local_size
        fake_local = masks.crop(models.blend_into_hole(batch.images, outs[0], batch.masks.mask),
                                batch.masks.corners, size)
        real_local = masks.crop(batch.images, batch.masks.corners, size)
        perc = perceptual_fn(fake_local, real_local)
        total = total + settings.perceptual_weight * perc
        metrics["perceptual"] = perc
    return total, metrics


def _d_loss(settings, nets, d: ModelState, d_params, batch: _Batch, completed, scale):
    """Discriminator / critic loss on real vs completed; returns (loss, (stats, metrics)).

    `scale` multiplies the BCE loss (1 in phase 2, alpha in phase 3, see `_d_scale`);
    the logged `d_loss` is the loss before that weighting, comparable across phases.
    """
    size = settings.mask.local_size
    fake_local = masks.crop(completed, batch.masks.corners, size)
    # Separate forward passes for real and completed batches (as the reference ports do): each
    # BatchNorm batch is all-real or all-fake.
    real_logits, stats = _discriminate(nets, d_params, d.batch_stats, batch.images,
                                       batch.real_local, True)
    fake_logits, stats = _discriminate(nets, d_params, stats, completed, fake_local, True)
    kind = settings.gan
    gan = kind.d_loss(real_logits, fake_logits)
    metrics = {"d_real": jnp.mean(kind.score(real_logits)),
               "d_fake": jnp.mean(kind.score(fake_logits))}
    unweighted = gan
    if kind.gradient_penalty:
        # The penalty needs per-sample gradients: BatchNorm critics are evaluated in inference
        # mode here; layer-norm / no-norm critics (the default for WGAN) are per-sample anyway.
        gp_train = not bool(d.batch_stats)

        def critic(inputs):
            g_img, l_img = inputs
            return _discriminate(nets, d_params, stats, g_img, l_img, gp_train)[0]

        gp = losses.gradient_penalty(
            critic, (batch.images, batch.real_local), (completed, fake_local), batch.k_gp
        )
        metrics.update(gp=gp, wasserstein=-gan)
        unweighted = gan + settings.gp_weight * gp
    metrics["d_loss"] = unweighted
    # Landscape report 4a: the WGAN-GP critic's loss is never weighted (no alpha).
    loss = scale * unweighted if kind.alpha_weighs_d else unweighted
    return loss, (stats, metrics)


def _d_scale(settings: StepSettings, step: jax.Array, joint: bool) -> jax.Array | float:
    """Weight of D's BCE loss: alpha in phase 3 (the joint step, or a D-only step at or after
    Tc + Td), 1 in phase 2. The WGAN-GP critic's loss is never weighted (GanLoss.alpha_weighs_d)."""
    # The seed report (CelebA/Places2) spells the phase-2 / phase-3 difference out: in the
    # discriminator phase the two BCE terms are "added" and used as they are; in the simultaneous
    # phase D's loss "is the same as before, except it is multiplied by an alpha factor" (GLCIC
    # eq. 3 weighs D's terms by alpha in the joint objective). Adadelta is not scale-invariant for
    # gradients below sqrt(eps), so a phase-2 D trained on alpha * BCE hardly moves. With the
    # WGAN-GP loss, D's (critic's) loss is the landscape report's (4a) in every phase: E[D(G(x))]
    # - E[D(x)] + gp, never multiplied by alpha; alpha weighs only the generator's adversarial
    # term there.
    if not settings.gan.alpha_weighs_d:
        return 1.0
    if joint:
        return settings.alpha
    return jnp.where(step >= settings.phase3_start, settings.alpha, 1.0).astype(jnp.float32)


def _adv_loss(settings, nets, d: ModelState, completed, corners):
    """Generator's adversarial term for a completed batch, with D fixed (its stats discarded)."""
    fake_local = masks.crop(completed, corners, settings.mask.local_size)
    logits, _ = _discriminate(nets, d.params, d.batch_stats, completed, fake_local, True)
    return settings.gan.g_loss(logits)


def _completion_step(nets, settings, perceptual_fn, state: GANState, images):
    batch = _prepare(settings, state, images)

    def loss_fn(params):
        _, outs, stats = _generate(nets, state.g, params, batch.x, True)
        loss, metrics = _recon_loss(settings, outs, batch, perceptual_fn)
        return loss, (stats, metrics)

    (loss, (stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g.params)
    g = _apply_updates(nets.g_tx, state.g, grads, stats, g_lr_factor(settings, state.step))
    metrics["g_loss"] = loss
    return _finish(settings, state, metrics, (loss, grads, g), g=g)


def _discriminator_step(nets, settings, perceptual_fn, state: GANState, images):
    del perceptual_fn
    batch = _prepare(settings, state, images)
    # C is frozen: batch-statistics forward (as in the joint phase), its stat updates discarded.
    out, _, _ = _generate(nets, state.g, state.g.params, batch.x, True)
    completed = jax.lax.stop_gradient(models.blend_into_hole(batch.images, out, batch.masks.mask))
    scale = _d_scale(settings, state.step, joint=False)
    grad_fn = jax.value_and_grad(
        lambda p: _d_loss(settings, nets, state.d, p, batch, completed, scale), has_aux=True
    )
    (loss, (stats, metrics)), grads = grad_fn(state.d.params)
    d = _apply_updates(nets.d_tx, state.d, grads, stats)
    return _finish(settings, state, metrics, (loss, grads, d), d=d)


def _generator_loss(settings, nets, perceptual_fn, d: ModelState, batch: _Batch, outs):
    recon, metrics = _recon_loss(settings, outs, batch, perceptual_fn)
    completed = models.blend_into_hole(batch.images, outs[0], batch.masks.mask)
    adv = _adv_loss(settings, nets, d, completed, batch.masks.corners)
    loss = settings.mse_weight * recon + settings.alpha * adv
    metrics.update(g_adv=adv, g_loss=loss)
    return loss, metrics


def _joint_step(nets, settings, perceptual_fn, state: GANState, images):
    batch = _prepare(settings, state, images)

    # One generator forward serves both updates: keep its VJP for C's gradient.
    def g_fwd(params):
        _, outs, stats = _generate(nets, state.g, params, batch.x, True)
        return outs, stats

    outs, g_vjp, g_stats = jax.vjp(g_fwd, state.g.params, has_aux=True)

    # 1) D on real vs completed (completed is a constant for D).
    completed = jax.lax.stop_gradient(
        models.blend_into_hole(batch.images, outs[0], batch.masks.mask))
    (d_loss, (d_stats, metrics)), d_grads = jax.value_and_grad(
        lambda p: _d_loss(settings, nets, state.d, p, batch, completed,
                          _d_scale(settings, state.step, joint=True)),
        has_aux=True,
    )(state.d.params)
    new_d = _apply_updates(nets.d_tx, state.d, d_grads, d_stats)

    # 2) C on MSE + alpha * adversarial, against the updated D.
    (g_loss, g_metrics), d_outs = jax.value_and_grad(
        lambda o: _generator_loss(settings, nets, perceptual_fn, new_d, batch, o), has_aux=True
    )(outs)
    (g_grads,) = g_vjp(d_outs)
    new_g = _apply_updates(nets.g_tx, state.g, g_grads, g_stats,
                           g_lr_factor(settings, state.step))
    metrics.update(g_metrics)
    return _finish(settings, state, metrics, (d_loss, g_loss, d_grads, g_grads, new_d, new_g),
                   g=new_g, d=new_d)


def _generator_step(nets, settings, perceptual_fn, state: GANState, images):
    batch = _prepare(settings, state, images)

    def loss_fn(params):
        _, outs, stats = _generate(nets, state.g, params, batch.x, True)
        loss, metrics = _generator_loss(settings, nets, perceptual_fn, state.d, batch, outs)
        return loss, (stats, metrics)

    (loss, (stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g.params)
    g = _apply_updates(nets.g_tx, state.g, grads, stats, g_lr_factor(settings, state.step))
    return _finish(settings, state, metrics, (loss, grads, g), g=g)


def _evaluate(nets, settings, state: GANState, images, mask, corners):
    """Completed images and D's probabilities on real / completed, with running statistics."""
    images = to_float_images(images)
    completed = inference.complete_images(nets.generator, _variables(state.g), images, mask,
                                          state.mean_pixel, settings.input_norm)
    size = settings.mask.local_size
    real_logits, _ = _discriminate(nets, state.d.params, state.d.batch_stats, images,
                                   masks.crop(images, corners, size), False)
    fake_logits, _ = _discriminate(nets, state.d.params, state.d.batch_stats, completed,
                                   masks.crop(completed, corners, size), False)
    score = settings.gan.score
    return {
        "completed": completed,
        # Shown as the hole filled with the mean pixel, whatever model.input_norm (the
        # 'mean_subtract' input is this image minus the mean, which is no picture).
        "inputs": masks.fill_holes(images, mask, state.mean_pixel)[..., :3],
        "d_real": score(real_logits)[:, 0],
        "d_fake": score(fake_logits)[:, 0],
        "mse": jnp.mean(jnp.square((completed - images) * mask), axis=(1, 2, 3)),
    }


def make_steps(config, nets: Networks, perceptual_fn: Callable | None = None,
               donate: bool = True) -> Steps:
    """Build the jit-compiled steps for a config. `donate=True` reuses the state's buffers."""
    settings = StepSettings.from_config(config)
    donate_args = (0,) if donate else ()
    options = models.compiler_options(float(config.model.width))
    evaluate_options = models.compiler_options(float(config.model.width), inference=True)

    def jit_step(fn):
        return jax.jit(functools.partial(fn, nets, settings, perceptual_fn),
                       donate_argnums=donate_args, compiler_options=options)

    return Steps(
        completion=jit_step(_completion_step),
        discriminator=jit_step(_discriminator_step),
        joint=jit_step(_joint_step),
        generator=jit_step(_generator_step),
        complete=inference.completion_fn(nets.generator, settings.input_norm),
        evaluate=jax.jit(functools.partial(_evaluate, nets, settings),
                         compiler_options=evaluate_options),
        compiler_options=options,
        evaluate_compiler_options=evaluate_options,
    )


def phase_of(step: int, config) -> int:
    """Training phase (1, 2 or 3) of a 0-based global step under the config's schedule."""
    _, phase2, phase3 = config_lib.phase_starts(config)
    return 1 if step < phase2 else 2 if step < phase3 else 3


def phase3_update(step: int, config) -> str:
    """Which update a phase-3 step performs: 'joint' (1:1), or 'discriminator' / 'generator'."""
    n_d, n_g = int(config.loss.n_critic), int(config.loss.n_generator)
    if n_d == 1 and n_g == 1:
        return "joint"
    k = (step - config_lib.phase_starts(config)[2]) % (n_d + n_g)
    return "discriminator" if k < n_d else "generator"


def step_fn_for(step: int, config, steps: Steps) -> tuple[str, Callable[..., Any]]:
    """The (name, function) that performs global step `step`."""
    phase = phase_of(step, config)
    if phase == 1:
        return "completion", steps.completion
    if phase == 2:
        return "discriminator", steps.discriminator
    name = phase3_update(step, config)
    return name, getattr(steps, name)
