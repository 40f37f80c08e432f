"""The PyTorch counterpart of `python -m glcic_jax.complete` for one photo, as short as it can be.

What a user of a PyTorch port runs: import torch, load a state dict of GLCIC's completion
network (`torch_reference.build`), build the input as the authors' `inpaint.lua` does (image minus
the mean pixel, 0 in the hole, plus the mask), one forward pass (`torch.no_grad`, channels_last),
composite into the hole, save a PNG. `bench_cpu.py` times it from process start against ours.

  python benchmarks/torch_complete.py WEIGHTS.pt IMAGE MASK OUTPUT [--repeat N]

`--repeat N` completes the same photo N more times in the process and prints the seconds of each
(read, complete, encode the PNG): the warm counterpart of a web-page request.
"""

import sys
import time

import numpy as np
import torch
import torch_reference  # benchmarks/ (pure Python until build())
from PIL import Image


def main(argv):
    weights, image, mask, output = argv[1:5]
    repeat = int(argv[argv.index("--repeat") + 1]) if "--repeat" in argv else 0
    state = torch.load(weights)
    mean = state.pop("mean_pixel").view(1, 3, 1, 1)
    net = torch_reference.build(torch)[0]()
    net.load_state_dict(state)
    net = net.eval().to(memory_format=torch.channels_last)

    def complete():
        img = torch.from_numpy(np.asarray(Image.open(image).convert("RGB"))).permute(2, 0, 1)
        img = img[None].float() / 255.0
        hole = torch.from_numpy(np.asarray(Image.open(mask).convert("L")) >= 128)[None, None]
        hole = hole.float()
        x = torch.cat([(img - mean) * (1 - hole), hole], 1).contiguous(
            memory_format=torch.channels_last)
        with torch.no_grad():
            out = net(x)
        done = img * (1 - hole) + out * hole
        pixels = (done[0].permute(1, 2, 0) * 255).round().clamp(0, 255).byte().numpy()
        Image.fromarray(pixels).save(output)

    complete()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        complete()
        times.append(time.perf_counter() - t)
    if repeat:
        print("warm_s", " ".join(f"{t:.4f}" for t in times))


if __name__ == "__main__":
    main(sys.argv)
