"""The layers `glcic_jax.conv_forms` computes differently on a CPU, one at a time: XLA's own
convolution against the CPU form, forward and forward + backward, with PyTorch's layer beside
them when torch is installed (optional, this benchmark only).

  python benchmarks/bench_conv_forms.py [--out benchmarks/results/conv_forms_cpu.json] [--only taps]

Layers (NHWC, float32, the shapes the full-width networks train on at 128 px, batch 4, and the
Ds' last layers at batch 16 too):

* `deconv`: GLCIC's two 4x4 stride-2 transposed convolutions, `lax.conv_transpose` against
  `conv_forms.subpixel_deconv4x4` (PyTorch: `ConvTranspose2d(c, f, 4, 2, 1)`).
* `small`: the discriminators' 5x5 stride-2 convolutions with <= 8x8 outputs, `lax`'s
  convolution against `conv_forms.patches_conv` (PyTorch: `Conv2d(c, f, 5, 2, 2)`), plus the
  time to compile each form's forward + backward.
* `3x3`: the completion network's 3x3 stride-1 layers (dilated or not), `lax`'s convolution
  against `conv_forms.conv` as the networks call it on the CPU (Winograd's forward for >= 256
  channels, Winograd's gradients for >= 64; PyTorch: `Conv2d(c, f, 3, 1, d, d)`): at the
  256 px inference's shapes (batch 1, 64 x 64) and the 128 px training's (batch 4).
* `taps`: VALID 3x3 stride-1 layers on an input padded beforehand (what the reflect-padding
  configs give XLA), `lax`'s convolution against `conv_forms.conv`, which computes the small
  and the strongly dilated ones by `conv_forms.taps_conv` (PyTorch: `Conv2d(c, f, 3, 1, 0, d)`
  on the same padded input): the quickstart's 16 x 16 layers (batch 16, 32 channels, every
  dilation), a 32 px one that stays XLA's, and the paper's dilation-16 layer at 128 px.
* `narrow`: stride-1 layers of a few channels on an input padded beforehand (the 1/8-width
  networks' 64 px layers, batch 16: the first 5x5 4 -> 8, the 3x3 8 -> 4 and 4 -> 3; and the
  32 px 16 -> 16 one, which keeps XLA's convolution), `lax`'s convolution against
  `conv_forms.conv`, which computes the narrow ones by `conv_forms.narrow_conv` (PyTorch:
  `Conv2d(c, f, k, 1, 0)` on the same padded input).
* `quadrants`: 3x3 layers dilated by half their input's side with zero padding (the paper's
  dilation-16 layer at 128 px), `lax`'s convolution against `conv_forms.conv`, which computes
  them by `conv_forms.quadrants_conv3x3` (PyTorch: `Conv2d(c, f, 3, 1, d, d)`).
* `kgrad`: the layers that keep XLA's convolution forward (strided, the sub-pixel
  upsampling's 2x2 convolutions, the first 5x5 layers), XLA's convolution against
  `conv_forms.taps_kernel_grad_conv` (the same forward and input gradient, the kernel gradient
  one product per tap; PyTorch: `Conv2d` with the same stride, padding and dilation), at 128 px
  (batch 4) and 256 px (batch 2), and layers where the networks keep XLA's kernel gradient
  (`networks_use: false`: the discriminators' wide 5x5 layers, the 1/8-width networks').

Forward + backward is the gradient of sum(y^2) / 2 with respect to the input and the kernel.
Compiled with `conv_forms.compiler_options()`, as the full-width networks are on a CPU.
Each row: milliseconds per call (median of --repeats), PyTorch in channels_last.
"""

from __future__ import annotations

import functools
import statistics
import time

import _harness
import numpy as np

# (name, N, H, C_in, C_out)
DECONVS = (("deconv 1", 4, 32, 256, 128), ("deconv 2", 4, 64, 128, 64))
SMALL = (("D 8x8 -> 4x4", 4, 8, 512, 512), ("D 4x4 -> 2x2", 4, 4, 512, 512),
         ("D 8x8 -> 4x4, batch 16", 16, 8, 512, 512), ("D 16x16 -> 8x8", 4, 16, 256, 512))
# (name, N, H, C_in, C_out, dilation)
THREE = (("3x3 256, 64 px", 1, 64, 256, 256, 1), ("3x3 256 dil 8, 64 px", 1, 64, 256, 256, 8),
         ("3x3 256, 32 px, batch 4", 4, 32, 256, 256, 1),
         ("3x3 256 dil 4, 32 px, batch 4", 4, 32, 256, 256, 4),
         ("3x3 128, 64 px, batch 4", 4, 64, 128, 128, 1),
         ("3x3 64 -> 32, 128 px, batch 4", 4, 128, 64, 32, 1))
# VALID on a padded input: (name, N, H_out, C_in, C_out, dilation)
TAPS = (("VALID 32, 16 px, batch 16", 16, 16, 32, 32, 1),
        ("VALID 32 dil 4, 16 px, batch 16", 16, 16, 32, 32, 4),
        ("VALID 32 dil 16, 16 px, batch 16", 16, 16, 32, 32, 16),
        ("VALID 32, 32 px, batch 16 (XLA's)", 16, 32, 32, 32, 1),
        ("VALID 256 dil 16, 32 px, batch 4", 4, 32, 256, 256, 16),
        ("VALID 256 dil 16, 32 px, batch 1", 1, 32, 256, 256, 16))
# VALID stride-1 on a padded input: (name, N, H_out, C_in, C_out, kernel size)
NARROW = (("1/8: VALID 5x5 4 -> 8, 64 px, batch 16", 16, 64, 4, 8, 5),
          ("1/8: VALID 8 -> 4, 64 px, batch 16", 16, 64, 8, 4, 3),
          ("1/8: VALID 4 -> 3, 64 px, batch 16", 16, 64, 4, 3, 3),
          ("1/8: VALID 16, 32 px, batch 16 (XLA's)", 16, 32, 16, 16, 3))
# Dilated by half the side, zero-padded: (name, N, H, C_in, C_out, dilation)
QUADRANTS = (("3x3 256 dil 16, 32 px, batch 4", 4, 32, 256, 256, 16),
             ("3x3 256 dil 16, 32 px, batch 1", 1, 32, 256, 256, 16),
             ("3x3 32 dil 8, 16 px, batch 16", 16, 16, 32, 32, 8))
# Kernel gradient by taps: (name, N, H, C_in, C_out, kernel size, stride, padding, dilation)
KGRAD = (("C 5x5 4 -> 64, 128 px, batch 4", 4, 128, 4, 64, 5, 1, ((2, 2), (2, 2)), 1),
         ("C 3x3/2 64 -> 128, 128 px, batch 4", 4, 128, 64, 128, 3, 2, ((1, 1), (1, 1)), 1),
         ("C 3x3/2 128 -> 256, 64 px, batch 4", 4, 64, 128, 256, 3, 2, ((1, 1), (1, 1)), 1),
         ("2x2 256 -> 128, 32 px, batch 4", 4, 32, 256, 128, 2, 1, ((1, 0), (0, 1)), 1),
         ("2x2 128 -> 64, 64 px, batch 4", 4, 64, 128, 64, 2, 1, ((1, 0), (0, 1)), 1),
         ("D 5x5/2 3 -> 64, 128 px, batch 4", 4, 128, 3, 64, 5, 2, ((2, 2), (2, 2)), 1),
         ("C 5x5 4 -> 64, 256 px, batch 2", 2, 256, 4, 64, 5, 1, ((2, 2), (2, 2)), 1),
         ("C 3x3/2 64 -> 128, 256 px, batch 2", 2, 256, 64, 128, 3, 2, ((1, 1), (1, 1)), 1),
         ("C 3x3/2 128 -> 256, 128 px, batch 2", 2, 128, 128, 256, 3, 2, ((1, 1), (1, 1)), 1),
         ("2x2 128 -> 64, 128 px, batch 2", 2, 128, 128, 64, 2, 1, ((1, 0), (0, 1)), 1),
         ("D 5x5/2 64 -> 128, 64 px, batch 4", 4, 64, 64, 128, 5, 2, ((2, 2), (2, 2)), 1),
         ("D 5x5/2 128 -> 256, 32 px, batch 4", 4, 32, 128, 256, 5, 2, ((2, 2), (2, 2)), 1),
         ("1/8: 3x3/2 16 -> 32, 32 px, batch 16", 16, 32, 16, 32, 3, 2, ((1, 1), (1, 1)), 1),
         ("1/8: 3x3/2 8 -> 16, 64 px, batch 16", 16, 64, 8, 16, 3, 2, ((1, 1), (1, 1)), 1),
         ("1/8: 2x2 16 -> 8, 64 px, batch 16", 16, 64, 16, 8, 2, 1, ((1, 0), (0, 1)), 1))
SECTIONS = ("deconv", "small", "3x3", "taps", "narrow", "quadrants", "kgrad")


def parse_args(argv=None):
    p = _harness.parser(__doc__)
    p.add_argument("--out", default="")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--only", default=",".join(SECTIONS), help="among " + ",".join(SECTIONS))
    return p.parse_args(argv)


def _ms(fn, wait, repeats: int) -> float:
    return 1e3 * statistics.median(_harness.time_calls(fn, 1, 1, repeats, wait).times)


def main(argv=None) -> None:
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp
    from jax import lax

    from glcic_jax import conv_forms

    try:
        import torch
    except ImportError:
        torch = None
        print("torch is not installed: the PyTorch columns are skipped (pip install torch).")

    rng = np.random.default_rng(0)

    def deconv_xla(x, k):
        return lax.conv_transpose(x, k, (2, 2), "SAME", dimension_numbers=conv_forms.NHWC)

    def conv_xla(x, k):
        return lax.conv_general_dilated(x, k, (2, 2), ((2, 2), (2, 2)),
                                        dimension_numbers=conv_forms.NHWC)

    def conv_patches(x, k):
        return conv_forms.patches_conv(x, k, (2, 2), ((2, 2), (2, 2)), (1, 1))

    def three(d, cpu_form, padding=None):  # None: d on every side, as the zero-padded layers
        call = conv_forms.conv if cpu_form else lax.conv_general_dilated
        pads = padding or ((d, d), (d, d))
        return lambda x, k: call(x, k, (1, 1), pads, rhs_dilation=(d, d),
                                 dimension_numbers=conv_forms.NHWC)

    options = conv_forms.compiler_options()  # as the full-width networks are compiled

    def timed(fn, x, k) -> dict:
        fwd = jax.jit(fn, compiler_options=options)
        grad = jax.jit(jax.grad(lambda x, k: jnp.sum(fn(x, k) ** 2) / 2, argnums=(0, 1)),
                       compiler_options=options)
        t0 = time.perf_counter()
        grad = grad.lower(x, k).compile()
        compile_s = time.perf_counter() - t0
        return {"fwd_ms": _ms(lambda: fwd(x, k), jax.block_until_ready, args.repeats),
                "fwd_bwd_ms": _ms(lambda: grad(x, k), jax.block_until_ready, args.repeats),
                "compile_fwd_bwd_s": compile_s}

    def timed_torch(layer, x) -> dict:
        layer = layer.to(memory_format=torch.channels_last)
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        xg = xt.clone().requires_grad_()

        def fwd():
            with torch.no_grad():
                return layer(xt)

        def fwd_bwd():
            (layer(xg).pow(2).sum() / 2).backward()

        return {"fwd_ms": _ms(fwd, lambda out: None, args.repeats),
                "fwd_bwd_ms": _ms(fwd_bwd, lambda out: None, args.repeats)}

    rows = []
    only = set(args.only.split(","))
    if only - set(SECTIONS):
        raise SystemExit(f"--only takes {','.join(SECTIONS)}, got {args.only}")
    cases = []
    if "deconv" in only:
        cases += [(name, n, h, c, f, 4, deconv_xla, conv_forms.subpixel_deconv4x4, "subpixel", 1)
                  for name, n, h, c, f in DECONVS]
    if "small" in only:
        cases += [(name, n, h, c, f, 5, conv_xla, conv_patches, "patches", 1)
                  for name, n, h, c, f in SMALL]
    if "3x3" in only:
        cases += [(name, n, h, c, f, 3, three(d, False), three(d, True), "winograd", d)
                  for name, n, h, c, f, d in THREE]
    if "taps" in only:  # the input is the padded one: h + 2d on each side
        cases += [(name, n, h + 2 * d, c, f, 3, three(d, False, "VALID"), three(d, True, "VALID"),
                   "taps", d)
                  for name, n, h, c, f, d in TAPS]
    if "narrow" in only:  # the input is the padded one: ksize - 1 more on each axis
        valid = functools.partial(lax.conv_general_dilated, window_strides=(1, 1),
                                  padding="VALID", dimension_numbers=conv_forms.NHWC)
        cpu = functools.partial(conv_forms.conv, window_strides=(1, 1), padding="VALID",
                                dimension_numbers=conv_forms.NHWC)
        cases += [(name, n, h + ksize - 1, c, f, ksize, valid, cpu, "narrow", 1,
                   lambda c=c, f=f, ksize=ksize: torch.nn.Conv2d(c, f, ksize, 1, 0))
                  for name, n, h, c, f, ksize in NARROW]
    if "quadrants" in only:
        cases += [(name, n, h, c, f, 3, three(d, False), three(d, True), "quadrants", d)
                  for name, n, h, c, f, d in QUADRANTS]
    if "kgrad" in only:
        for name, n, h, c, f, ksize, stride, pads, d in KGRAD:
            kw = dict(window_strides=(stride, stride), padding=pads, rhs_dilation=(d, d),
                      dimension_numbers=conv_forms.NHWC)
            symmetric = pads[0][0] == pads[0][1] == pads[1][0] == pads[1][1]
            torch_layer = ((lambda c=c, f=f, ksize=ksize, stride=stride, p=pads[0][0], d=d:
                            torch.nn.Conv2d(c, f, ksize, stride, p, d)) if symmetric else None)
            cases.append((name, n, h, c, f, ksize,
                          functools.partial(lax.conv_general_dilated, **kw),
                          functools.partial(conv_forms.taps_kernel_grad_conv,
                                            strides=(stride, stride), padding=pads,
                                            dilation=(d, d)),
                          "kgrad", d, torch_layer))
    print(f"{'layer':36s} {'form':9s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'compile s':>10s}")
    for case in cases:
        name, n, h, c, f, ksize, xla_fn, cpu_fn, form, d = case[:10]
        x = rng.standard_normal((n, h, h, c)).astype(np.float32)
        k = (rng.standard_normal((ksize, ksize, c, f)) * 0.05).astype(np.float32)
        row = {"layer": name, "shape": [n, h, h, c], "features": f, "dilation": d,
               "cpu_form": form,
               "xla": timed(xla_fn, jnp.asarray(x), jnp.asarray(k)),
               form: timed(cpu_fn, jnp.asarray(x), jnp.asarray(k))}
        if form == "kgrad":
            row["networks_use"] = conv_forms.uses_taps_kernel_grad(
                jnp.asarray(x), jnp.asarray(k), case[7].keywords["padding"])
        if form == "narrow":
            row["networks_use"] = conv_forms.uses_narrow_conv(
                jnp.asarray(x), jnp.asarray(k), (1, 1), ((0, 0), (0, 0)), (1, 1))
        if torch is not None:
            if form in ("kgrad", "narrow"):
                layer = case[10]() if case[10] is not None else None
            else:
                layer = (torch.nn.ConvTranspose2d(c, f, 4, 2, 1) if ksize == 4
                         else torch.nn.Conv2d(c, f, 5, 2, 2) if ksize == 5
                         else torch.nn.Conv2d(c, f, 3, 1, 0 if form == "taps" else d, d))
            if layer is not None:
                row["pytorch"] = timed_torch(layer, x)
        rows.append(row)
        for col in ("xla", form, "pytorch"):
            if col in row:
                r = row[col]
                print(f"{name:36s} {col:9s} {r['fwd_ms']:9.1f} {r['fwd_bwd_ms']:11.1f} "
                      f"{r.get('compile_fwd_bwd_s', float('nan')):10.2f}", flush=True)
    report = {"meta": _harness.run_meta(commit=_harness.git_commit(), jax=jax.__version__,
                                        torch=getattr(torch, "__version__", None),
                                        args=vars(args)),
              "rows": rows}
    if args.out:
        _harness.write_json(args.out, report)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
