"""Analytic FLOP model of GLCIC's networks and training steps (pure Python: no JAX, no torch).

Counts only convolutions, transposed convolutions and dense layers, as 2 FLOPs per
multiply-accumulate (MAC). BatchNorm, ReLU, sigmoid, the masks and the losses are elementwise and
memory-bound: they cost time (and are a reason achieved TFLOP/s stays below the peak) but add
well under 1 % of the FLOPs, so they are left out, as is usual for "model FLOPs".

Per layer:
* conv:   MACs = H_out * W_out * k * k * C_in * C_out  (dilation does not change the count);
* deconv: MACs = H_in * W_in * k * k * C_in * C_out  (each input pixel scatters a k x k x C_out
  block; equivalently H_out * W_out * (k/2)^2 * C_in * C_out for stride 2). This is the useful
  work that cuDNN's backward-data kernel does; a naive count of the equivalent lhs-dilated
  convolution (what XLA's cost analysis may report) is 4x higher for these layers;
* dense:  MACs = C_in * C_out.

Per training step, for every network pass:
* forward:                    F (the sum above);
* weight gradients:           F (one MAC per forward MAC, for every layer);
* input (activation) grads:   F minus the first layer's share when nothing upstream needs the
  gradient of that pass's input (C's input, D's real or detached-fake input).

So a trained network costs 3F - F_first, a frozen network that a gradient must cross costs 2F
(no weight gradients), a frozen network run forward only costs F.

* phase 1 (steps.completion): C trained:            3 F_C - F_C1
* phase 2 (steps.discriminator): C forward, D trained on real and on completed:
                                                   F_C + 2 (3 F_D - F_D1)
* phase 3 (steps.joint): C trained once (one forward serves both updates, its VJP is kept), D
  trained on real and completed, then D (updated, frozen) crossed by C's adversarial gradient:
                                                   3 F_C - F_C1 + 2 (3 F_D - F_D1) + 2 F_D
where F_D = F_Dglobal + F_Dlocal + F_head.

The issue's figures (195 and 265 GFLOP/img at 256x256) use the simpler "3x forward for every
pass" convention: 3 F_C and 3 F_C + 3 * 3 F_D. The latter also counts weight gradients of D in the
adversarial pass, which our joint step never computes (it differentiates w.r.t. the completed
image only, and XLA removes the rest); a PyTorch port that leaves D's `requires_grad` on does
compute them. Both conventions are reported; TFLOP/s use the exact count.

The layer tables are copies of `glcic_jax.models` (so that the PyTorch reference can use them
without importing JAX); `check_against_package()` asserts that they still agree.
"""

from __future__ import annotations

from typing import NamedTuple

# GLCIC Table 1: (kind, kernel, dilation, stride, features); same as models.COMPLETION_LAYERS.
COMPLETION_LAYERS: tuple[tuple[str, int, int, int, int], ...] = (
    ("conv", 5, 1, 1, 64),
    ("conv", 3, 1, 2, 128),
    ("conv", 3, 1, 1, 128),
    ("conv", 3, 1, 2, 256),
    ("conv", 3, 1, 1, 256),
    ("conv", 3, 1, 1, 256),
    ("conv", 3, 2, 1, 256),
    ("conv", 3, 4, 1, 256),
    ("conv", 3, 8, 1, 256),
    ("conv", 3, 16, 1, 256),
    ("conv", 3, 1, 1, 256),
    ("conv", 3, 1, 1, 256),
    ("deconv", 4, 1, 2, 128),
    ("conv", 3, 1, 1, 128),
    ("deconv", 4, 1, 2, 64),
    ("conv", 3, 1, 1, 32),
    ("output", 3, 1, 1, 3),
)
GLOBAL_D_FEATURES = (64, 128, 256, 512, 512, 512)  # GLCIC Table 2b, 5x5 stride-2 convs
LOCAL_D_FEATURES = (64, 128, 256, 512, 512)  # GLCIC Table 2a
D_KERNEL = 5
D_FC = 1024

# Parameter counts the networks must have (biases and BatchNorm scale/offset included).
COMPLETION_PARAMS = 6_072_131


class Layer(NamedTuple):
    name: str
    kind: str  # 'conv', 'deconv' or 'dense'
    kernel: int
    stride: int
    dilation: int
    c_in: int
    c_out: int
    h_in: int
    w_in: int
    h_out: int
    w_out: int
    bn: bool  # followed by BatchNorm (adds 2 * c_out parameters)

    @property
    def macs(self) -> int:
        if self.kind == "dense":
            return self.c_in * self.c_out
        if self.kind == "deconv":
            return self.h_in * self.w_in * self.kernel**2 * self.c_in * self.c_out
        return self.h_out * self.w_out * self.kernel**2 * self.c_in * self.c_out

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def params(self) -> int:
        k2 = 1 if self.kind == "dense" else self.kernel**2
        return k2 * self.c_in * self.c_out + self.c_out + (2 * self.c_out if self.bn else 0)


def completion_layers(height: int, width: int) -> list[Layer]:
    """Table 1 at an H x W input (H, W multiples of 4)."""
    out, c, h, w = [], 4, height, width
    for i, (kind, k, d, s, f) in enumerate(COMPLETION_LAYERS):
        if kind == "deconv":
            ho, wo = h * s, w * s
        else:
            ho, wo = -(-h // s), -(-w // s)
        out.append(
            Layer(
                f"C{i + 1}",
                "deconv" if kind == "deconv" else "conv",
                k,
                s,
                d,
                c,
                f,
                h,
                w,
                ho,
                wo,
                kind != "output",
            )
        )
        c, h, w = f, ho, wo
    return out


def _conv_stack(prefix: str, features, size: int) -> list[Layer]:
    out, c, h = [], 3, size
    for i, f in enumerate(features):
        ho = -(-h // 2)
        out.append(Layer(f"{prefix}{i + 1}", "conv", D_KERNEL, 2, 1, c, f, h, h, ho, ho, True))
        c, h = f, ho
    out.append(Layer(f"{prefix}fc", "dense", 1, 1, 1, c * h * h, D_FC, 1, 1, 1, 1, False))
    return out


def discriminator_layers(image_size: int, local_size: int) -> dict[str, list[Layer]]:
    """Table 2: the global branch, the local branch and the 2048 -> 1 head."""
    return {
        "global": _conv_stack("Dg", GLOBAL_D_FEATURES, image_size),
        "local": _conv_stack("Dl", LOCAL_D_FEATURES, local_size),
        "head": [Layer("Dhead", "dense", 1, 1, 1, 2 * D_FC, 1, 1, 1, 1, 1, False)],
    }


def _sum(layers) -> int:
    return sum(layer.flops for layer in layers)


def network_flops(image_size: int, local_size: int) -> dict[str, float]:
    """Forward FLOPs per image of each network, and the first-layer shares the model needs."""
    c = completion_layers(image_size, image_size)
    d = discriminator_layers(image_size, local_size)
    return {
        "completion_fwd": _sum(c),
        "completion_first_layer": c[0].flops,
        "d_global_fwd": _sum(d["global"]),
        "d_local_fwd": _sum(d["local"]),
        "d_head_fwd": _sum(d["head"]),
        "discriminator_fwd": _sum(d["global"]) + _sum(d["local"]) + _sum(d["head"]),
        "discriminator_first_layers": d["global"][0].flops + d["local"][0].flops,
    }


def step_flops(image_size: int, local_size: int) -> dict[str, dict[str, float]]:
    """FLOPs per image of each training step: the exact model and the issue's 3x convention."""
    n = network_flops(image_size, local_size)
    fc, fc1 = n["completion_fwd"], n["completion_first_layer"]
    fd, fd1 = n["discriminator_fwd"], n["discriminator_first_layers"]
    c_trained = 3 * fc - fc1
    d_trained_twice = 2 * (3 * fd - fd1)  # on the real and on the (detached) completed batch
    return {
        "completion": {"exact": c_trained, "issue_3x": 3 * fc},
        "discriminator": {"exact": fc + d_trained_twice, "issue_3x": fc + 2 * 3 * fd},
        "joint": {"exact": c_trained + d_trained_twice + 2 * fd, "issue_3x": 3 * fc + 3 * 3 * fd},
    }


def inference_flops(height: int, width: int) -> int:
    """FLOPs of one completion-network forward at H x W (steps.complete)."""
    return _sum(completion_layers(height, width))


# Spec-sheet dense (no sparsity) tensor-core peaks in TFLOP/s: (bfloat16, TF32). float32 steps are
# compared with TF32: XLA's default precision and PyTorch's default `cudnn.allow_tf32` both let
# cuDNN run float32 convolutions on TF32 tensor cores. Matched by substring, most specific first.
DENSE_PEAK_TFLOPS = (
    ("H200", 989.4, 494.7),
    ("H100 NVL", 835.0, 417.5),
    ("H100 PCIe", 756.0, 378.0),
    ("H100", 989.4, 494.7),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0, 156.0),
)


def dense_peak_tflops(device_name: str, dtype: str) -> float | None:
    """The device's dense tensor-core peak for a dtype ('bfloat16' / 'float32'), if known."""
    for key, bf16, tf32 in DENSE_PEAK_TFLOPS:
        if key.lower() in str(device_name).lower():
            return bf16 if "16" in dtype else tf32
    return None


def completion_params() -> int:
    return sum(layer.params for layer in completion_layers(256, 256))


def discriminator_params(image_size: int = 256, local_size: int = 128) -> int:
    d = discriminator_layers(image_size, local_size)
    return sum(layer.params for layers in d.values() for layer in layers)


def check_against_package() -> None:
    """Raise if these tables no longer match glcic_jax.models (imports JAX and flax)."""
    from glcic_jax import models

    problems = []
    if tuple(models.COMPLETION_LAYERS) != COMPLETION_LAYERS:
        problems.append("COMPLETION_LAYERS")
    if tuple(models.GLOBAL_D_FEATURES) != GLOBAL_D_FEATURES:
        problems.append("GLOBAL_D_FEATURES")
    if tuple(models.LOCAL_D_FEATURES) != LOCAL_D_FEATURES:
        problems.append("LOCAL_D_FEATURES")
    if problems:
        raise AssertionError(
            f"benchmarks/flops.py is out of date with glcic_jax/models.py: {problems} differ; "
            f"update the copies here."
        )


def table(image_size: int = 256, local_size: int = 128) -> str:
    """A human-readable per-layer table (python benchmarks/flops.py)."""
    lines = [
        (
            f"{'layer':8s} {'kind':6s} {'k':>2s} {'s':>2s} {'d':>2s} {'in':>5s} {'out':>5s} "
            f"{'HxW out':>9s} {'GFLOP':>8s}"
        )
    ]
    c = completion_layers(image_size, image_size)
    d = discriminator_layers(image_size, local_size)
    for layer in c + d["global"] + d["local"] + d["head"]:
        lines.append(
            f"{layer.name:8s} {layer.kind:6s} {layer.kernel:2d} {layer.stride:2d} "
            f"{layer.dilation:2d} {layer.c_in:5d} {layer.c_out:5d} "
            f"{f'{layer.h_out}x{layer.w_out}':>9s} {layer.flops / 1e9:8.3f}"
        )
    n = network_flops(image_size, local_size)
    lines.append("")
    for k, v in n.items():
        lines.append(f"{k:28s} {v / 1e9:9.3f} GFLOP/img")
    for step, counts in step_flops(image_size, local_size).items():
        lines.append(
            f"step {step:23s} {counts['exact'] / 1e9:9.3f} GFLOP/img exact, "
            f"{counts['issue_3x'] / 1e9:.3f} in the issue's 3x convention"
        )
    for size in (512, 1024):
        lines.append(
            f"inference {size}x{size:<13d} {inference_flops(size, size) / 1e9:9.3f} GFLOP/img"
        )
    lines.append(
        f"params: completion {completion_params():,}, discriminator "
        f"{discriminator_params(image_size, local_size):,}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
