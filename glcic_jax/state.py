"""Training state: one pytree holding both networks, their batch statistics and optimizer states.

`GANState` is pure data (arrays only), so it can be jit-donated, sharded and saved by Orbax as is.
The modules and optimizers that interpret it are rebuilt from the config (`Networks`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from glcic_jax import config_lib, conv_forms, models


@struct.dataclass
class ModelState:
    params: Any
    batch_stats: Any
    opt_state: Any


@struct.dataclass
class GANState:
    step: jax.Array  # int32 scalar: the number of updates done so far (all phases)
    rng: jax.Array  # uint32 [2]: base key; per-step keys are fold_in(rng, step)
    mean_pixel: jax.Array  # float32 [3] in [0, 1]: the dataset's mean pixel used to fill holes
    g: ModelState  # completion network
    d: ModelState  # context discriminator (or WGAN critic)


def create_optimizer(opt_cfg) -> optax.GradientTransformation:
    """optax optimizer from `config.optimizer`.

    * adadelta: the paper's optimizer. optax's default `learning_rate=None` never moves the
      parameters at the right scale, so the config's learning_rate (1.0, as Torch's adadelta)
      is always passed; rho 0.9 and eps 1e-6 as in Torch/PyTorch.
    * adam: PyTorch defaults unless the config overrides (lr 1e-3 / 2e-4, b1, b2, eps 1e-8).
    * rmsprop: PyTorch-compatible: decay (PyTorch's alpha) 0.99, eps 1e-8 added *outside* the sqrt.
    """
    name = str(opt_cfg.name).lower()
    lr = float(opt_cfg.learning_rate)
    if name == "adadelta":
        return optax.adadelta(learning_rate=lr, rho=float(opt_cfg.rho), eps=float(opt_cfg.eps))
    if name == "adam":
        return optax.adam(lr, b1=float(opt_cfg.b1), b2=float(opt_cfg.b2), eps=float(opt_cfg.eps))
    if name == "rmsprop":
        return optax.rmsprop(
            lr, decay=float(opt_cfg.decay), eps=float(opt_cfg.eps), eps_in_sqrt=False
        )
    config_lib.check_choice("optimizer.name", name)
    raise AssertionError(f"optimizer {name!r} is listed in config_lib.OPTIMIZERS but not built")


class Networks(NamedTuple):
    """The stateless pieces that interpret a GANState: modules and optimizers."""

    generator: nn.Module
    discriminator: nn.Module
    g_tx: optax.GradientTransformation
    d_tx: optax.GradientTransformation


def create_networks(config) -> Networks:
    """The config's modules and optimizer. C and D share one optimizer setting (the paper's
    Adadelta for both); an optax transformation is stateless, so one object serves both (each
    network keeps its own optimizer state in `ModelState.opt_state`)."""
    tx = create_optimizer(config.optimizer)
    return Networks(
        generator=models.make_generator(config.model),
        discriminator=models.make_discriminator(config.model),
        g_tx=tx,
        d_tx=tx,
    )


def _init_model(module: nn.Module, tx: optax.GradientTransformation, key, *inputs) -> ModelState:
    variables = module.init(key, *inputs, train=False)
    params = variables["params"]
    return ModelState(
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
    )


def state_initializer(
    config, nets: Networks, key: jax.Array, mean_pixel, image_hw: tuple[int, int] | None = None
) -> Callable[[], GANState]:
    """The function, of no arguments, that makes a fresh state: networks initialised from `key`,
    step 0, the given mean pixel. `create_state` compiles and runs it; trace it with
    `jax.eval_shape` for the state's structure, or compile it under a jit of one's own
    (`distributed.init_replicated`): JAX takes compiler options on the outermost jit only."""
    h, w = image_hw or (config.data.image_size, config.data.image_size)
    local = config.mask.local_size
    k_g, k_d, k_rng = jax.random.split(key, 3)

    def init():
        g = _init_model(nets.generator, nets.g_tx, k_g, jnp.zeros((1, h, w, 4), jnp.float32))
        d = _init_model(
            nets.discriminator,
            nets.d_tx,
            k_d,
            jnp.zeros((1, h, w, 3), jnp.float32),
            jnp.zeros((1, local, local, 3), jnp.float32),
        )
        return GANState(
            step=jnp.zeros((), jnp.int32),
            rng=k_rng,
            mean_pixel=jnp.asarray(mean_pixel, jnp.float32).reshape((3,)),
            g=g,
            d=d,
        )

    return init


def create_state(
    config, nets: Networks, key: jax.Array, mean_pixel, image_hw: tuple[int, int] | None = None
) -> GANState:
    """Fresh state (`state_initializer`'s), compiled with `conv_forms.run_once_compiler_options`."""
    init = state_initializer(config, nets, key, mean_pixel, image_hw)
    return jax.jit(init, compiler_options=conv_forms.run_once_compiler_options())()
