"""Plant small bugs in a copy of the tree, one at a time, and check that the tests catch each.

    python tools/mutation_check.py                 # every mutant, then a tally
    python tools/mutation_check.py --list          # the mutants and the tests each one runs
    python tools/mutation_check.py --only 3,7      # some of them (by number)
    python tools/mutation_check.py --check-anchors # only check that every anchor is in the tree

Each mutant is a replacement of an exact piece of source text (its *anchor*) in one file. The
tree (the files git tracks, plus untracked files it does not ignore) is copied to a temporary
folder; the real checkout is never written. For each mutant the anchor is replaced in the copy,
the mutant's tests run there with pytest (stopping at the first failure), and the file is put
back. A mutant is *caught* when its tests fail. Running the whole fast tier per mutant would take
hours on a 2-core machine, so each mutant names the fast tests that should catch it; before the
mutants, those tests run once on the unmodified copy and must pass (otherwise a "caught" would
mean nothing).

An anchor that is not found exactly once in its file is an error (exit 2): the list must follow
the code (tests/test_mutation_check.py checks that in the fast tier). Exit status: 0 when every
mutant was caught, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Mutant(NamedTuple):
    name: str
    path: str  # relative to the repository root
    old: str  # the exact text replaced (must occur exactly once)
    new: str
    tests: tuple[str, ...]  # pytest node ids (relative to the root) that should fail


MUTANTS: tuple[Mutant, ...] = (
    Mutant("two-stage returns (coarse, refined)", "glcic_jax/models.py",
           "            stage2_in, train)\n        return refined, coarse",
           "            stage2_in, train)\n        return coarse, refined",
           ("tests/test_models.py::test_two_stage_is_its_two_completion_networks_applied_by_hand",)),
    Mutant("two-stage refinement reads the raw input", "glcic_jax/models.py",
           "            stage2_in, train)\n        return refined, coarse",
           "            x, train)\n        return refined, coarse",
           ("tests/test_models.py::test_two_stage_is_its_two_completion_networks_applied_by_hand",)),
    Mutant("every step draws its holes from fold_in(rng, 0)", "glcic_jax/steps.py",
           "step_key = jax.random.fold_in(state.rng, state.step)",
           "step_key = jax.random.fold_in(state.rng, 0)",
           ("tests/test_steps.py::test_each_step_draws_the_holes_of_its_own_step_number",)),
    Mutant("D judges the first stage's output, not the refined one", "glcic_jax/steps.py",
           "completed = models.blend_into_hole(batch.images, outs[0], batch.masks.mask)\n"
           "    adv = ",
           "completed = models.blend_into_hole(batch.images, outs[-1], batch.masks.mask)\n"
           "    adv = ",
           ("tests/test_steps.py::"
            "test_the_adversarial_gradient_reaches_both_stages_of_the_two_stage_generator",)),
    Mutant("joint step's C update uses D before its update", "glcic_jax/steps.py",
           "_generator_loss(settings, nets, perceptual_fn, new_d, batch, o)",
           "_generator_loss(settings, nets, perceptual_fn, state.d, batch, o)",
           ("tests/test_steps.py::test_joint_g_loss_matches_an_independent_computation",)),
    Mutant("hole MSE counts pixels outside the hole", "glcic_jax/losses.py",
           "diff = (pred - target) * mask.astype(jnp.float32)",
           "diff = (pred - target)",
           ("tests/test_losses.py::test_masked_mse_ignores_pixels_outside_the_hole",)),
    Mutant("one gradient-penalty epsilon for the whole batch", "glcic_jax/losses.py",
           "eps = jax.random.uniform(key, (batch,))",
           "eps = jnp.full((batch,), jax.random.uniform(key, ()))",
           ("tests/test_losses.py::test_gradient_penalty_evaluated_at_interpolates",)),
    Mutant("D's BCE calls completed images real", "glcic_jax/losses.py",
           "fake = optax.sigmoid_binary_cross_entropy(fake_logits.astype(jnp.float32), 0.0)",
           "fake = optax.sigmoid_binary_cross_entropy(fake_logits.astype(jnp.float32), 1.0)",
           ("tests/test_losses.py::test_d_bce_loss_matches_formula",)),
    Mutant("the float composite keeps the generated pixels everywhere", "glcic_jax/models.py",
           "return images * (1.0 - mask) + generated * mask",
           "return generated + 0.0 * images * mask",
           ("tests/test_evaluate.py::test_the_float_blend_and_the_uint8_paste_agree_on_hard_masks",)),
    Mutant("the network input keeps the hole's pixels", "glcic_jax/masks.py",
           "filled = images * (1.0 - mask) + mean * mask",
           "filled = images",
           ("tests/test_masks.py::test_fill_holes",)),
    Mutant("inference composites the coarse stage", "glcic_jax/inference.py",
           "out = out[0] if isinstance(out, tuple) else out",
           "out = out[-1] if isinstance(out, tuple) else out",
           ("tests/test_variants.py::test_inference_composites_the_refined_stage",)),
    Mutant("inference returns the raw output, not the composite", "glcic_jax/inference.py",
           "    out = out[0] if isinstance(out, tuple) else out\n"
           "    return models.blend_into_hole(images, out, mask)",
           "    out = out[0] if isinstance(out, tuple) else out\n"
           "    return out",
           ("tests/test_convert.py::test_converted_network_matches_torch_reference",)),
    Mutant("eval's uint8 paste keeps the method's pixels outside the hole",
           "glcic_jax/evaluate.py",
           "return np.where(hole[..., None], filled, images)",
           "return np.asarray(filled)",
           ("tests/test_evaluate.py::test_every_method_is_exact_outside_the_hole",)),
    Mutant("PSNR with 20 log10 of a power ratio", "glcic_jax/evaluate.py",
           "value = 10.0 * np.log10(255.0**2 / mse)",
           "value = 20.0 * np.log10(255.0**2 / mse)",
           ("tests/test_evaluate.py::test_constant_error_gives_textbook_values",)),
    Mutant("restore picks the oldest checkpoint", "glcic_jax/checkpointing.py",
           "candidates = sorted(self.all_steps() if steps is None else steps, reverse=True)",
           "candidates = sorted(self.all_steps() if steps is None else steps)",
           ("tests/test_complete.py::test_the_newest_of_two_intact_checkpoints_is_restored",)),
    Mutant("a damaged newest checkpoint stops the restore", "glcic_jax/checkpointing.py",
           "self._skip(step, f\"its arrays cannot be read: {_short(e, 200)}\")\n"
           "                    continue",
           "raise",
           ("tests/test_complete.py::"
            "test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one",)),
    Mutant("training saves without the overflow guard", "glcic_jax/train.py",
           "            _check_state_finite(state, step, self.ckpt)\n",
           "",
           ("tests/test_reliability.py::test_training_refuses_to_checkpoint_an_overflowed_state",)),
    Mutant("broadcast_from_main returns this process's value", "glcic_jax/distributed.py",
           "    \"\"\"Process 0's `value` on every process (a no-op with one process).\"\"\"\n"
           "    if jax.process_count() == 1:",
           "    \"\"\"Process 0's `value` on every process (a no-op with one process).\"\"\"\n"
           "    if True:",
           ("tests/test_distributed.py::test_broadcast_and_any_process_agree_across_two_processes",)),
    Mutant("any_process sees only this process's flag", "glcic_jax/distributed.py",
           "    return bool(np.any(flags))",
           "    return bool(flag)",
           ("tests/test_distributed.py::test_broadcast_and_any_process_agree_across_two_processes",)),
)


def check_anchors(root: str = ROOT) -> list[str]:
    """Problems with the list: anchors not found exactly once, mutants that change nothing."""
    problems = []
    for i, m in enumerate(MUTANTS, 1):
        path = os.path.join(root, m.path)
        if not os.path.isfile(path):
            problems.append(f"mutant {i} ({m.name}): no file {m.path}")
            continue
        with open(path, encoding="utf-8") as f:
            count = f.read().count(m.old)
        if count != 1:
            problems.append(f"mutant {i} ({m.name}): its anchor occurs {count} times in {m.path} "
                            f"(need exactly 1): {m.old!r}")
        if m.old == m.new:
            problems.append(f"mutant {i} ({m.name}): the replacement changes nothing")
        if not m.tests:
            problems.append(f"mutant {i} ({m.name}): no tests named")
    return problems


def copy_tree(dest: str) -> None:
    """The files git tracks plus the untracked ones it does not ignore, copied to `dest`."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for raw in names:
        if not raw:
            continue
        rel = raw.decode()
        src = os.path.join(ROOT, rel)
        if not os.path.isfile(src):  # deleted in the work tree
            continue
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, rel))


def run_tests(tree: str, tests: tuple[str, ...], timeout: float) -> tuple[bool, str]:
    """(passed, output tail) of pytest on `tests` in `tree`."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    env = dict(os.environ, PYTHONPATH=tree, PYTHONDONTWRITEBYTECODE="1")
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s"
    return proc.returncode == 0, (proc.stdout + proc.stderr)[-1500:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--check-anchors", action="store_true",
                        help="only check that every anchor occurs exactly once")
    parser.add_argument("--only", default="", help="comma-separated mutant numbers (1-based)")
    parser.add_argument("--timeout", type=float, default=1200.0,
                        help="seconds per pytest run (a timeout counts as caught: noted)")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="do not run the chosen tests on the unmodified copy first")
    args = parser.parse_args(argv)

    if args.list:
        for i, m in enumerate(MUTANTS, 1):
            print(f"{i:2d}. {m.name} [{m.path}]\n    " + "\n    ".join(m.tests))
        return 0
    problems = check_anchors()
    if problems:
        print("error: the mutant list is out of date with the code:\n  " + "\n  ".join(problems),
              file=sys.stderr)
        return 2
    if args.check_anchors:
        print(f"all {len(MUTANTS)} anchors found exactly once")
        return 0
    chosen = ([int(x) for x in args.only.split(",")] if args.only
              else list(range(1, len(MUTANTS) + 1)))

    with tempfile.TemporaryDirectory(prefix="glcic_mutants_") as tree:
        copy_tree(tree)
        if not args.skip_baseline:
            tests = tuple(dict.fromkeys(t for i in chosen for t in MUTANTS[i - 1].tests))
            t0 = time.monotonic()
            ok, out = run_tests(tree, tests, args.timeout * 2)
            print(f"baseline: {len(tests)} tests on the unmodified copy "
                  f"{'pass' if ok else 'FAIL'} ({time.monotonic() - t0:.0f} s)", flush=True)
            if not ok:
                print(out, file=sys.stderr)
                return 2
        caught = []
        for i in chosen:
            m = MUTANTS[i - 1]
            path = os.path.join(tree, m.path)
            with open(path, encoding="utf-8") as f:
                original = f.read()
            with open(path, "w", encoding="utf-8") as f:
                f.write(original.replace(m.old, m.new, 1))
            t0 = time.monotonic()
            try:
                passed, out = run_tests(tree, m.tests, args.timeout)
            finally:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(original)
            verdict = "caught" if not passed else "MISSED"
            print(f"{i:2d}. {verdict:6s} {m.name} ({time.monotonic() - t0:.0f} s)", flush=True)
            if passed:
                print("    " + out.replace("\n", "\n    "), flush=True)
            caught.append(not passed)
    print(f"tally: {sum(caught)}/{len(caught)} mutants caught")
    return 0 if all(caught) else 1


if __name__ == "__main__":
    sys.exit(main())
