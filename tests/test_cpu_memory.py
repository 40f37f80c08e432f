"""cpu_memory: the training command and the web server restart themselves with glibc's huge-page
tunable where it changes something, and XLA's per-call memory then faults in far fewer pages."""

import json
import os
import subprocess
import sys

import pytest

from glcic_jax import cpu_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A jitted function whose every call needs 64 MiB of XLA temporary memory (the [4096, 4096]
# product, kept for the second one), called 5 times after 2 warm-up calls: page faults per call,
# against the pages of that memory.
PROBE = r"""
import json, resource
import jax, jax.numpy as jnp

def probe():
    f = jax.jit(lambda x, w, v: jnp.tanh(x @ w) @ v)
    args = (jnp.ones((4096, 16)), jnp.ones((16, 4096)) / 16, jnp.ones((4096, 8)))
    compiled = f.lower(*args).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    for _ in range(2):
        jax.block_until_ready(compiled(*args))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        jax.block_until_ready(compiled(*args))
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
    print("PROBE " + json.dumps({"faults_per_call": faults,
                                 "temp_pages": temp / resource.getpagesize()}), flush=True)
"""


def _env() -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("GLIBC_TUNABLES", None)
    return env


def _python(code: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         cwd=ROOT, env=_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _restarts_here() -> bool:
    return cpu_memory.huge_pages_environment(
        _env(), cpu_memory.glibc_release(), cpu_memory.thp_mode()) is not None


def test_the_tunable_is_added_only_where_it_changes_something():
    env = {"PATH": "/bin"}
    assert cpu_memory.huge_pages_environment(env, (2, 36), "madvise") == {
        "PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert cpu_memory.huge_pages_environment(
        {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, (2, 35), "madvise") == {
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
    # The user's own choice stands (=0 turns it off); old glibc, other C libraries, and kernels
    # whose huge pages are always or never used: nothing to change.
    assert cpu_memory.huge_pages_environment(
        {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, (2, 36), "madvise") is None
    assert cpu_memory.huge_pages_environment(env, (2, 34), "madvise") is None
    assert cpu_memory.huge_pages_environment(env, None, "madvise") is None
    for mode in ("always", "never", None):
        assert cpu_memory.huge_pages_environment(env, (2, 36), mode) is None
    assert env == {"PATH": "/bin"}  # a new dict, the caller's untouched


def test_the_kernels_huge_page_mode_is_the_bracketed_one(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert cpu_memory.thp_mode(str(path)) == "madvise"
    path.write_text("[always] madvise never\n")
    assert cpu_memory.thp_mode(str(path)) == "always"
    assert cpu_memory.thp_mode(str(tmp_path / "missing")) is None
    release = cpu_memory.glibc_release()
    assert release is None or (len(release) == 2 and release >= (2, 0))


def test_a_restarted_command_runs_again_with_the_tunable_and_its_arguments():
    code = ("import os, sys\n"
            "print('START', os.environ.get('GLIBC_TUNABLES'), sys.argv[1:], flush=True)\n"
            "from glcic_jax import cpu_memory\n"
            "cpu_memory.relaunch_with_huge_pages()\n"
            "print('RUN', os.environ.get('GLIBC_TUNABLES'), flush=True)\n")
    lines = _python(code, "--flag=a b").splitlines()
    if _restarts_here():
        assert lines == ["START None ['--flag=a b']",
                         "START glibc.malloc.hugetlb=1 ['--flag=a b']",
                         "RUN glibc.malloc.hugetlb=1"]
    else:
        assert lines == ["START None ['--flag=a b']", "RUN None"]


@pytest.mark.skipif(not _restarts_here(),
                    reason="needs glibc >= 2.35 and transparent huge pages in madvise mode")
def test_the_training_command_faults_in_far_fewer_pages_per_call():
    """`python -m glcic_jax.main` restarts itself first: the probe runs where training would.
    Without the restart every call faults in each 4 KiB page of its 64 MiB afresh."""
    code = (PROBE + "from glcic_jax import main, train\n"
            "train.train_and_evaluate = lambda config, workdir: probe()\n"
            "main.run()\n")
    config = f"--config={os.path.join(ROOT, 'configs', 'quickstart.py')}:tiny"
    lines = [ln for ln in _python(code, config, "--workdir=unused").splitlines()
             if ln.startswith("PROBE ")]
    assert len(lines) == 1, lines
    result = json.loads(lines[0][len("PROBE "):])
    assert result["temp_pages"] * os.sysconf("SC_PAGESIZE") >= 48 * 2**20, result
    assert result["faults_per_call"] < 0.25 * result["temp_pages"], result


def test_the_web_server_restarts_first(monkeypatch):
    from glcic_jax import serve

    seen = []
    monkeypatch.setattr(cpu_memory, "relaunch_with_huge_pages", lambda: seen.append("restart"))
    monkeypatch.setattr(serve, "run", lambda argv: seen.append("run") or 0)
    with pytest.raises(SystemExit):
        serve.main()
    assert seen == ["restart", "run"]
