"""Networks: parameter count, shapes, value ranges, dtype policy, options, receptive field."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glcic_jax import config_lib, models


@pytest.fixture
def tiny_config():
    """The `:tiny` config at the paper's channel widths (`:tiny` itself is a quarter as wide):
    these tests check Table 1's layers."""
    c = config_lib.shrink_to_tiny(config_lib.base_config())
    c.model.width = 1.0
    return c

KEY = jax.random.PRNGKey(0)


def abstract_init(module, *inputs):
    """Shapes and dtypes of a module's variables, without running the initialisers."""
    return jax.eval_shape(lambda: module.init(KEY, *inputs, train=False))


def cheap_variables(module, *inputs, seed: int = 0):
    """Concrete variables with the shapes `module.init` gives, filled from numpy.

    Random initialisation of the 6M-parameter networks takes seconds to compile on CPU; tests that
    only need *some* sensible weights use fan-in-scaled normal kernels, unit scales/variances and
    zero biases/means instead.
    """
    shapes = abstract_init(module, *inputs)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        if "kernel" in name:
            fan_in = int(np.prod(leaf.shape[:-1]))
            value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), leaf.shape)
        elif "scale" in name or "var" in name:
            value = np.ones(leaf.shape)
        else:
            value = np.zeros(leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def apply(module, variables, *inputs, train: bool = False):
    """`module.apply` under jit: one compilation is much cheaper than op-by-op dispatch on CPU."""
    fn = functools.partial(module.apply, train=train, mutable=["batch_stats"] if train else False)
    return jax.jit(fn)(variables, *inputs)


def gen_input(batch, height, width, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (batch, height, width, 4)).astype(np.float32)
    x[..., 3] = (x[..., 3] > 0.5).astype(np.float32)  # a binary mask channel
    return jnp.asarray(x)


def all_leaves_dtype(tree, dtype) -> bool:
    return all(leaf.dtype == dtype for leaf in jax.tree_util.tree_leaves(tree))


# ----------------------------------------------------------------------------------------------
# Completion network
# ----------------------------------------------------------------------------------------------


def test_completion_network_has_paper_parameter_count():
    shapes = abstract_init(models.CompletionNetwork(), jnp.zeros((1, 256, 256, 4)))
    assert models.count_params(shapes["params"]) == 6_072_131


def test_count_params_counts_scalars():
    tree = {"a": jnp.zeros((2, 3)), "b": [jnp.zeros((4,)), jnp.zeros(())]}
    assert models.count_params(tree) == 11


@pytest.mark.parametrize("height,width", [(256, 256), (200, 296)])
def test_completion_output_shape_and_dtype(height, width):
    net = models.CompletionNetwork()
    x = jax.ShapeDtypeStruct((2, height, width, 4), jnp.float32)
    variables = abstract_init(net, jnp.zeros((1, 32, 32, 4)))
    for train in (False, True):
        fn = functools.partial(net.apply, train=train,
                               mutable=["batch_stats"] if train else False)
        out = jax.eval_shape(fn, variables, x)
        out = out[0] if train else out
        assert out.shape == (2, height, width, 3)
        assert out.dtype == jnp.float32


def test_completion_output_in_unit_interval():
    net = models.CompletionNetwork()
    variables = cheap_variables(net, jnp.zeros((1, 32, 32, 4)))
    x = gen_input(2, 32, 40)
    # Large inputs push the sigmoid into saturation: the output must still stay in [0, 1].
    x_big = x.at[..., :3].multiply(1e3)
    out = np.asarray(apply(net, variables, jnp.concatenate([x, x_big])))
    assert out.shape == (4, 32, 40, 3)
    assert np.all(np.isfinite(out))
    assert out.min() >= 0.0 and out.max() <= 1.0
    # ... and it is not a constant.
    assert out[:2].std() > 0


@pytest.mark.parametrize("shape", [(1, 30, 32, 4), (1, 32, 34, 4), (1, 257, 256, 4)])
def test_completion_rejects_sizes_not_divisible_by_4(shape):
    net = models.CompletionNetwork()
    variables = abstract_init(net, jnp.zeros((1, 32, 32, 4)))
    with pytest.raises(ValueError, match="divisible by 4"):
        jax.eval_shape(lambda v, x: net.apply(v, x, train=False), variables,
                       jax.ShapeDtypeStruct(shape, jnp.float32))


def test_completion_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match=r"\[B, H, W, 4\]"):
        abstract_init(models.CompletionNetwork(), jnp.zeros((1, 32, 32, 3)))


def test_completion_reflect_padding_builds_and_runs():
    net = models.CompletionNetwork(padding="reflect")
    variables = cheap_variables(net, jnp.zeros((1, 32, 32, 4)))
    # Same parameters as zero padding: padding mode changes no shapes.
    assert models.count_params(variables["params"]) == 6_072_131
    x = gen_input(2, 32, 32)
    out = np.asarray(apply(net, variables, x))
    assert out.shape == (2, 32, 32, 3)
    assert np.all(np.isfinite(out)) and out.min() >= 0.0 and out.max() <= 1.0
    # And it is a different network function from zero padding.
    zero = np.asarray(apply(models.CompletionNetwork(), variables, x))
    assert not np.allclose(out, zero)


def test_completion_bfloat16_keeps_float32_params_and_output():
    net = models.CompletionNetwork(dtype=jnp.bfloat16)
    shapes = abstract_init(net, jnp.zeros((1, 32, 32, 4)))
    assert all_leaves_dtype(shapes, jnp.float32)
    variables = cheap_variables(net, jnp.zeros((1, 32, 32, 4)))
    out = apply(net, variables, gen_input(2, 32, 32))
    assert out.dtype == jnp.float32
    out = np.asarray(out)
    assert np.all(np.isfinite(out)) and out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("padding", ["same", "circular", ""])
def test_completion_invalid_padding_raises(padding):
    with pytest.raises(ValueError, match=r"model\.padding.*must be one of.*'zero', 'reflect'"):
        abstract_init(models.CompletionNetwork(padding=padding), jnp.zeros((1, 32, 32, 4)))


def test_two_stage_generator_returns_refined_and_coarse(tiny_config):
    assert isinstance(models.make_generator(tiny_config.model), models.CompletionNetwork)
    tiny_config.model.two_stage = True
    net = models.make_generator(tiny_config.model)
    assert isinstance(net, models.TwoStageCompletion)
    shapes = abstract_init(net, jnp.zeros((1, 32, 32, 4)))
    assert models.count_params(shapes["params"]) == 2 * 6_072_131
    refined, coarse = jax.eval_shape(lambda v, x: net.apply(v, x, train=False), shapes,
                                     jax.ShapeDtypeStruct((2, 64, 48, 4), jnp.float32))
    assert refined.shape == coarse.shape == (2, 64, 48, 3)


def test_two_stage_is_its_two_completion_networks_applied_by_hand():
    """Stage 2 refines stage 1's output composited into the input (not the raw input), and the
    module returns (refined, coarse) in that order: rebuilt here from two CompletionNetworks."""
    width = 0.125  # any width: the wiring is what is checked
    net = models.TwoStageCompletion(width=width)
    x = gen_input(2, 16, 16, seed=3)
    variables = cheap_variables(net, x[:1], seed=4)
    # Train mode (batch statistics): with these weights, running statistics would squash every
    # output to ~0.5 and hide the wiring.
    (refined, coarse), _ = apply(net, variables, x, train=True)
    part = {k: {"params": variables["params"][k], "batch_stats": variables["batch_stats"][k]}
            for k in ("coarse", "refine")}
    one = models.CompletionNetwork(width=width)
    want_coarse, _ = apply(one, part["coarse"], x, train=True)
    rgb, mask = np.asarray(x[..., :3]), np.asarray(x[..., 3:])
    stage2_in = np.concatenate([rgb * (1 - mask) + np.asarray(want_coarse) * mask, mask], -1)
    want_refined, _ = apply(one, part["refine"], jnp.asarray(stage2_in), train=True)
    np.testing.assert_allclose(np.asarray(coarse), np.asarray(want_coarse), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(refined), np.asarray(want_refined), rtol=0, atol=1e-5)
    # The two outputs differ (else the order would not matter), and so would a refinement of
    # the raw input: the check above tells them apart.
    assert np.abs(np.asarray(refined) - np.asarray(coarse)).max() > 0.05
    raw, _ = apply(one, part["refine"], x, train=True)
    assert np.abs(np.asarray(raw) - np.asarray(want_refined)).max() > 0.05


# ----------------------------------------------------------------------------------------------
# Learned fill (the CelebA/Places2 report's proposal)
# ----------------------------------------------------------------------------------------------

# The paper network's parameter tree: 15 convolutions (17 layers less the 2 deconvolutions),
# 2 transposed convolutions and 16 BatchNorms (every layer but the output).
PAPER_PARAM_NAMES = sorted([f"PaddedConv_{i}" for i in range(15)]
                           + ["ConvTranspose_0", "ConvTranspose_1"]
                           + [f"BatchNorm_{i}" for i in range(16)])


def test_default_fill_is_the_paper_network(tiny_config):
    assert tiny_config.model.fill == "mean"
    net = models.make_generator(tiny_config.model)
    assert net.fill == "mean"
    shapes = abstract_init(net, jnp.zeros((1, 32, 32, 4)))
    assert sorted(shapes["params"]) == PAPER_PARAM_NAMES
    assert sorted(shapes["batch_stats"]) == sorted(f"BatchNorm_{i}" for i in range(16))
    assert models.count_params(shapes["params"]) == 6_072_131
    # The input reaches the first convolution unchanged: the mean-filled holes are the network's.
    variables = cheap_variables(net, jnp.zeros((1, 32, 32, 4)))
    x = gen_input(2, 32, 32)
    _, inter = jax.jit(functools.partial(net.apply, train=False, capture_intermediates=True,
                                         mutable=["intermediates"]))(variables, x)
    first = inter["intermediates"]["PaddedConv_0"]["__call__"][0]
    w = variables["params"]["PaddedConv_0"]["Conv_0"]
    expected = jax.lax.conv_general_dilated(
        x, w["kernel"], (1, 1), ((2, 2), (2, 2)),
        dimension_numbers=("NHWC", "HWIO", "NHWC")) + w["bias"]
    np.testing.assert_allclose(np.asarray(first), np.asarray(expected), rtol=1e-4, atol=1e-5)


def test_learned_fill_replaces_the_mean_fill_and_trains_through_the_completion_loss(tiny_config):
    from glcic_jax import losses

    tiny_config.model.fill = "learned"
    net = models.make_generator(tiny_config.model)
    assert isinstance(net, models.CompletionNetwork) and net.fill == "learned"
    variables = cheap_variables(net, jnp.zeros((1, 32, 32, 4)), seed=1)
    params = variables["params"]
    # The paper network's parameters, plus the fill network's under 'fill'.
    assert sorted(set(params) - {"fill"}) == PAPER_PARAM_NAMES
    n_fill = models.count_params(params["fill"])
    assert 100_000 < n_fill < 400_000
    assert models.count_params(params) == 6_072_131 + n_fill

    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(0, 1, (2, 32, 32, 3)), jnp.float32)
    mask = np.zeros((2, 32, 32, 1), np.float32)
    mask[:, 8:20, 10:24] = 1.0
    mask = jnp.asarray(mask)
    x = jnp.concatenate([images * (1 - mask) + 0.2 * mask, mask], axis=-1)  # mean-filled input

    # The main network sees the fill network's content in the hole instead of the flat mean
    # pixel: the learned-fill generator is the paper network applied to that composite.
    content = jax.jit(models.FillNetwork().apply)({"params": params["fill"]}, x)
    assert content.shape == (2, 32, 32, 3)
    assert np.abs(np.asarray(content) - 0.2).max() > 0.1
    refilled = jnp.concatenate([models.blend_into_hole(images, content, mask), mask], axis=-1)
    mean_vars = {"params": {k: v for k, v in params.items() if k != "fill"},
                 "batch_stats": variables["batch_stats"]}
    paper = models.CompletionNetwork()
    # (Batch statistics: the cheap weights' unit running variances would flatten outputs to ~0.5.)
    learned = np.asarray(apply(net, variables, x, train=True)[0])
    via_paper = np.asarray(apply(paper, mean_vars, refilled, train=True)[0])
    np.testing.assert_allclose(learned, via_paper, rtol=1e-5, atol=1e-6)
    flat = np.asarray(apply(paper, mean_vars, x, train=True)[0])
    assert np.abs(learned - flat).max() > 1e-3

    # End to end: the completion loss (hole MSE) gives every fill-network kernel a gradient.
    def loss(p):
        out, _ = net.apply({"params": p, "batch_stats": variables["batch_stats"]}, x, train=True,
                           mutable=["batch_stats"])
        return losses.masked_mse(out, images, mask)

    grads = jax.jit(jax.grad(loss))(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads["fill"]):
        g = np.asarray(g)
        assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
        if "kernel" in jax.tree_util.keystr(path):
            assert np.abs(g).max() > 0, f"no gradient reaches fill{jax.tree_util.keystr(path)}"

    tiny_config.model.fill = "network"
    with pytest.raises(ValueError, match=r"model\.fill='network' must be one of"):
        abstract_init(models.make_generator(tiny_config.model), jnp.zeros((1, 32, 32, 4)))


def test_fill_is_part_of_checkpoint_compatibility(tiny_config):
    from glcic_jax import checkpointing

    stored = tiny_config.to_dict()
    del stored["model"]["fill"]  # a checkpoint written before model.fill existed
    checkpointing.check_compatible(stored, tiny_config)  # 'mean' is what it meant
    tiny_config.model.fill = "learned"
    with pytest.raises(checkpointing.IncompatibleCheckpointError, match=r"model\.fill"):
        checkpointing.check_compatible(stored, tiny_config)


# ----------------------------------------------------------------------------------------------
# Discriminators
# ----------------------------------------------------------------------------------------------


def disc_inputs(batch, global_size, local_size, seed=0):
    rng = np.random.default_rng(seed)
    g = jnp.asarray(rng.uniform(0, 1, (batch, global_size, global_size, 3)), jnp.float32)
    loc = jnp.asarray(rng.uniform(0, 1, (batch, local_size, local_size, 3)), jnp.float32)
    return g, loc


def test_context_discriminator_logits_shape_small():
    d = models.ContextDiscriminator()
    g, loc = disc_inputs(3, 64, 32)
    variables = cheap_variables(d, g[:1], loc[:1])
    logits = apply(d, variables, g, loc)
    assert logits.shape == (3, 1) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(logits)))


def test_context_discriminator_logits_shape_paper_size():
    d = models.ContextDiscriminator()
    variables = abstract_init(d, jnp.zeros((1, 256, 256, 3)), jnp.zeros((1, 128, 128, 3)))
    logits = jax.eval_shape(
        lambda v, g, loc: d.apply(v, g, loc, train=False),
        variables,
        jax.ShapeDtypeStruct((5, 256, 256, 3), jnp.float32),
        jax.ShapeDtypeStruct((5, 128, 128, 3), jnp.float32),
    )
    assert logits.shape == (5, 1) and logits.dtype == jnp.float32
    assert set(variables["params"]) == {"global", "local", "head"}
    # Both branches give 1024-d features: the head maps 2048 -> 1.
    assert variables["params"]["head"]["kernel"].shape == (2048, 1)


def test_local_only_discriminator():
    d = models.ContextDiscriminator(use_global=False)
    _, loc = disc_inputs(3, 64, 32)
    variables = cheap_variables(d, None, loc[:1])
    assert "global" not in variables["params"]
    assert variables["params"]["head"]["kernel"].shape == (1024, 1)
    logits = apply(d, variables, None, loc)
    assert logits.shape == (3, 1) and logits.dtype == jnp.float32


# Every norm and activation value at least once (the branches share one conv-stack class, so the
# cheaper local-only critic stands for both).
@pytest.mark.parametrize(
    "norm,activation", [("batch", "leaky_relu"), ("layer", "relu"), ("none", "leaky_relu")]
)
def test_discriminator_options_build_and_run(norm, activation):
    d = models.ContextDiscriminator(norm=norm, activation=activation, use_global=False)
    _, loc = disc_inputs(2, 64, 32)
    variables = cheap_variables(d, None, loc[:1])
    # Only BatchNorm keeps running statistics; layer norm has a scale and a bias per layer.
    assert bool(variables.get("batch_stats")) == (norm == "batch")
    has_layer_norm = any("LayerNorm" in k for k in variables["params"]["local"])
    assert has_layer_norm == (norm == "layer")
    logits, _ = apply(d, variables, None, loc, train=True)
    assert logits.shape == (2, 1)
    assert np.all(np.isfinite(np.asarray(logits)))


def test_discriminator_activation_option_is_applied():
    _, loc = disc_inputs(2, 64, 32)
    relu = models.ContextDiscriminator(norm="none", activation="relu", use_global=False)
    leaky = models.ContextDiscriminator(norm="none", activation="leaky_relu", use_global=False)
    variables = cheap_variables(relu, None, loc[:1])
    assert not np.allclose(np.asarray(apply(relu, variables, None, loc)),
                           np.asarray(apply(leaky, variables, None, loc)))


def test_discriminator_bfloat16_keeps_float32_params_and_output():
    d = models.ContextDiscriminator(dtype=jnp.bfloat16)
    g, loc = disc_inputs(2, 64, 32)
    shapes = abstract_init(d, g[:1], loc[:1])
    assert all_leaves_dtype(shapes, jnp.float32)
    variables = cheap_variables(d, g[:1], loc[:1])
    logits = apply(d, variables, g, loc)
    assert logits.dtype == jnp.float32 and logits.shape == (2, 1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"norm": "group"}, r"model\.d_norm='group' must be one of.*'batch', 'layer', 'none'"),
        ({"activation": "gelu"},
         r"model\.d_activation='gelu' must be one of.*'relu', 'leaky_relu'"),
    ],
)
def test_discriminator_invalid_option_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        abstract_init(models.ContextDiscriminator(**kwargs), jnp.zeros((1, 64, 64, 3)),
                      jnp.zeros((1, 32, 32, 3)))


def test_make_discriminator_from_config(tiny_config):
    tiny_config.model.discriminator = "local"
    tiny_config.model.d_norm = "layer"
    d = models.make_discriminator(tiny_config.model)
    assert isinstance(d, models.ContextDiscriminator) and not d.use_global and d.norm == "layer"
    tiny_config.model.discriminator = "patch"
    with pytest.raises(ValueError, match=r"model\.discriminator='patch'.*'context', 'local'"):
        models.make_discriminator(tiny_config.model)


# ----------------------------------------------------------------------------------------------
# Receptive field (GLCIC 3.1: dilated convolutions give each output pixel a ~300 px field)
# ----------------------------------------------------------------------------------------------

RF_SIZE = 320  # the smallest multiple of 32 that holds the whole ~300 px field of the centre pixel


def test_completion_receptive_field(tiny_state, capsys):
    """Gradient of one central output pixel w.r.t. the input is non-zero over ~300 px.

    The paper quotes 307 x 307. Counting kernel extents layer by layer for Table 1 (with the
    4x4 stride-2 deconvolutions contributing 2 input pixels each) gives ~301; the measured span
    is what the randomly initialised network actually depends on. Parameters do not depend on the
    image size, so the (already initialised) tiny state's generator is reused (a quarter of the
    paper's channels: the layers, kernels and dilations that make the field are Table 1's).
    """
    net = models.make_generator(config_lib.shrink_to_tiny(config_lib.base_config()).model)
    variables = {"params": tiny_state.g.params, "batch_stats": tiny_state.g.batch_stats}
    x = jax.random.uniform(jax.random.PRNGKey(1), (1, RF_SIZE, RF_SIZE, 4), jnp.float32)
    c = RF_SIZE // 2

    @jax.jit
    def grad_of_centre(x):
        return jax.grad(lambda x: net.apply(variables, x, train=False)[0, c, c, 0])(x)

    g = np.abs(np.asarray(grad_of_centre(x))).sum(axis=(0, 3))  # [H, W]
    rows = np.nonzero(g.sum(axis=1) > 0)[0]
    cols = np.nonzero(g.sum(axis=0) > 0)[0]
    span_rows = int(rows.max() - rows.min() + 1)
    span_cols = int(cols.max() - cols.min() + 1)
    with capsys.disabled():
        print(f"\nreceptive field: {span_rows} x {span_cols} px "
              f"(rows {rows.min()}..{rows.max()}, cols {cols.min()}..{cols.max()}, centre {c})")
    # The field must lie strictly inside the input, or the measure would be truncated.
    assert rows.min() > 0 and rows.max() < RF_SIZE - 1
    assert cols.min() > 0 and cols.max() < RF_SIZE - 1
    assert 280 <= span_rows <= 320
    assert 280 <= span_cols <= 320
    # The field contains the centre pixel.
    assert rows.min() <= c <= rows.max() and cols.min() <= c <= cols.max()


# ----------------------------------------------------------------------------------------------
# model.width: a channel multiplier for quick CPU runs (1.0 = the paper's networks)
# ----------------------------------------------------------------------------------------------


def test_width_multiplier_scales_channels_and_keeps_paper_default(tiny_config):
    """width=1.0 (the default everywhere) is Table 1; width=0.25 quarters every hidden layer."""
    x = jnp.zeros((1, 32, 32, 4))
    assert config_lib.base_config().model.width == 1.0  # every full config: the paper's
    assert config_lib.shrink_to_tiny(config_lib.base_config()).model.width == 0.25  # smoke runs
    paper = abstract_init(models.make_generator(tiny_config.model), x)["params"]
    assert models.count_params(paper) == 6_072_131
    tiny_config.model.width = 0.25
    narrow = abstract_init(models.make_generator(tiny_config.model), x)["params"]
    kernels = [leaf.shape for leaf in jax.tree_util.tree_leaves(narrow) if leaf.ndim == 4]
    assert (5, 5, 4, 16) in kernels and (3, 3, 8, 3) in kernels  # 64/4 first; output stays RGB
    assert max(k[-1] for k in kernels) == 64  # 256 / 4
    # Convolutions scale with width^2 (biases and BatchNorm with width): ~1/16 of the paper's.
    assert 6_072_131 / 17 < models.count_params(narrow) < 6_072_131 / 15
    d = models.make_discriminator(tiny_config.model)
    d_params = abstract_init(d, jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 16, 16, 3)))["params"]
    assert d_params["head"]["kernel"].shape == (2 * 256, 1)  # two FC 1024 / 4, one logit


def test_width_is_a_shape_key_and_old_checkpoints_mean_width_one(tiny_config):
    from glcic_jax import checkpointing

    stored = tiny_config.to_dict()
    del stored["model"]["width"]  # a checkpoint written before model.width existed
    checkpointing.check_compatible(stored, tiny_config)
    tiny_config.model.width = 0.5
    with pytest.raises(checkpointing.IncompatibleCheckpointError, match=r"model\.width"):
        checkpointing.check_compatible(stored, tiny_config)


def test_stored_parameters_are_checked_without_running_their_initializers():
    """Applying a network must not trace its layers' initializers (flax's own shape check
    evaluates each one abstractly: a fifth of tracing the full-width network on every cold
    `complete`), yet `init` must still use them, and a stored parameter of the wrong shape must
    still fail with flax's error."""
    import flax.errors

    calls = []

    def kernel_init(key, shape, dtype=jnp.float32):
        calls.append(shape)
        return jax.random.normal(key, shape, dtype)

    layers = [models.Conv(8, (3, 3), kernel_init=kernel_init),
              models.Dense(8, kernel_init=kernel_init)]
    for layer, x in zip(layers, [jnp.ones((1, 6, 6, 4)), jnp.ones((2, 4))]):
        calls.clear()
        variables = layer.init(KEY, x)
        assert calls == [variables["params"]["kernel"].shape]
        calls.clear()
        y = layer.apply(variables, x)
        jax.jit(layer.apply)(variables, x)
        assert calls == []
        ref = variables["params"]
        np.testing.assert_allclose(  # the stored kernel is the one applied
            y, layer.apply({"params": {**ref, "kernel": ref["kernel"] * 2}}, x) / 2
            + ref["bias"] / 2, rtol=1e-6, atol=1e-6)
        wrong = {"params": {**ref, "kernel": jnp.zeros(ref["kernel"].shape[:-1] + (9,))}}
        with pytest.raises(flax.errors.ScopeParamShapeError):
            layer.apply(wrong, x)

    # Every layer of the networks with parameters takes this path (same names as flax's).
    bn = models.BatchNorm(use_running_average=True)
    v = bn.init(KEY, jnp.ones((1, 2, 2, 3)))
    with pytest.raises(flax.errors.ScopeParamShapeError):
        bn.apply({**v, "params": {**v["params"], "scale": jnp.ones((4,))}}, jnp.ones((1, 2, 2, 3)))
    tree = abstract_init(models.CompletionNetwork(width=0.125), jnp.zeros((1, 16, 16, 4)))
    assert set(tree["params"]["PaddedConv_0"]) == {"Conv_0"}
    assert {"BatchNorm_0", "ConvTranspose_0"} <= set(tree["params"])
