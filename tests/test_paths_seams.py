"""Where the execution paths meet: no compiler, refusals made before any path runs, the
construction-time kernel build, and a cache directory that cannot be written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import adamkit
from adamkit import device, kernels, optimizers
from adamkit.kernels import build

posix_only = pytest.mark.skipif(sys.platform != "linux", reason="needs a POSIX environment")
SRC = str(Path(adamkit.__file__).resolve().parents[1])


def run_python(script: str, env: dict[str, str], timeout: float = 300, prefix: list[str] = ()) -> subprocess.CompletedProcess:
    env = {**env, "PYTHONPATH": SRC + os.pathsep + env.get("PYTHONPATH", "")}
    return subprocess.run([*prefix, sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True, timeout=timeout)


def plain_env(**changes: str | None) -> dict[str, str]:
    """This environment without adamkit's settings, and without the package's shipped kernel
    modules (ADAMKIT_ISA=native): the kernel is then compiled on first use, as on a platform the
    package has no build for, which is where compilers and caches matter."""
    env = {k: v for k, v in os.environ.items() if k not in ("ADAMKIT_CACHE_DIR", "XDG_CACHE_HOME", "CXX", "ADAMKIT_ISA")}
    env["ADAMKIT_ISA"] = "native"
    env.update({k: v for k, v in changes.items() if v is not None})
    return env


# -- the non-finite policy without a compiler --------------------------------------------------

NONFINITE_WITHOUT_COMPILER = """
    import warnings, torch, adamkit
    for fused in (False, None):
        for policy in ("skip", "raise"):
            param = torch.nn.Parameter(torch.ones(8))
            optimizer = adamkit.Adam([param], nonfinite=policy, fused=fused)
            param.grad = torch.ones(8)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # fused=None: the one reference-path warning
                optimizer.step()
            stepped = param.detach().clone()
            param.grad = torch.tensor([float("nan")] * 8)
            try:
                optimizer.step()
            except FloatingPointError:
                assert policy == "raise"
            else:
                assert policy == "skip" and optimizer.param_groups[0]["skipped_steps"] == 1
            assert torch.equal(param.detach(), stepped)
    print("ok")
"""


@posix_only
def test_nonfinite_policies_work_without_a_compiler(tmp_path):
    env = plain_env(CXX="/nonexistent/g++", ADAMKIT_CACHE_DIR=str(tmp_path / "cache"))
    result = run_python(NONFINITE_WITHOUT_COMPILER, env)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_fused_false_never_asks_for_the_kernel(monkeypatch):
    """fused=False promises the reference loop: counting non-finite values uses torch ops."""

    def refuse(*args, **kwargs):
        raise AssertionError("the kernel was requested with fused=False")

    monkeypatch.setattr(build, "load_library", refuse)
    monkeypatch.setattr(kernels, "load_library", refuse)
    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setattr(build, "build_in_background", refuse)
    param = nn.Parameter(torch.ones(8))
    optimizer = adamkit.AdamW([param], nonfinite="raise", fused=False)
    param.grad = torch.ones(8)
    optimizer.step()
    param.grad = torch.full((8,), float("inf"))
    with pytest.raises(FloatingPointError, match="8 NaN/Inf values"):
        optimizer.step()


def test_counting_falls_back_to_torch_ops_when_the_kernel_is_missing(monkeypatch):
    def missing(*args, **kwargs):
        raise kernels.KernelBuildError("no kernel here")

    monkeypatch.setattr(kernels, "load_library", missing)
    monkeypatch.setattr(kernels, "_module", None)
    values = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 0.0])
    for dtype in (torch.float32, torch.float64):
        assert kernels.count_nonfinite(values.to(dtype)) == 3


# -- refusals before anything changes -----------------------------------------------------------


def bitwise_snapshot(optimizer):
    params = [(p.detach().clone(), None if p.grad is None else p.grad.clone()) for g in optimizer.param_groups for p in g["params"]]
    state = {id(p): {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()} for p, s in optimizer.state.items()}
    return params, state


def assert_bitwise_unchanged(optimizer, before):
    params, state = before
    now = [p for g in optimizer.param_groups for p in g["params"]]
    for (old, old_grad), param in zip(params, now):
        assert torch.equal(old.view(torch.uint8), param.detach().view(torch.uint8))
        if old_grad is None:
            assert param.grad is None
        elif old_grad.is_sparse:
            assert param.grad.is_sparse and torch.equal(old_grad.to_dense(), param.grad.to_dense())
        else:
            assert torch.equal(old_grad.view(torch.uint8), param.grad.view(torch.uint8))
    assert {id(p) for p in optimizer.state} == set(state)
    for param, param_state in optimizer.state.items():
        assert param_state.keys() == state[id(param)].keys()
        for key, value in param_state.items():
            assert torch.equal(state[id(param)][key], value), key


@pytest.mark.parametrize("implementation", ["fused", "foreach"])
@pytest.mark.parametrize("stepped_before", [False, True], ids=["fresh", "stepped"])
def test_a_sparse_gradient_on_the_device_path_is_refused_before_any_group_steps(implementation, stepped_before):
    torch.manual_seed(0)
    dense = [nn.Parameter(torch.randn(6)), nn.Parameter(torch.randn(3, 2))]
    table = nn.Parameter(torch.randn(10, 3))
    late = nn.Parameter(torch.randn(4))
    with device.force_cpu(implementation):
        optimizer = adamkit.Adam([{"params": dense}, {"params": [late, table]}], lr=0.1, amsgrad=True)
        if stepped_before:
            for param in (*dense, table, late):
                param.grad = torch.randn_like(param)
            optimizer.step()
        for param in (*dense, late):
            param.grad = torch.randn_like(param)
        table.grad = torch.sparse_coo_tensor([[1, 7]], torch.randn(2, 3), (10, 3))
        before = bitwise_snapshot(optimizer)
        with pytest.raises(RuntimeError, match=r"sparse gradient.*param_groups\[1\]\['params'\]\[1\].*nothing was updated"):
            optimizer.step()
        assert_bitwise_unchanged(optimizer, before)


# -- the construction-time build and the warning --------------------------------------------------


@pytest.fixture
def build_requests(monkeypatch):
    calls = []
    monkeypatch.setattr(build, "build_in_background", lambda *args, **kwargs: calls.append(args))
    return calls


def test_no_kernel_build_for_a_model_without_cpu_parameters(build_requests):
    params = [nn.Parameter(torch.empty(5, device="meta")), nn.Parameter(torch.empty(2, 3, device="meta"))]
    adamkit.AdamW(params)
    adamkit.Adam([{"params": params[:1]}, {"params": params[1:], "lr": 0.1}])
    assert build_requests == []


def test_the_kernel_is_built_only_for_groups_that_take_it(build_requests):
    cpu = nn.Parameter(torch.zeros(3))
    adamkit.Adam([cpu], fused=False)
    adamkit.Adam([cpu], differentiable=True)
    assert build_requests == []
    adamkit.Adam([cpu])
    assert len(build_requests) == 1
    build_requests.clear()
    optimizer = adamkit.Adam([nn.Parameter(torch.empty(2, device="meta"))])
    assert build_requests == []
    optimizer.add_param_group({"params": [nn.Parameter(torch.zeros(2))]})  # a CPU group added later
    assert len(build_requests) == 1


def test_the_reference_path_warning_points_at_the_users_step_once(monkeypatch):
    def missing(*args, **kwargs):
        raise kernels.KernelBuildError("no compiler here")

    monkeypatch.setattr(kernels, "available", lambda: False)
    monkeypatch.setattr(build, "load_library", missing)
    monkeypatch.setattr(optimizers, "_warned_reference_path", False)
    param = nn.Parameter(torch.ones(4))
    optimizer = adamkit.Adam([param])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            param.grad = torch.ones(4)
            optimizer.step()
        adamkit.AdamW([param]).step()
    messages = [w for w in caught if issubclass(w.category, RuntimeWarning) and "reference path" in str(w.message)]
    assert len(messages) == 1, [str(w.message) for w in caught]
    assert messages[0].filename == __file__


# -- the cache directory ------------------------------------------------------------------------------

TRAIN_AND_COMPARE = """
    import warnings, torch, adamkit
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(50)) for _ in range(3)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ours, theirs = adamkit.AdamW(params), adamkit.AdamW(twins, fused=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            for p, q in zip(params, twins):
                p.grad = q.grad = torch.randn(50)
            ours.step(); theirs.step()
        assert all(torch.equal(p, q) for p, q in zip(params, twins))
        adamkit.Adam(params).step()  # another optimizer: no second warning
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert "reference path" in messages[0], messages
    print(messages[0])
"""


@posix_only
def test_a_cache_directory_that_cannot_be_made_means_the_loop_path(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_python(TRAIN_AND_COMPARE, plain_env(ADAMKIT_CACHE_DIR=str(blocker / "cache")))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cache" in result.stdout


@posix_only
def test_an_unwritable_home_as_another_user_means_the_loop_path(tmp_path):
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs setpriv and root to run as another user")
    prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    env = plain_env(HOME="/nonexistent")
    probe = run_python("import torch, adamkit", env, prefix=prefix)
    if probe.returncode != 0:
        last_line = (probe.stderr.strip().splitlines() or [""])[-1]
        pytest.skip(f"the interpreter or adamkit is not readable by another user ({last_line})")
    result = run_python(TRAIN_AND_COMPARE, env, prefix=prefix)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_cache_directory_follows_xdg_and_survives_a_missing_home(monkeypatch, tmp_path):
    monkeypatch.delenv("ADAMKIT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert build.cache_dir() == tmp_path / "adamkit"
    monkeypatch.setenv("ADAMKIT_CACHE_DIR", str(tmp_path / "mine"))
    assert build.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("ADAMKIT_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    fallback = build.cache_dir()
    assert fallback.is_absolute() and "adamkit" in fallback.name


def fake_compiler(tmp_path: Path, log: Path, body: str) -> str:
    script = tmp_path / "fake-cxx"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "fake-cxx 1.0"; exit 0; fi\n'
        f'echo compile >> "{log}"\n'
        'out=""; prev=""\n'
        'for arg in "$@"; do [ "$prev" = "-o" ] && out="$arg"; prev="$arg"; done\n' + body
    )
    script.chmod(0o755)
    return str(script)


@posix_only
def test_a_failed_build_is_remembered_across_processes(tmp_path):
    log = tmp_path / "compiles.log"
    compiler = fake_compiler(tmp_path, log, 'echo "error: this compiler is broken" >&2\nexit 1\n')
    env = plain_env(CXX=compiler, ADAMKIT_CACHE_DIR=str(tmp_path / "cache"))
    outputs = []
    for _ in range(2):
        result = run_python(TRAIN_AND_COMPARE, env)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(result.stdout)
    assert log.read_text().count("compile") == 1
    notes = list((tmp_path / "cache").glob("adam_kernel-*.failed"))
    assert len(notes) == 1 and "broken" in notes[0].read_text()
    for output in outputs:
        assert str(notes[0]) in output and "delete" in output


@posix_only
def test_a_build_outlives_the_process_that_started_it(tmp_path):
    """A short script exits while the kernel compiles: the build still lands in the cache, and the
    next process waits for it instead of compiling again."""
    gxx = shutil.which("g++") or shutil.which("c++")
    if gxx is None:
        pytest.skip("needs a C++ compiler")
    log = tmp_path / "compiles.log"
    # the real compiler, slowed down at the module's final link (one per build of the module)
    compiler = tmp_path / "slow-cxx"
    compiler.write_text(f'#!/bin/sh\ncase " $* " in *" -shared "*) echo compile >> "{log}"; sleep 6;; esac\nexec {gxx} "$@"\n')
    compiler.chmod(0o755)
    compiler = str(compiler)
    cache = tmp_path / "cache"
    env = plain_env(CXX=compiler, ADAMKIT_CACHE_DIR=str(cache), LINK_LOG=str(log))
    started = run_python(
        """
        import os, time
        from adamkit.kernels import build
        build.build_in_background()
        while not os.path.exists(os.environ["LINK_LOG"]):  # the module's objects are compiled
            time.sleep(0.2)
        time.sleep(1)  # the link is running; the process ends now
        """,
        env,
    )
    assert started.returncode == 0, started.stderr[-3000:]
    assert log.read_text().count("compile") == 1
    second = run_python("from adamkit.kernels import build; print(build.load_library())", env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert log.read_text().count("compile") == 1
    deadline = time.time() + 30
    while list(cache.glob("tmp*")) and time.time() < deadline:
        time.sleep(0.2)
    assert len(list(cache.glob("adam_kernel-*.so"))) == 1 and not list(cache.glob("tmp*"))
