r"""The authors' trained completion network (Torch7) -> a workdir every glcic_jax tool uses.

  python -m glcic_jax.convert --source=completionnet_places2.t7 --workdir=runs/official_places2
  python -m glcic_jax.complete --workdir=runs/official_places2 --image=in.png --mask=mask.png \
      --output=out.png [--postprocess]
  python -m glcic_jax.main --config=configs/places2.py --workdir=runs/official_places2 --mode=eval

The file (from the authors' project page, licence CC BY-NC-SA 4.0: we never redistribute it) is
what `torch.save` wrote in their training code: a table `{model = nn.Sequential of 50 modules,
mean = the dataset's mean pixel}`. The 50 modules are the paper's Table 1, each layer a
`SpatialConvolution` / `SpatialDilatedConvolution` (plain 3x3 layers may be dilated ones with
dilation 1) or a `SpatialFullConvolution(4, 4, 2, 2, 1, 1)`, then `SpatialBatchNormalization`
and `ReLU`, and a `Sigmoid` at the end. An nngraph `gModule` is converted when its nodes form that
same chain. Layer by layer, from the nn definitions:

  convolution weight      nOutputPlane x nInputPlane x kH x kW -> flax kernel [kH, kW, in, out]
  full convolution weight nInputPlane x nOutputPlane x kH x kW -> flax kernel [kH, kW, in, out],
                          spatially flipped (Torch's full convolution is the transpose of a
                          correlation; flax's ConvTranspose without `transpose_kernel` is not)
  batch normalisation     weight, bias, running_mean, running_var (running_std in files older
                          than nn's BatchNormalization version 2: var = std^-2 - eps); the file's
                          eps is folded into the running variance (var + eps - 1e-5), exact in
                          inference, since our BatchNorm's eps is 1e-5

The workdir holds one ordinary checkpoint (`checkpoints/<num_train_steps>`, so that training in it
has nothing left to do): the converted completion network, the file's mean pixel, a freshly
initialised discriminator (the authors did not release theirs) and the config (by default
`configs/places2.py`) with `model.input_norm='mean_subtract'`, which makes every tool build the
network input as `inpaint.lua` does: image minus the mean pixel, 0 in the hole, plus the mask.
`converted.json` beside it records the source file and its MD5.

Errors (not a Torch7 file, truncated, another architecture, an nngraph that is not a chain, a
non-empty workdir) print one line and exit with status 1; nothing is written to the workdir.
The workdir is written beside its final place as `.converting-XXXXXXXX` and renamed when
complete; such a folder left by a killed conversion is removed by the next one (one line).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from typing import Any, Sequence

import numpy as np

from glcic_jax import cli, errors, leftovers, torch7

# The authors' Places2 model (project page, 47 MB).
OFFICIAL_PLACES2_MD5 = "b1527543a0ee22c23fca44cefdf48531"
OFFICIAL_PLACES2_PARAMS = 6_072_131

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs", "places2.py")
# Module classes accepted for each role (cudnn's are the same layers with the same fields).
_CONV = ("nn.SpatialConvolution", "nn.SpatialDilatedConvolution", "cudnn.SpatialConvolution",
         "nn.SpatialConvolutionMM")
_FULL_CONV = ("nn.SpatialFullConvolution", "cudnn.SpatialFullConvolution")
_BN = ("nn.SpatialBatchNormalization", "cudnn.SpatialBatchNormalization")
_RELU = ("nn.ReLU", "cudnn.ReLU")
_SIGMOID = ("nn.Sigmoid", "cudnn.Sigmoid")
_SKIPPED = ("nn.Identity",)  # no-ops nngraph models often start with


class ConversionError(errors.UserError, ValueError):
    """The file is not the authors' completion network (or the flags or the workdir do not fit).

    It covers the source file, the flags and the target workdir alike, so it derives from the
    family's base rather than one kind (ValueError: what it derived from before)."""


# ----------------------------------------------------------------------------------------------
# Reading the file


def _modules_of(model: Any) -> list:
    """The model's layers in order: an nn.Sequential (nested ones flattened) or a chain gModule."""
    if not isinstance(model, torch7.TorchObject):
        raise ConversionError(f"its 'model' is a {type(model).__name__}, not an nn module")
    name = model.typename
    if name == "nn.Sequential":
        out = []
        for m in torch7.array_part(model.get("modules", {})):
            out.extend(_modules_of(m) if getattr(m, "typename", "") == "nn.Sequential" else [m])
        return out
    if name == "nn.gModule":
        return _gmodule_chain(model)
    raise ConversionError(f"its model is a {name}; only nn.Sequential and nngraph gModule "
                          f"models are supported")


def _gmodule_chain(model: torch7.TorchObject) -> list:
    """The modules of an nngraph gModule whose forward graph is one chain, in order."""
    nodes = torch7.array_part(model.get("forwardnodes", {}))
    if not nodes:
        raise ConversionError("its nngraph gModule has no forward nodes")
    for i, node in enumerate(nodes):
        children = torch7.array_part(node.get("children", {}))
        expected = [nodes[i + 1]] if i + 1 < len(nodes) else []
        if len(children) != len(expected) or any(a is not b for a, b in zip(children, expected)):
            data = node.get("data", {}) or {}
            module = data.get("module") if isinstance(data, dict) else None
            what = getattr(module, "typename", "a node without module")
            raise ConversionError(
                f"its nngraph gModule is not a chain: forward node {i + 1} ({what}) feeds "
                f"{len(children)} node(s) out of order; only single-path graphs (the "
                f"Table 1 network as a graph) are supported")
    modules = []
    for node in nodes:
        data = node.get("data", {}) or {}
        module = data.get("module") if isinstance(data, dict) else None
        if module is not None:
            modules.append(module)
    return modules


def _layer_spec() -> list[tuple[str, int, int, int, int, int]]:
    """Table 1 as (kind, kernel, dilation, stride, in, out) per layer; kind conv/deconv/output."""
    from glcic_jax import models

    spec, channels = [], 4  # RGB + mask
    for kind, kernel, dilation, stride, features in models.COMPLETION_LAYERS:
        spec.append((kind, kernel, dilation, stride, channels, features))
        channels = features
    return spec


def _field(module, name: str, where: str, default: Any = None) -> Any:
    value = module.get(name, default)
    if value is None:
        raise ConversionError(f"{where}: {module.typename} has no {name}")
    return value


def _array(module, name: str, shape: tuple, where: str) -> np.ndarray:
    value = _field(module, name, where)
    arr = np.asarray(value, np.float32)
    if arr.size != int(np.prod(shape)):
        raise ConversionError(f"{where}: {module.typename}.{name} has shape {list(arr.shape)}, "
                              f"expected {list(shape)}")
    arr = arr.reshape(shape)  # older nn versions store conv weights as 2-D (out, in*kH*kW)
    if not np.all(np.isfinite(arr)):
        raise ConversionError(f"{where}: {module.typename}.{name} holds NaN or inf")
    return arr


def _expect(module, classes: Sequence[str], where: str, role: str) -> None:
    name = getattr(module, "typename", type(module).__name__)
    if name not in classes:
        raise ConversionError(f"{where}: expected {role} ({' or '.join(classes[:2])}), found "
                              f"{name}: not the GLCIC completion network of Table 1")


def _conv(module, kind, kernel, dilation, stride, c_in, c_out, where) -> dict:
    """One convolution's flax params; checks its hyper-parameters against Table 1."""
    if kind == "deconv":
        _expect(module, _FULL_CONV, where, "a full convolution")
        pad, adj = 1, 0  # SpatialFullConvolution(in, out, 4, 4, 2, 2, 1, 1): doubles H and W
        got = {k: module.get(k, 0) for k in ("kW", "kH", "dW", "dH", "padW", "padH", "adjW",
                                              "adjH")}
        want = dict(kW=kernel, kH=kernel, dW=stride, dH=stride, padW=pad, padH=pad, adjW=adj,
                    adjH=adj)
    else:
        _expect(module, _CONV, where, "a convolution")
        pad = dilation * (kernel - 1) // 2
        got = {k: module.get(k, 1 if k.startswith("dilation") else 0)
               for k in ("kW", "kH", "dW", "dH", "padW", "padH", "dilationW", "dilationH")}
        want = dict(kW=kernel, kH=kernel, dW=stride, dH=stride, padW=pad, padH=pad,
                    dilationW=dilation, dilationH=dilation)
    got.update(nInputPlane=module.get("nInputPlane"), nOutputPlane=module.get("nOutputPlane"))
    want.update(nInputPlane=c_in, nOutputPlane=c_out)
    bad = [f"{k}={got[k]} (expected {v})" for k, v in want.items() if got[k] != v]
    if bad:
        raise ConversionError(f"{where}: {module.typename} with {', '.join(bad)}: not the GLCIC "
                              f"completion network of Table 1")
    if kind == "deconv":
        w = _array(module, "weight", (c_in, c_out, kernel, kernel), where)
        # Torch: out[o, y*s - p + ky, ...] += in[i, y, ...] * W[i, o, ky, kx]; flax's
        # ConvTranspose correlates the dilated input with its kernel, hence the flip.
        kernel_arr = w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)
    else:
        w = _array(module, "weight", (c_out, c_in, kernel, kernel), where)
        kernel_arr = w.transpose(2, 3, 1, 0)  # correlation in both: no flip
    bias = module.get("bias")
    bias = (np.zeros(c_out, np.float32) if bias is None
            else _array(module, "bias", (c_out,), where))
    return {"kernel": np.ascontiguousarray(kernel_arr), "bias": bias}


def _batch_norm(module, features: int, where: str) -> tuple[dict, dict, float]:
    """(params, batch_stats, eps) of one SpatialBatchNormalization, eps folded into the var."""
    from glcic_jax import models

    _expect(module, _BN, where, "a batch normalisation")
    eps = float(module.get("eps", 1e-5))
    if not (np.isfinite(eps) and eps >= 0):
        raise ConversionError(f"{where}: batch normalisation eps={eps}")
    mean = _array(module, "running_mean", (features,), where)
    if module.get("running_var") is not None:
        var = _array(module, "running_var", (features,), where).astype(np.float64)
    elif module.get("running_std") is not None:  # nn's BatchNormalization before version 2
        std = _array(module, "running_std", (features,), where).astype(np.float64)
        var = std**-2 - eps
    else:
        raise ConversionError(f"{where}: batch normalisation without running statistics")
    scale = (np.ones(features, np.float32) if module.get("weight") is None
             else _array(module, "weight", (features,), where))
    shift = (np.zeros(features, np.float32) if module.get("bias") is None
             else _array(module, "bias", (features,), where))
    # y = (x - mean) / sqrt(var + eps) * scale + shift. Our BatchNorm adds models.BN_EPSILON:
    # shift the variance by the difference (exact; running averages keep their meaning when
    # fine-tuning). Where that would go negative (eps < 1e-5 and a tiny variance), rescale.
    folded = var + eps - models.BN_EPSILON
    if np.any(folded <= 0):
        scale = (scale * np.sqrt((var + models.BN_EPSILON) / (var + eps))).astype(np.float32)
        folded = var
    if not np.all(np.isfinite(folded)) or np.any(folded < 0):
        raise ConversionError(f"{where}: batch normalisation with a negative running variance")
    return ({"scale": scale, "bias": shift},
            {"mean": mean, "var": folded.astype(np.float32)}, eps)


def torch_to_flax(modules: Sequence[Any]) -> tuple[dict, list[float]]:
    """flax variables of `models.CompletionNetwork` from the 50 Torch modules of Table 1.

    Returns `({'params': ..., 'batch_stats': ...}, the BatchNorm eps of each layer)`.
    """
    layers = [m for m in modules if getattr(m, "typename", "") not in _SKIPPED]
    spec = _layer_spec()
    expected = sum(3 if kind != "output" else 2 for kind, *_ in spec)
    if len(layers) != expected:
        raise ConversionError(f"its model has {len(layers)} modules, the GLCIC completion "
                              f"network of Table 1 has {expected}")
    params: dict = {}
    stats: dict = {}
    eps_list = []
    i = n_conv = n_deconv = n_bn = 0
    for layer, (kind, kernel, dilation, stride, c_in, c_out) in enumerate(spec, 1):
        where = f"layer {layer} (module {i + 1})"
        conv = _conv(layers[i], kind, kernel, dilation, stride, c_in, c_out, where)
        if kind == "deconv":
            params[f"ConvTranspose_{n_deconv}"] = conv
            n_deconv += 1
        else:
            params[f"PaddedConv_{n_conv}"] = {"Conv_0": conv}
            n_conv += 1
        i += 1
        if kind == "output":
            _expect(layers[i], _SIGMOID, f"module {i + 1}", "the output Sigmoid")
            break
        bn_params, bn_stats, eps = _batch_norm(layers[i], c_out, f"layer {layer} (module "
                                               f"{i + 1})")
        params[f"BatchNorm_{n_bn}"], stats[f"BatchNorm_{n_bn}"] = bn_params, bn_stats
        eps_list.append(eps)
        n_bn += 1
        _expect(layers[i + 1], _RELU, f"layer {layer} (module {i + 2})", "a ReLU")
        i += 2
    return {"params": params, "batch_stats": stats}, eps_list


def read_torch_model(path: str) -> tuple[dict, np.ndarray, dict]:
    """Read and check the authors' file: `(flax variables, mean pixel [3], info)`.

    Raises:
      ConversionError: a one-line reason (missing, not Torch7, truncated, other architecture).
    """
    if not os.path.isfile(path):
        raise ConversionError(f"--source {path!r} does not exist (or is not a file)")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConversionError(f"cannot read {path!r}: {e.strerror or e}") from e
    try:
        top = torch7.loads(data)
    except torch7.Torch7Error as e:
        raise ConversionError(f"{path!r} is not a readable Torch7 file: {e}") from e
    if not isinstance(top, dict) or "model" not in top or "mean" not in top:
        keys = sorted(map(str, top)) if isinstance(top, dict) else getattr(
            top, "typename", type(top).__name__)
        raise ConversionError(f"{path!r} is a Torch7 file but not the authors' completion model: "
                              f"expected a table with 'model' and 'mean', found {keys}")
    try:
        modules = _modules_of(top["model"])
        variables, eps = torch_to_flax(modules)
    except ConversionError as e:
        raise ConversionError(f"{path!r}: {e}") from e
    mean = np.asarray(top["mean"], np.float64).reshape(-1) if isinstance(
        top["mean"], np.ndarray) else np.asarray([], np.float64)
    if mean.shape != (3,) or not np.all(np.isfinite(mean)) or np.any((mean < 0) | (mean > 1)):
        raise ConversionError(f"{path!r}: its 'mean' must be 3 numbers in [0, 1] (the RGB mean "
                              f"pixel), found {np.asarray(top['mean']).ravel()[:6].tolist()}")
    n_params = int(sum(a.size for a in _leaves(variables["params"])))
    info = {
        "source": os.path.abspath(path),
        "md5": hashlib.md5(data).hexdigest(),
        "bytes": len(data),
        "model_class": top["model"].typename,
        "modules": len(modules),
        "parameters": n_params,
        "mean_pixel": [float(v) for v in mean],
        "batchnorm_eps": sorted(set(eps)),
    }
    return variables, mean.astype(np.float32), info


def _leaves(tree) -> list[np.ndarray]:
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _leaves(v)]
    return [tree]


# ----------------------------------------------------------------------------------------------
# Writing the workdir


def load_config(path: str | None):
    """A config file (`path[:arg]`, default configs/places2.py) set up for the converted model."""
    import importlib.util

    from glcic_jax import config_lib

    path = path or _DEFAULT_CONFIG
    file_part, _, arg = path.partition(":")
    if not os.path.isfile(file_part):
        if path != _DEFAULT_CONFIG:
            raise ConversionError(f"--config {file_part!r} does not exist")
        config = config_lib.base_config()  # an installed package without configs/: Places2's
    else:
        try:
            spec = importlib.util.spec_from_file_location("glcic_convert_config", file_part)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            config = module.get_config(arg or None)
        except Exception as e:  # a config file's own error: one line
            raise ConversionError(f"cannot load --config {path!r}: {type(e).__name__}: {e}")
    # What the converted network is: Table 1, zero padding, inpaint.lua's input.
    config.model.input_norm = "mean_subtract"
    config.model.padding = "zero"
    config.model.two_stage = False
    config.model.width = 1.0  # Table 1's channels (a `:tiny` config narrows them)
    return config


def _check_workdir(workdir: str) -> None:
    if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
        raise ConversionError(f"--workdir {workdir!r} exists and is not an empty folder: choose "
                              f"a new one (nothing was written)")


def _fresh_leaf(name: str, leaf, rng: np.random.Generator) -> np.ndarray:
    """flax's default initialisation of one parameter, drawn with numpy (no XLA compilation):
    kernels LeCun-normal (truncated at 2 sigma, fan in), scales and variances 1, the rest 0."""
    shape, dtype = tuple(leaf.shape), leaf.dtype
    if name.startswith((".g.params", ".g.batch_stats")):
        return None  # replaced by the converted network
    if "opt_state" not in name and name.endswith("['kernel']"):
        fan_in = int(np.prod(shape[:-1]))
        # flax's lecun_normal: truncated normal on [-2, 2] rescaled to variance 1 / fan_in.
        z = rng.standard_normal(shape)
        while np.any(bad := np.abs(z) > 2):
            z[bad] = rng.standard_normal(int(bad.sum()))
        return (z / 0.87962566103423978 * np.sqrt(1.0 / fan_in)).astype(dtype)
    if "opt_state" not in name and name.endswith(("['scale']", "['var']")):
        return np.ones(shape, dtype)
    return np.zeros(shape, dtype)  # biases, running means, optimizer accumulators, counts


def build_state(config, variables: dict, mean_pixel: np.ndarray):
    """A GANState holding the converted completion network and a fresh discriminator.

    The state's structure comes from `jax.eval_shape(state_initializer(...))`; the
    discriminator and the optimizer states are filled on the host (flax's default init, zero
    accumulators), which spares compiling the networks' initialisation (minutes on a busy CPU).
    """
    import jax

    from glcic_jax import state as state_lib

    nets = state_lib.create_networks(config)
    abstract = jax.eval_shape(state_lib.state_initializer(
        config, nets, jax.random.PRNGKey(0), mean_pixel))
    ours = {"params": abstract.g.params, "batch_stats": abstract.g.batch_stats}
    if jax.tree_util.tree_structure(ours) != jax.tree_util.tree_structure(variables):
        raise ConversionError("the converted layers do not match this version's "
                              "CompletionNetwork (parameter names differ)")
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ours),
                            jax.tree_util.tree_leaves(variables)):
        if tuple(a.shape) != tuple(np.shape(b)):
            raise ConversionError(f"converted {jax.tree_util.keystr(path)} has shape "
                                  f"{np.shape(b)}, the CompletionNetwork expects {a.shape}")
    rng = np.random.default_rng(int(config.seed))
    state = jax.tree_util.tree_map_with_path(
        lambda path, leaf: _fresh_leaf(jax.tree_util.keystr(path), leaf, rng), abstract)
    g = state.g.replace(params=jax.tree_util.tree_map(np.asarray, variables["params"]),
                        batch_stats=jax.tree_util.tree_map(np.asarray,
                                                           variables["batch_stats"]))
    key = rng.integers(0, 2**32, abstract.rng.shape, dtype=np.uint64).astype(abstract.rng.dtype)
    state = state.replace(step=np.asarray(int(config.num_train_steps), abstract.step.dtype),
                          rng=key, mean_pixel=np.asarray(mean_pixel, np.float32), g=g)
    return jax.device_put(state)


def _verify(workdir: str, variables: dict, mean_pixel: np.ndarray) -> None:
    """Load the written workdir as every tool will (`inference.load`) and check that it holds
    exactly the converted network, its input setting and the file's mean pixel."""
    import jax

    from glcic_jax import inference

    completer = inference.load(workdir)
    same = jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda a, b: bool(np.array_equal(np.asarray(a), b)), completer.variables, variables))
    if not same or completer.input_norm != "mean_subtract" or not np.array_equal(
            completer.mean_pixel, np.asarray(mean_pixel, np.float32)):
        raise RuntimeError("the written checkpoint does not restore to the converted network")


def convert(source: str, workdir: str, config_path: str | None = None) -> dict:
    """Convert `source` into a new workdir; returns the info written to converted.json.

    Everything is checked before anything is written; the workdir appears complete or not at all
    (written beside it under a temporary name, then renamed).
    """
    from glcic_jax import checkpointing

    workdir = os.path.abspath(workdir)
    _check_workdir(workdir)
    config = load_config(config_path)
    variables, mean_pixel, info = read_torch_model(source)
    state = build_state(config, variables, mean_pixel)
    parent = os.path.dirname(workdir)
    # Conversions killed before their rename left their temporary folders here: remove them
    # (never one that a running conversion holds; see leftovers.py).
    cleaned = leftovers.describe(leftovers.remove_abandoned(parent, (leftovers.CONVERTING,)),
                                 "unfinished conversion", "unfinished conversions")
    if cleaned:
        print(f"note: {cleaned}")
    try:
        os.makedirs(parent, exist_ok=True)
        tmp, lock = leftovers.temp_folder(parent, leftovers.CONVERTING)
    except OSError as e:
        raise ConversionError(f"cannot write beside --workdir {workdir!r}: {e.strerror or e}")
    try:
        step = int(config.num_train_steps)
        ckpt = checkpointing.Checkpointer(tmp, config)
        ckpt.save(step, state, config)
        ckpt.close()
        _verify(tmp, variables, mean_pixel)
        info.update(step=step, config_input_norm=config.model.input_norm,
                    official_places2=info["md5"] == OFFICIAL_PLACES2_MD5)
        with open(os.path.join(tmp, "converted.json"), "w") as f:
            json.dump(info, f, indent=1)
        _check_workdir(workdir)
        if os.path.isdir(workdir):
            os.rmdir(workdir)  # empty: checked above
        os.rename(tmp, workdir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (OSError, checkpointing.CheckpointWriteError)):
            raise ConversionError(f"cannot write --workdir {workdir!r}: {e}") from e
        raise
    finally:
        os.close(lock)
    return info


# ----------------------------------------------------------------------------------------------
# Command line


def _define_flags(fv):
    from absl import flags

    flags.DEFINE_string("source", None, "The authors' Torch7 file, e.g. "
                        "completionnet_places2.t7.", flag_values=fv)
    flags.DEFINE_string("workdir", None, "New (or empty) folder to write the converted model to.",
                        flag_values=fv)
    flags.DEFINE_string("config", None, "Config stored with the model (data and hole settings "
                        "for eval, random holes and fine-tuning); default configs/places2.py.",
                        flag_values=fv)


def _help() -> str:
    return __doc__.split("The file")[0]


COMMAND = cli.Command("python -m glcic_jax.convert", _help(), lambda fv: _define_flags(fv),
                      interrupted="nothing was written to the workdir")


def run(argv: Sequence[str]) -> int:
    """The command line, in-process: `argv[0]` is the program name. Returns the exit status."""
    return COMMAND.run(argv, _convert)


def _convert(fv) -> int:
    if not fv.source or not fv.workdir:
        raise ConversionError("--source=FILE.t7 and --workdir=DIR are required")
    info = convert(fv.source, fv.workdir, fv.config)
    known = ("the authors' published Places2 model" if info["official_places2"] else
             f"not the published Places2 file (MD5 {OFFICIAL_PLACES2_MD5}); converted anyway")
    print(f"Read {fv.source}: {info['model_class']} of {info['modules']} modules, "
          f"{info['parameters']:,} parameters, mean pixel "
          f"{[round(v, 4) for v in info['mean_pixel']]}, BatchNorm eps "
          f"{info['batchnorm_eps']}; MD5 {info['md5']}: {known}.")
    print(f"Wrote {os.path.abspath(fv.workdir)} (checkpoint step {info['step']}). Complete a "
          f"photo with:\n  python -m glcic_jax.complete --workdir={fv.workdir} --image=IN.png "
          f"--mask=MASK.png --output=OUT.png")
    return 0


def main() -> None:
    sys.exit(run(sys.argv))


if __name__ == "__main__":
    main()
