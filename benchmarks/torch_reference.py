"""PyTorch reference of GLCIC's networks and training steps, timed like bench_steps.py.

The baseline the throughput issue compares against: the same networks as `glcic_jax.models`
(layer tables from `flops.py`, parameter counts checked), the same phase-1 step and the same joint
step, written the way PyTorch ports of GLCIC write them:

* `CompletionNetwork`: GLCIC Table 1, Conv/ConvTranspose + BatchNorm + ReLU, sigmoid output
  (computed in float32); input RGB with holes filled by the mean pixel + the mask channel.
* `ContextDiscriminator`: global (Table 2b) and local (Table 2a) 5x5 stride-2 conv stacks with
  BatchNorm + ReLU and FC 1024 each, concatenated, FC 2048 -> 1 logit.
* phase-1 step: masks drawn on the device, hole MSE (mean over all B*C*H*W elements, as ours),
  Adadelta (lr 1.0, rho 0.9, eps 1e-6).
* joint step: one C forward; D updated on real (random local window) vs completed (window around
  the hole) with alpha * (BCE-with-logits(real, 1) + BCE(completed, 0)); then C updated on
  MSE + alpha * BCE(D(completed), 1) against the updated D, whose parameters are frozen
  (`requires_grad_(False)`) for that backward so that no D weight gradients are computed (as in
  ours). D and C each run in train mode (batch statistics), separate real and fake D batches.

Variants (`--variants`):
* `fp32_nchw`: float32, NCHW, how typical ports run (cuDNN may still use TF32 for convolutions:
  PyTorch's default `torch.backends.cudnn.allow_tf32 = True`, recorded in the JSON);
* `bf16_channels_last`: `torch.autocast(bfloat16)` + channels_last memory format;
* `bf16_channels_last_compile`: the same under `torch.compile` (slow to compile; opt-in).
`torch.backends.cudnn.benchmark = True` in all of them.

torch is imported only here; it is never a dependency of glcic_jax. Run directly
(`python benchmarks/torch_reference.py --out r.json`) or through `bench_steps.py --torch`.
"""

from __future__ import annotations

import statistics
import sys
import traceback

import _harness  # benchmarks/_harness.py (pure Python)
import flops  # (pure Python)
from _harness import MEAN_PIXEL

VARIANTS = ("fp32_nchw", "bf16_channels_last", "bf16_channels_last_compile")
ALPHA = 0.0004


def _import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _scaled(features: int, width: float) -> int:
    """As `glcic_jax.models.scaled`: a hidden layer's channels times `model.width`."""
    return max(1, int(round(features * width)))


def build(torch, width: float = 1.0, padding: str = "zero"):
    """Module classes, defined once torch is imported (this file must import without torch).

    `width` and `padding` as `model.width` and `model.padding` (the quickstart's 1/8 width and
    reflect padding of C's convolutions); the defaults are the paper's network."""
    nn = torch.nn
    F = torch.nn.functional
    # PyTorch's reflect padding refuses a pad as wide as the input, which the quickstart's
    # dilation-16 layer needs (16 px on a 16x16 map at 64 px); for timing, 'replicate' pads the
    # same number of pixels at the same cost (its values differ from a reflection).
    pad_mode = {"zero": "zeros", "reflect": "replicate"}[padding]

    class CompletionNetwork(nn.Module):
        def __init__(self):
            super().__init__()
            layers, c = [], 4
            for kind, k, d, s, f in flops.COMPLETION_LAYERS:
                f = f if kind == "output" else _scaled(f, width)
                if kind == "deconv":
                    # 4x4 stride 2 padding 1: exactly doubles H and W (flax 'SAME' does too).
                    layers.append(nn.ConvTranspose2d(c, f, k, stride=s, padding=1))
                else:
                    layers.append(
                        nn.Conv2d(c, f, k, stride=s, padding=d * (k - 1) // 2, dilation=d,
                                  padding_mode=pad_mode)
                    )
                if kind != "output":
                    layers += [nn.BatchNorm2d(f), nn.ReLU(inplace=True)]
                c = f
            self.net = nn.Sequential(*layers)

        def forward(self, x):
            return torch.sigmoid(self.net(x).float())

    class ConvStack(nn.Module):
        def __init__(self, features, size):
            super().__init__()
            layers, c = [], 3
            for f in features:
                f = _scaled(f, width)
                layers += [
                    nn.Conv2d(c, f, flops.D_KERNEL, stride=2, padding=2),
                    nn.BatchNorm2d(f),
                    nn.ReLU(inplace=True),
                ]
                c, size = f, (size + 1) // 2
            self.convs = nn.Sequential(*layers)
            self.fc = nn.Linear(c * size * size, _scaled(flops.D_FC, width))

        def forward(self, x):
            return F.relu(self.fc(torch.flatten(self.convs(x), 1)))

    class ContextDiscriminator(nn.Module):
        def __init__(self, image_size, local_size):
            super().__init__()
            self.glob = ConvStack(flops.GLOBAL_D_FEATURES, image_size)
            self.local = ConvStack(flops.LOCAL_D_FEATURES, local_size)
            self.head = nn.Linear(2 * _scaled(flops.D_FC, width), 1)

        def forward(self, global_image, local_image):
            feats = torch.cat([self.glob(global_image), self.local(local_image)], dim=1)
            return self.head(feats).float()

    return CompletionNetwork, ContextDiscriminator


# ----------------------------------------------------------------------------------------------
# On-device masks and crops (as glcic_jax.masks: one hole per image inside a local window)


def sample_masks(torch, batch, size, local, hole_min, hole_max, device):
    """mask [B, 1, H, W] (1 = hole), window corners (top, left) [B] each."""
    top = torch.randint(0, size - local + 1, (batch,), device=device)
    left = torch.randint(0, size - local + 1, (batch,), device=device)
    hs = torch.randint(hole_min, hole_max + 1, (batch,), device=device)
    ws = torch.randint(hole_min, hole_max + 1, (batch,), device=device)
    # Offsets uniform over the positions where the hole fits in the window.
    oy = (torch.rand(batch, device=device) * (local - hs + 1)).long()
    ox = (torch.rand(batch, device=device) * (local - ws + 1)).long()
    y0 = top + torch.minimum(oy, local - hs)
    x0 = left + torch.minimum(ox, local - ws)
    ys = torch.arange(size, device=device)[None, :, None]
    xs = torch.arange(size, device=device)[None, None, :]
    inside = (
        (ys >= y0[:, None, None])
        & (ys < (y0 + hs)[:, None, None])
        & (xs >= x0[:, None, None])
        & (xs < (x0 + ws)[:, None, None])
    )
    return inside[:, None].float(), top, left


def crop(torch, x, top, left, local):
    """Per-sample local x local windows of x [B, C, H, W] -> [B, C, local, local]
    (differentiable)."""
    ar = torch.arange(local, device=x.device)
    rows = (top[:, None] + ar)[:, :, None]  # [B, L, 1]
    cols = (left[:, None] + ar)[:, None, :]  # [B, 1, L]
    b = torch.arange(x.shape[0], device=x.device)[:, None, None]
    return x[b, :, rows, cols].permute(0, 3, 1, 2)  # advanced indexing puts [B, L, L] first


# ----------------------------------------------------------------------------------------------
# Steps


class Bench:
    def __init__(self, torch, variant, batch, image_size, local_size, hole_min, hole_max, device,
                 width: float = 1.0, padding: str = "zero", optimizer: str = "adadelta"):
        self.torch = torch
        self.variant = variant
        self.device = device
        self.batch, self.size, self.local = batch, image_size, local_size
        self.hole = (hole_min, hole_max)
        self.bf16 = variant.startswith("bf16")
        self.fmt = torch.channels_last if "channels_last" in variant else torch.contiguous_format
        CompletionNetwork, ContextDiscriminator = build(torch, width, padding)
        self.g = CompletionNetwork().to(device).to(memory_format=self.fmt)
        self.d = ContextDiscriminator(image_size, local_size).to(device).to(memory_format=self.fmt)
        self.g_params = sum(p.numel() for p in self.g.parameters())
        self.d_params = sum(p.numel() for p in self.d.parameters())
        self.g_fwd, self.d_fwd = self.g, self.d
        if variant.endswith("_compile"):
            self.g_fwd, self.d_fwd = torch.compile(self.g), torch.compile(self.d)
        if optimizer == "adam":  # the quickstart's (lr 1e-3, eps 1e-8)
            opt, cls = {"lr": 1e-3, "eps": 1e-8}, torch.optim.Adam
        else:
            opt, cls = {"lr": 1.0, "rho": 0.9, "eps": 1e-6}, torch.optim.Adadelta
        self.g_opt = cls(self.g.parameters(), **opt)
        self.d_opt = cls(self.d.parameters(), **opt)
        self.mean = torch.tensor(MEAN_PIXEL, device=device).view(1, 3, 1, 1)
        gen = torch.Generator().manual_seed(0)
        u8 = torch.randint(
            0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8, generator=gen
        )
        self.images = u8.to(device).contiguous(memory_format=self.fmt)

    def _autocast(self):
        dev = "cuda" if self.device.type == "cuda" else "cpu"
        return self.torch.autocast(dev, dtype=self.torch.bfloat16, enabled=self.bf16)

    def _prepare(self):
        torch = self.torch
        x = self.images.float().div_(255.0)
        m, top, left = sample_masks(
            torch, self.batch, self.size, self.local, *self.hole, self.device
        )
        m = m.contiguous(memory_format=self.fmt)
        inp = torch.cat([x * (1 - m) + self.mean * m, m], dim=1).contiguous(memory_format=self.fmt)
        return x, m, top, left, inp

    def _mse(self, out, x, m):
        return self.torch.nn.functional.mse_loss(out * m, x * m)

    def completion_step(self):
        x, m, _, _, inp = self._prepare()
        with self._autocast():
            out = self.g_fwd(inp)
        loss = self._mse(out.float(), x, m)
        self.g_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.g_opt.step()
        return loss.detach()

    def joint_step(self):
        torch = self.torch
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        x, m, top, left, inp = self._prepare()
        with self._autocast():
            out = self.g_fwd(inp)
        out = out.float()
        completed = x * (1 - m) + out * m
        fake_local = crop(torch, completed, top, left, self.local).contiguous(
            memory_format=self.fmt
        )
        rtop = torch.randint(0, self.size - self.local + 1, (self.batch,), device=self.device)
        rleft = torch.randint(0, self.size - self.local + 1, (self.batch,), device=self.device)
        real_local = crop(torch, x, rtop, rleft, self.local).contiguous(memory_format=self.fmt)
        # 1) D on real vs completed (completed is a constant for D).
        with self._autocast():
            real_logits = self.d_fwd(x, real_local)
            fake_logits = self.d_fwd(completed.detach(), fake_local.detach())
        d_loss = ALPHA * (
            bce(real_logits, torch.ones_like(real_logits))
            + bce(fake_logits, torch.zeros_like(fake_logits))
        )
        self.d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_opt.step()
        # 2) C on MSE + alpha * adversarial, against the updated D (its weights frozen).
        self.d.requires_grad_(False)
        with self._autocast():
            logits = self.d_fwd(completed, fake_local)
        g_loss = self._mse(out, x, m) + ALPHA * bce(logits, torch.ones_like(logits))
        self.g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        self.g_opt.step()
        self.d.requires_grad_(True)
        return g_loss.detach()


def _device_name(torch, device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _sync(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_config(torch, device, variant, step, batch, geo, warmup, iters, repeats) -> dict:
    image_size, local_size, hole_min, hole_max = geo
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    bench = Bench(torch, variant, batch, image_size, local_size, hole_min, hole_max, device)
    fn = bench.completion_step if step == "completion" else bench.joint_step
    # cudnn.benchmark autotunes (and torch.compile compiles) in the warm-up calls.
    times, warmup_s, loss = _harness.time_calls(
        fn, max(1, warmup), iters, repeats, wait=lambda _: _sync(torch, device)
    )
    step_s = statistics.median(times)
    model = flops.step_flops(image_size, local_size)[step]
    res = {
        "variant": variant,
        "step": step,
        "batch": batch,
        "image_size": image_size,
        "local_size": local_size,
        "step_ms_median": step_s * 1e3,
        "step_ms_min": min(times) * 1e3,
        "step_ms_max": max(times) * 1e3,
        "step_ms_all": [t * 1e3 for t in times],
        "img_per_s": batch / step_s,
        "tflop_per_s": model["exact"] * batch / step_s / 1e12,
        "tflop_per_s_issue_3x": model["issue_3x"] * batch / step_s / 1e12,
        "mfu_vs_dense_peak": (
            model["exact"] * batch / step_s / 1e12 / peak
            if (peak := flops.dense_peak_tflops(_device_name(torch, device), variant))
            else None
        ),
        "warmup_s": warmup_s,
        "loss_finite": bool(torch.isfinite(loss).item()),
        "params": {"completion": bench.g_params, "discriminator": bench.d_params},
        "peak_bytes_in_use": (
            torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        ),
        "iters": iters,
        "repeats": repeats,
        "warmup": warmup,
    }
    expected = (flops.completion_params(), flops.discriminator_params(image_size, local_size))
    if (bench.g_params, bench.d_params) != expected:
        res["param_mismatch"] = {
            "expected": list(expected),
            "got": [bench.g_params, bench.d_params],
        }
    del bench
    return res


def parse_args(argv=None):
    p = _harness.parser(__doc__)
    p.add_argument("--batch-sizes", default="32,96")
    p.add_argument("--steps", default="completion,joint")
    p.add_argument(
        "--variants",
        default="fp32_nchw,bf16_channels_last",
        help=f"comma-separated among {','.join(VARIANTS)}",
    )
    _harness.add_timing_args(p)
    p.add_argument("--device", default="", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--smoke", action="store_true", help="32x32, batch 2, one iteration")
    p.add_argument("--out", default="", help="JSON path (default: print only)")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch_sizes = "2" if args.batch_sizes == "32,96" else args.batch_sizes
        args.warmup, args.iters, args.repeats = 1, 1, 2
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    report: dict = {
        "meta": _harness.run_meta(smoke=args.smoke),
        "results": [],
    }

    def save():
        if args.out:
            _harness.write_json(args.out, report)

    torch = _import_torch()
    if torch is None:
        report["skipped"] = "torch is not importable here"
        print("torch_reference: torch is not importable; nothing to run.")
        save()
        return 0
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.backends.cudnn.benchmark = True
    report["meta"].update(
        {
            "torch": torch.__version__,
            "device": str(device),
            "device_name": _device_name(torch, device),
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_benchmark": True,
        }
    )
    geo = (32, 16, 6, 12) if args.smoke else (256, 128, 96, 128)
    variants = _harness.csv_list(args.variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose among {list(VARIANTS)}")
    failed = 0
    for variant in variants:
        for batch in _harness.csv_list(args.batch_sizes, int):
            for step in _harness.csv_list(args.steps):
                if step not in ("completion", "joint"):
                    raise SystemExit(f"--steps: {step!r} is not 'completion' or 'joint'")
                try:
                    res = time_config(
                        torch,
                        device,
                        variant,
                        step,
                        batch,
                        geo,
                        args.warmup,
                        args.iters,
                        args.repeats,
                    )
                    print(
                        f"torch {variant:27s} {step:10s} b{batch:<4d} "
                        f"{res['img_per_s']:8.1f} img/s  {res['tflop_per_s']:6.1f} TFLOP/s  "
                        f"step {res['step_ms_median']:8.2f} ms  peak "
                        f"{(res['peak_bytes_in_use'] or 0) / 2**30:.2f} GiB",
                        flush=True,
                    )
                    if res.get("param_mismatch"):
                        print(f"  WARNING parameter counts: {res['param_mismatch']}")
                except Exception as e:  # noqa: BLE001  (e.g. out of memory: record, go on)
                    failed += 1
                    res = {
                        "variant": variant,
                        "step": step,
                        "batch": batch,
                        "error": f"{type(e).__name__}: {str(e)[:2000]}",
                        "traceback": traceback.format_exc()[-4000:],
                    }
                    print(
                        f"torch {variant} {step} b{batch} FAILED: {res['error'][:300]}", flush=True
                    )
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                report["results"].append(res)
                save()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
