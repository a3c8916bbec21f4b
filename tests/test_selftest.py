"""The GPU self-check (issue 15 item 13): before `auto` first uses a GPU backend for a kernel
family, dtype and device, the backend is checked against the reference; the verdict is cached and
a mismatch raises an error naming the backend and the way out. Tested on the CPU by treating the
`cpu` backend as a GPU backend and injecting a broken kernel."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from conftest import requires_cpu_ext
from transgan_fast.cli import main
from transgan_fast.ops import _dispatch, selftest
from transgan_fast.ops.attention import attention, attention_ref
from transgan_fast.ops.geometry import local_geometry

pytestmark = requires_cpu_ext


@pytest.fixture
def cpu_as_gpu(monkeypatch):
    """`auto` self-checks the cpu backend as it would a GPU one; verdicts start empty."""
    monkeypatch.setattr(_dispatch, "GPU_BACKENDS", ("cpu", "cuda", "triton"))
    monkeypatch.delenv(_dispatch.ENV_VAR, raising=False)
    selftest.clear()
    yield
    selftest.clear()


def _broken_attn_fwd(real):
    def kernel(q, k, v, bias, geom, scale, out, lse):
        real(q, k, v, bias, geom, scale, out, lse)
        out.mul_(1.5)  # plausible-looking, wrong numbers
    return kernel


def _inputs(geom):
    return [torch.randn(2, 2, geom.N, 8) for _ in range(3)]


def test_check_runs_once_per_family_and_is_cached(cpu_as_gpu, monkeypatch):
    runs = []
    real = selftest.run_check
    monkeypatch.setattr(selftest, "run_check", lambda *a: runs.append(a[1:3]) or real(*a))
    band = local_geometry((4, 5), "band1d", width=3)
    clip = local_geometry((4, 5), "window2d", (3, 3), "clip")
    for _ in range(3):
        out = attention(*_inputs(band), band)
    attention(*_inputs(clip), clip)
    assert runs == [("attention/band1d", torch.float32), ("attention/window2d-clip", torch.float32)]
    q, k, v = _inputs(band)
    torch.testing.assert_close(attention(q, k, v, band), attention_ref(q, k, v, band))
    assert out.shape == (2, 2, 20, 8)


def test_mismatch_raises_and_names_the_way_out(cpu_as_gpu, monkeypatch):
    monkeypatch.setitem(_dispatch.KERNELS["cpu"], "attn_fwd",
                        _broken_attn_fwd(_dispatch.KERNELS["cpu"]["attn_fwd"]))
    geom = local_geometry((4, 5), "band1d", width=3)
    for _ in range(2):  # the cached failure raises again
        with pytest.raises(selftest.SelfTestError, match="backend 'cpu' failed its self-check.*"
                           "attention/band1d.*TRANSGAN_FAST_BACKEND=ref"):
            attention(*_inputs(geom), geom)
    q, k, v = _inputs(geom)
    torch.testing.assert_close(attention(q, k, v, geom, backend="ref"), attention_ref(q, k, v, geom))


def test_every_cpu_family_passes():
    results = selftest.run_all(["cpu"], ["cpu"])
    assert {r.family for r in results} == set(selftest.CASES)
    assert all(r.ok for r in results), [(r.family, r.detail) for r in results if not r.ok]
    assert all(r.error <= r.tolerance for r in results)


def test_check_failure_reports_a_crash_too(monkeypatch):
    def boom(*args):
        raise RuntimeError("illegal memory access")
    monkeypatch.setitem(_dispatch.KERNELS["cpu"], "pixel_norm", boom)
    r = selftest.run_check("cpu", "pixel_norm", torch.float32, "cpu")
    assert r.ok is False and "illegal memory access" in r.detail


def test_cli_selftest_table_and_exit_code(monkeypatch):
    r = CliRunner().invoke(main, ["selftest", "--device", "cpu", "--backend", "cpu"])
    assert r.exit_code == 0, r.output
    assert "attention/band1d" in r.output and "pixel_norm" in r.output
    assert "0 failed" in r.output and " ok " in r.output
    # one attention row per family and dtype the backend takes (cpu: float32, bfloat16, float16)
    n_attention = sum(line.split()[1].startswith("attention/")
                      for line in r.output.splitlines() if line.startswith("cpu "))
    assert n_attention >= 4
    monkeypatch.setitem(_dispatch.KERNELS["cpu"], "attn_fwd",
                        _broken_attn_fwd(_dispatch.KERNELS["cpu"]["attn_fwd"]))
    r = CliRunner().invoke(main, ["selftest", "--device", "cpu", "--backend", "cpu"])
    assert r.exit_code == 1 and "FAIL" in r.output and f" {n_attention} failed" in r.output
