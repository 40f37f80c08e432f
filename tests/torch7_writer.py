"""Test helper: write Torch7 files (`torch.save`'s binary format) and a synthetic GLCIC model.

The real `completionnet_places2.t7` is never downloaded (CC BY-NC-SA). This module writes a file
of the same structure from torch7's `File.lua` and `generic/{Tensor,Storage}.c` (type tags,
object indices for shared objects, "V 1" version strings, int64 sizes / strides / 1-based
offsets), with nn's module fields (SpatialConvolution: weight nOutputPlane x nInputPlane x kH x kW;
SpatialFullConvolution: nInputPlane x nOutputPlane x kH x kW; SpatialBatchNormalization:
running_mean, running_var, eps). `reference_forward` runs such a model with numpy from nn's layer
definitions, independently of glcic_jax's flax modules.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

# Table 1 written out here on its own (kind, kernel, dilation, stride, out channels), so the test
# does not derive the file from the code it checks.
TABLE_1 = [
    ("conv", 5, 1, 1, 64), ("conv", 3, 1, 2, 128), ("conv", 3, 1, 1, 128),
    ("conv", 3, 1, 2, 256), ("conv", 3, 1, 1, 256), ("conv", 3, 1, 1, 256),
    ("conv", 3, 2, 1, 256), ("conv", 3, 4, 1, 256), ("conv", 3, 8, 1, 256),
    ("conv", 3, 16, 1, 256), ("conv", 3, 1, 1, 256), ("conv", 3, 1, 1, 256),
    ("deconv", 4, 1, 2, 128), ("conv", 3, 1, 1, 128), ("deconv", 4, 1, 2, 64),
    ("conv", 3, 1, 1, 32), ("output", 3, 1, 1, 3),
]


class Obj:
    """A table-based Torch class instance (nn modules, nngraph nodes)."""

    def __init__(self, typename: str, fields: dict | None = None, version: int = 1):
        self.typename, self.fields, self.version = typename, dict(fields or {}), version


class Storage:
    def __init__(self, array: np.ndarray, typename: str = "torch.FloatStorage"):
        self.array, self.typename = np.ascontiguousarray(array).ravel(), typename


class Tensor:
    """A view into a Storage: size, stride (elements), 0-based offset."""

    def __init__(self, storage: Storage, size, stride=None, offset: int = 0,
                 typename: str = "torch.FloatTensor"):
        size = list(size)
        if stride is None:
            stride = [int(np.prod(size[i + 1:])) for i in range(len(size))]
        self.storage, self.size, self.stride, self.offset = storage, size, list(stride), offset
        self.typename = typename


def tensor(array, typename: str = "torch.FloatTensor") -> Tensor:
    """A contiguous tensor with its own storage."""
    dtype = {"torch.FloatTensor": np.float32, "torch.DoubleTensor": np.float64}[typename]
    arr = np.asarray(array, dtype)
    return Tensor(Storage(arr, typename.replace("Tensor", "Storage")), arr.shape,
                  typename=typename)


def lua_array(items) -> dict:
    return {i + 1: v for i, v in enumerate(items)}


class Writer:
    def __init__(self):
        self.out = bytearray()
        self.index: dict[int, int] = {}
        self.keep = []  # objects must outlive the id() memo

    def int(self, v):
        self.out += struct.pack("<i", v)

    def long(self, v):
        self.out += struct.pack("<q", v)

    def string(self, s: str):
        raw = s.encode()
        self.int(len(raw))
        self.out += raw

    def _ref(self, obj) -> bool:
        """Write the object's index; True if it was written before (only the index is needed)."""
        key = id(obj)
        if key in self.index:
            self.int(self.index[key])
            return True
        self.index[key] = len(self.index) + 1
        self.keep.append(obj)
        self.int(self.index[key])
        return False

    def obj(self, x: Any):
        if x is None:
            self.int(0)
        elif isinstance(x, bool):
            self.int(5)
            self.int(1 if x else 0)
        elif isinstance(x, (int, float)):
            self.int(1)
            self.out += struct.pack("<d", float(x))
        elif isinstance(x, str):
            self.int(2)
            self.string(x)
        elif isinstance(x, dict):
            self.int(3)
            if not self._ref(x):
                self.int(len(x))
                for k, v in x.items():
                    self.obj(k)
                    self.obj(v)
        elif isinstance(x, np.ndarray):
            self.obj(tensor(x))
        elif isinstance(x, (Obj, Tensor, Storage)):
            self.int(4)
            if self._ref(x):
                return
            self.string(f"V {getattr(x, 'version', 1)}")
            self.string(x.typename)
            if isinstance(x, Storage):
                self.long(x.array.size)
                self.out += x.array.astype(x.array.dtype.newbyteorder("<")).tobytes()
            elif isinstance(x, Tensor):
                self.int(len(x.size))
                for v in x.size + x.stride:
                    self.long(v)
                self.long(x.offset + 1)
                self.obj(x.storage)
            else:
                self.obj(x.fields)
        else:
            raise TypeError(type(x))


def dumps(x) -> bytes:
    w = Writer()
    w.obj(x)
    return bytes(w.out)


# ----------------------------------------------------------------------------------------------
# numpy reference forward (NCHW, float64), from nn's layer definitions


def conv2d(x, w, b, stride, pad, dilation):
    """nn.SpatialDilatedConvolution: out[o, y, x] = b[o] + sum w[o, i, ky, kx] *
    xpad[i, y*s + ky*d, x*s + kx*d], zero padding `pad` on each side."""
    c, h, wd = x.shape
    k = w.shape[-1]
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    ho = (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    wo = (wd + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    out = np.zeros((w.shape[0], ho, wo)) + b[:, None, None]
    for ky in range(k):
        for kx in range(k):
            patch = xp[:, ky * dilation: ky * dilation + stride * (ho - 1) + 1: stride,
                       kx * dilation: kx * dilation + stride * (wo - 1) + 1: stride]
            out += np.einsum("oi,ihw->ohw", w[:, :, ky, kx], patch)
    return out


def full_conv2d(x, w, b, stride, pad):
    """nn.SpatialFullConvolution (adj 0): each input pixel (y, x) adds w[i, o, ky, kx] * x[i, y, x]
    at output (y*s - pad + ky, x*s - pad + kx); output size (H - 1)*s - 2*pad + k."""
    c, h, wd = x.shape
    k = w.shape[-1]
    full = np.zeros((w.shape[1], (h - 1) * stride + k, (wd - 1) * stride + k))
    for ky in range(k):
        for kx in range(k):
            full[:, ky: ky + stride * (h - 1) + 1: stride,
                 kx: kx + stride * (wd - 1) + 1: stride] += np.einsum("io,ihw->ohw",
                                                                      w[:, :, ky, kx], x)
    ho, wo = (h - 1) * stride - 2 * pad + k, (wd - 1) * stride - 2 * pad + k
    return full[:, pad: pad + ho, pad: pad + wo] + b[:, None, None]


def batch_norm_eval(x, weight, bias, running_mean, running_var, eps):
    inv = 1.0 / np.sqrt(running_var + eps)
    return ((x - running_mean[:, None, None]) * inv[:, None, None] * weight[:, None, None]
            + bias[:, None, None])


def _as_np(t) -> np.ndarray:
    if isinstance(t, np.ndarray):
        return t.astype(np.float64)
    st = t.storage.array
    return np.lib.stride_tricks.as_strided(
        st[t.offset:], t.size, [s * st.itemsize for s in t.stride]).astype(np.float64)


def reference_forward(modules: list, x: np.ndarray) -> np.ndarray:
    """Run a list of nn module `Obj`s on one [C, H, W] input (float64)."""
    for m in modules:
        f = m.fields
        name = m.typename
        if name in ("nn.SpatialConvolution", "nn.SpatialDilatedConvolution"):
            assert f["padW"] == f["padH"] and f["dW"] == f["dH"]
            x = conv2d(x, _as_np(f["weight"]), _as_np(f["bias"]), f["dW"], f["padW"],
                       f.get("dilationW", 1))
        elif name == "nn.SpatialFullConvolution":
            x = full_conv2d(x, _as_np(f["weight"]), _as_np(f["bias"]), f["dW"], f["padW"])
        elif name == "nn.SpatialBatchNormalization":
            x = batch_norm_eval(x, _as_np(f["weight"]), _as_np(f["bias"]),
                                _as_np(f["running_mean"]), _as_np(f["running_var"]), f["eps"])
        elif name == "nn.ReLU":
            x = np.maximum(x, 0.0)
        elif name == "nn.Sigmoid":
            x = 1.0 / (1.0 + np.exp(-x))
        elif name == "nn.Identity":
            pass
        else:
            raise ValueError(name)
    return x


# ----------------------------------------------------------------------------------------------
# A synthetic completion network with the official file's structure


def synthetic_model(seed: int = 0, shared_storage: bool = True, calib_size: int = 32,
                    dilated_plain=(2, 4, 10), big_eps=(3, 11)) -> tuple[dict, list]:
    """(the table `{model=nn.Sequential, mean=...}`, the list of module Objs).

    Conv weights and biases follow nn's default init (uniform, 1/sqrt(fan in)); BatchNorm's
    running statistics are set near the statistics a random calibration image actually produces
    (means shifted, variances scaled by 0.5..2), so that activations stay in a useful range
    through 17 layers as in a trained network, and differ from them so that they matter. Layers
    in `dilated_plain` (1-based) are SpatialDilatedConvolution with dilation 1; layers in
    `big_eps` use eps 1e-3 (and some tiny variances). With `shared_storage`, all weights and
    biases are views into one FloatStorage, as after getParameters().
    """
    rng = np.random.default_rng(seed)
    # Calibration input as inpaint.lua builds it: image minus the mean, a zeroed hole, the mask.
    x = rng.uniform(-0.45, 0.55, (4, calib_size, calib_size))
    x[3] = 0.0
    x[:, calib_size // 4: calib_size // 2, calib_size // 4: 3 * calib_size // 4] = 0.0
    x[3, calib_size // 4: calib_size // 2, calib_size // 4: 3 * calib_size // 4] = 1.0
    modules, params = [], []
    c_in = 4
    for layer, (kind, k, dil, stride, c_out) in enumerate(TABLE_1, 1):
        bound = 1.0 / np.sqrt(k * k * c_in)
        if kind == "deconv":
            w = rng.uniform(-bound, bound, (c_in, c_out, k, k)).astype(np.float32)
            b = rng.uniform(-bound, bound, c_out).astype(np.float32)
            conv = Obj("nn.SpatialFullConvolution", dict(
                nInputPlane=c_in, nOutputPlane=c_out, kW=k, kH=k, dW=2, dH=2, padW=1, padH=1,
                adjW=0, adjH=0, train=False))
        else:
            w = rng.uniform(-bound, bound, (c_out, c_in, k, k)).astype(np.float32)
            b = rng.uniform(-bound, bound, c_out).astype(np.float32)
            pad = dil * (k - 1) // 2
            dilated = dil > 1 or layer in dilated_plain
            fields = dict(nInputPlane=c_in, nOutputPlane=c_out, kW=k, kH=k, dW=stride,
                          dH=stride, padW=pad, padH=pad, train=False)
            if dilated:
                fields.update(dilationW=dil, dilationH=dil)
            conv = Obj("nn.SpatialDilatedConvolution" if dilated else "nn.SpatialConvolution",
                       fields)
        conv.fields["weight"], conv.fields["bias"] = w, b
        params += [(conv, "weight"), (conv, "bias")]
        modules.append(conv)
        x = reference_forward([conv], x)
        if kind == "output":
            modules.append(Obj("nn.Sigmoid", {"train": False}))
            break
        eps = 1e-3 if layer in big_eps else 1e-5
        mu, var = x.mean(axis=(1, 2)), x.var(axis=(1, 2))
        running_mean = (mu + rng.normal(0, 0.3, c_out) * np.sqrt(var)).astype(np.float32)
        running_var = (var * rng.uniform(0.5, 2.0, c_out)).astype(np.float32)
        if layer in big_eps:
            running_var[:4] = rng.uniform(1e-5, 1e-3, 4)  # eps matters here
        bn = Obj("nn.SpatialBatchNormalization", dict(
            weight=rng.uniform(0.5, 1.5, c_out).astype(np.float32),
            bias=rng.normal(0, 0.2, c_out).astype(np.float32),
            running_mean=running_mean, running_var=running_var, eps=eps, momentum=0.1,
            affine=True, nDim=4, train=False), version=2)
        params += [(bn, "weight"), (bn, "bias")]
        relu = Obj("nn.ReLU", dict(inplace=True, threshold=0, val=0, train=False))
        modules += [bn, relu]
        x = reference_forward([bn, relu], x)
        c_in = c_out
    # Tensors: one shared flat storage for the parameters (getParameters()), or one each.
    if shared_storage:
        flat = np.concatenate([m.fields[n].ravel() for m, n in params]).astype(np.float32)
        storage, offset = Storage(flat), 0
        for m, n in params:
            arr = m.fields[n]
            m.fields[n] = Tensor(storage, arr.shape, offset=offset)
            offset += arr.size
    for m in modules:
        for n, v in list(m.fields.items()):
            if isinstance(v, np.ndarray):
                m.fields[n] = tensor(v)
    model = Obj("nn.Sequential", {"modules": lua_array(modules), "train": False})
    mean = tensor(np.array([0.4560, 0.4472, 0.4155]), "torch.DoubleTensor")
    return {"model": model, "mean": mean}, modules


def gmodule_of(modules: list, branch: bool = False) -> Obj:
    """An nngraph gModule whose forward nodes chain `modules` (nngraph's fields: forwardnodes,
    each a graph node with `data.module` and `children`, the dummy input and output nodes
    without module). With `branch`, one node feeds two successors (not a chain)."""
    def node(module=None):
        data = {"module": module} if module is not None else {"input": {}}
        return Obj("nngraph.Node", {"data": data, "children": {}, "id": 0, "visited": False,
                                    "marked": False})
    nodes = [node()] + [node(m) for m in modules] + [node()]
    for a, b in zip(nodes, nodes[1:]):
        a.fields["children"] = {1: b, b: 1}  # graph.Node keeps child -> index too
    if branch:
        nodes[3].fields["children"] = {1: nodes[4], 2: nodes[6], nodes[4]: 1, nodes[6]: 2}
    return Obj("nn.gModule", {"forwardnodes": lua_array(nodes), "modules": lua_array(modules),
                              "innode": nodes[0], "outnode": nodes[-1], "train": False})
