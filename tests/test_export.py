"""Exporting the generator (docs/export.md): ONNX, the AOTInductor `.pt2`, the CLI, the C++ example.

One small generator (the demo's `--quick` model, 16x16 images) is exported once per format per test
session; every comparison is against eager G (default `auto` backend, i.e. the fused CPU kernels
when built) on the same latents, within docs/export.md's tolerance `TOL`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from transgan_fast.cli import main
from transgan_fast.deploy import export_generator, fused_ops_of, load_exported, load_generator
from transgan_fast.train.config import resolve_config
from transgan_fast.train.demo import QUICK_MODEL
from transgan_fast.train.runner import build_models

# docs/export.md: float32 artefacts against eager G, images in [-1, 1]. Exported and eager differ
# only by summation order (Inductor/ONNX Runtime kernels, fused CPU kernels vs reference).
TOL = 1e-4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _have(mod: str) -> bool:
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


requires_onnx = pytest.mark.skipif(
    not (_have("onnx") and _have("onnxscript") and _have("onnxruntime")),
    reason="onnx, onnxscript or onnxruntime not installed (pip install '.[export]')")


@pytest.fixture(autouse=True)
def poison_outputs():
    # Export traces the reference path (no kernel outputs to poison); eager G runs unpoisoned so
    # the two are compared on real values.
    yield


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory with one checkpoint of the quick demo model (random weights, EMA != raw)."""
    d = tmp_path_factory.mktemp("run")
    cfg = resolve_config(preset="cifar10", data="shapes", resolution=16, batch=16,
                         model=QUICK_MODEL, backend="auto")
    torch.manual_seed(0)
    G, _ = build_models(cfg)
    G_ema, _ = build_models(cfg)
    torch.save({"format": 1, "config": cfg.to_dict(), "step": 7, "epoch": 0.5,
                "G": G.state_dict(), "G_ema": G_ema.state_dict()}, d / "ckpt-000000007.pt")
    return d


@pytest.fixture(scope="module")
def eager(run_dir):
    G, info = load_generator(str(run_dir))
    return G


def _latents(n, dim, seed=1):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def _eager_images(G, z):
    with torch.no_grad():
        return G(z).clamp(-1, 1)


@pytest.fixture(scope="module")
def onnx_file(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "g.onnx"
    G, info = load_generator(str(run_dir))
    t = time.process_time()
    meta = export_generator(G, "onnx", str(out), info=info)
    meta["_cpu_s"] = time.process_time() - t
    return out, meta


@pytest.fixture(scope="module")
def pt2_file(run_dir, tmp_path_factory):
    """The `.pt2` package, compiled once for the module (AOTInductor: minutes of CPU).

    Fixed batch 4 (the ONNX file has the dynamic batch), so the chunking and padding of fixed-batch
    files is covered in Python and C++ without a second export."""
    out = tmp_path_factory.mktemp("pt2") / "g.pt2"
    t = time.process_time() + _children_cpu_s()
    r = CliRunner().invoke(main, ["export", "--checkpoint", str(run_dir), "--format", "pt2",
                                  "--batch", "4", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    print(f"pt2 export + check: {time.process_time() + _children_cpu_s() - t:.1f} s CPU")
    return out, json.loads((out.parent / "g.pt2.json").read_text())


# ---- load and CLI errors (fast) ---------------------------------------------------------------

def _export_cli(*args):
    return CliRunner().invoke(main, ["export", *args])


def _one_line_error(r, *needles):
    assert r.exit_code != 0
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in r.output


def test_export_cli_errors_are_one_line(run_dir, tmp_path):
    bad = tmp_path / "ckpt-000000001.pt"
    bad.write_bytes(b"not a checkpoint")
    _one_line_error(_export_cli("--checkpoint", str(bad), "--format", "onnx",
                                "--out", str(tmp_path / "g.onnx")), "--checkpoint", "not a readable")
    _one_line_error(_export_cli("--checkpoint", str(tmp_path / "nope"), "--format", "onnx",
                                "--out", str(tmp_path / "g.onnx")), "no file or run directory")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    _one_line_error(_export_cli("--checkpoint", str(empty), "--format", "pt2",
                                "--out", str(tmp_path / "g.pt2")), "holds no ckpt")
    _one_line_error(_export_cli("--checkpoint", str(run_dir), "--format", "tflite",
                                "--out", str(tmp_path / "g.tflite")), "'tflite'", "pt2, onnx")
    _one_line_error(_export_cli("--checkpoint", str(run_dir), "--format", "onnx",
                                "--out", str(tmp_path / "missing" / "g.onnx")), "does not exist")
    _one_line_error(_export_cli("--checkpoint", str(run_dir), "--format", "onnx",
                                "--out", str(tmp_path / "g.pt2")), "must end in '.onnx'")
    _one_line_error(_export_cli("--checkpoint", str(run_dir), "--format", "pt2", "--batch", "2",
                                "--dynamic-batch", "--out", str(tmp_path / "g.pt2")), "exclude")
    torch.save({"G": {}}, tmp_path / "ckpt-000000002.pt")
    _one_line_error(_export_cli("--checkpoint", str(tmp_path / "ckpt-000000002.pt"), "--format",
                                "pt2", "--out", str(tmp_path / "g.pt2")), "'config'")
    if not torch.cuda.is_available():
        _one_line_error(_export_cli("--checkpoint", str(run_dir), "--format", "pt2", "--device",
                                    "cuda", "--out", str(tmp_path / "g.pt2")), "no CUDA device")
    assert not [n for n in os.listdir(tmp_path) if n.startswith("g.")]


def test_generate_exported_errors(tmp_path):
    r = CliRunner().invoke(main, ["generate", "--exported", str(tmp_path / "g.pt2")])
    _one_line_error(r, "no file")
    (tmp_path / "g.onnx").write_bytes(b"x")
    r = CliRunner().invoke(main, ["generate", "--exported", str(tmp_path / "g.onnx")])
    _one_line_error(r, "no sidecar")
    r = CliRunner().invoke(main, ["generate"])
    assert r.exit_code == 2 and "exactly one of --checkpoint and --exported" in r.output


def test_load_generator_uses_ema_or_raw(run_dir):
    G_ema, info = load_generator(str(run_dir))
    G_raw, info_raw = load_generator(str(run_dir), ema=False)
    assert info["weights"] == "G_ema" and info_raw["weights"] == "G" and info["step"] == 7
    z = _latents(2, G_ema.latent_dim)
    assert (_eager_images(G_ema, z) - _eager_images(G_raw, z)).abs().max() > 1e-3


# ---- ONNX ---------------------------------------------------------------------------------------

@requires_onnx
def test_onnx_matches_eager_with_dynamic_batch(onnx_file, eager):
    out, meta = onnx_file
    print(f"ONNX export: {meta['_cpu_s']:.1f} s CPU")
    side = json.loads(open(str(out) + ".json").read())
    assert side["batch"] == "dynamic" and side["latent_dim"] == 32 and side["img_size"] == 16
    assert side["output"]["value_range"] == [-1.0, 1.0] and side["preset"] == "cifar10"
    assert side["check"]["ran"] and side["check"]["max_abs_diff_vs_eager"] <= TOL
    assert side["custom_ops_in_graph"] == []  # every fused op went to its reference
    assert set(side["ops"]) == {"attention_qkv", "bicubic_upsample_seq"}
    assert {"MatMul", "Softmax", "Resize"} <= set(side["onnx_ops"])
    gen = load_exported(str(out))
    for n in (1, 5):
        z = _latents(n, 32, seed=n)
        got = gen(z)
        assert got.shape == (n, 3, 16, 16)
        assert (got - _eager_images(eager, z)).abs().max() <= TOL
    with pytest.raises(ValueError, match=r"z must be \(B, 32\)"):
        gen(torch.zeros(2, 31))


@requires_onnx
def test_onnx_session_directly(onnx_file, eager):
    import onnxruntime as ort
    out, _ = onnx_file
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = s.get_inputs(), s.get_outputs()
    assert inp.name == "z" and outp.name == "image" and inp.shape[1] == 32
    z = _latents(3, 32)
    got = torch.from_numpy(s.run(None, {"z": z.numpy()})[0])
    assert (got - _eager_images(eager, z)).abs().max() <= TOL


@requires_onnx
def test_generate_exported_onnx_writes_the_same_grid(onnx_file, run_dir, tmp_path):
    out, _ = onnx_file
    a, b = tmp_path / "ckpt.png", tmp_path / "onnx.png"
    r = CliRunner().invoke(main, ["generate", "--checkpoint", str(run_dir), "--seeds", "0-5",
                                  "--out", str(a), "--device", "cpu"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["generate", "--exported", str(out), "--seeds", "0-5",
                                  "--out", str(b)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    pa, pb = (torch.from_numpy(np.asarray(Image.open(p), dtype=np.int16)) for p in (a, b))
    assert pa.shape == pb.shape == (2 * 16, 3 * 16, 3)
    assert (pa - pb).abs().max() <= 1  # TOL is far below one 8-bit level; rounding may flip one


# ---- AOTInductor .pt2 (slow: one compile per session, about 90 s of CPU) -------------------------

@pytest.mark.slow
def test_pt2_fixed_batch_matches_eager(pt2_file, eager):
    out, side = pt2_file
    assert side["format"] == "pt2" and side["batch"] == 4 and side["device"] == "cpu"
    assert side["check"]["ran"] and side["check"]["max_abs_diff_vs_eager"] <= TOL
    assert side["custom_ops_in_graph"] == []  # no pybind kernels inside: a Python-free package
    assert all(v.startswith("reference decomposition") for v in side["ops"].values())
    package = torch._inductor.aoti_load_package(str(out))
    md = package.get_metadata()
    assert md["transgan_fast.latent_dim"] == "32" and md["transgan_fast.batch"] == "4"
    gen = load_exported(str(out))
    for n in (1, 5):  # one padded chunk; a full chunk and a padded one
        z = _latents(n, 32, seed=n)
        assert (gen(z) - _eager_images(eager, z)).abs().max() <= TOL


@pytest.mark.slow
def test_generate_exported_pt2_writes_the_same_grid(pt2_file, run_dir, tmp_path):
    out, _ = pt2_file
    a, b = tmp_path / "ckpt.png", tmp_path / "pt2.png"
    for args, path in ((["--checkpoint", str(run_dir), "--device", "cpu"], a),
                       (["--exported", str(out)], b)):
        r = CliRunner().invoke(main, ["generate", *args, "--seeds", "0-4", "--out", str(path)],
                               catch_exceptions=False)
        assert r.exit_code == 0, r.output
    pa, pb = (np.asarray(Image.open(p), dtype=np.int16) for p in (a, b))
    assert pa.shape == pb.shape == (2 * 16, 3 * 16, 3) and np.abs(pa - pb).max() <= 1


def _children_cpu_s() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _cmake_prefix() -> str:
    import torch.utils
    return torch.utils.cmake_prefix_path


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None,
                    reason="cmake or a C++ compiler not found")
def test_cpp_example_writes_the_grid_of_generate_exported(pt2_file, tmp_path):
    """Build examples/cpp_generate against the torch wheel (about 30 s of CPU) and run it."""
    out, _ = pt2_file
    build = tmp_path / "build"
    t = _children_cpu_s()
    for cmd in (["cmake", "-S", os.path.join(ROOT, "examples", "cpp_generate"), "-B", str(build),
                 f"-DCMAKE_PREFIX_PATH={_cmake_prefix()}"],
                ["cmake", "--build", str(build), "-j2"]):
        p = subprocess.run(cmd, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    exe = build / "transgan_generate"
    cpp, py = tmp_path / "cpp.png", tmp_path / "py.png"
    p = subprocess.run([str(exe), str(out), str(cpp), "--seeds", "0-5,9"], capture_output=True,
                       text=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert p.returncode == 0, p.stderr
    r = CliRunner().invoke(main, ["generate", "--exported", str(out), "--seeds", "0-5,9",
                                  "--out", str(py)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    a, b = (np.asarray(Image.open(q), dtype=np.int16) for q in (cpp, py))
    assert a.shape == b.shape == (3 * 16, 3 * 16, 3)
    assert np.abs(a - b).max() <= 1 and a.std() > 0  # same latents, same package
    # Latents from a file: the seeds' latents written out give the same images.
    z = torch.stack([torch.randn(32, generator=torch.Generator().manual_seed(s)) for s in (0, 1)])
    lat = tmp_path / "z.txt"
    lat.write_text("\n".join(" ".join(f"{v:.9g}" for v in row.tolist()) for row in z))
    p = subprocess.run([str(exe), str(out), str(tmp_path / "f.png"), "--latents", str(lat)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    f = np.asarray(Image.open(tmp_path / "f.png"), dtype=np.int16)
    assert f.shape == (16, 32, 3) and np.abs(f - a[:16, :32]).max() <= 1
    p = subprocess.run([str(exe), str(out), str(tmp_path / "x.png"), "--latents", str(tmp_path)],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "error:" in p.stderr
    print(f"C++ example: configure + build + 4 runs: {_children_cpu_s() - t:.1f} s CPU")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_pt2_cuda_compiles_the_triton_kernels_in(run_dir, eager, tmp_path):
    out = tmp_path / "g_cuda.pt2"
    G, info = load_generator(str(run_dir))
    meta = export_generator(G, "pt2", str(out), device="cuda", info=info)
    assert any("triton_attn_qkv_fwd" in op for op in meta["custom_ops_in_graph"])
    assert meta["ops"]["attention_qkv"].startswith("Triton kernels")
    assert meta["check"]["ran"] and meta["check"]["max_abs_diff_vs_eager"] <= TOL
    gen = load_exported(str(out), device="cuda")
    z = _latents(3, 32)
    assert (gen(z) - _eager_images(eager, z)).abs().max() <= TOL


def test_backend_plan_of_every_fused_op():
    from transgan_fast.deploy.export import _plan_backends
    from transgan_fast.models import build
    G, _ = build("church256", device="meta")  # pixel norm, noise, bicubic and shuffle upsampling
    ops = fused_ops_of(G)
    assert ops == {"attention_qkv": 25, "pixel_norm": 50, "bicubic_upsample_seq": 2,
                   "pixel_shuffle_seq": 3}
    assert _plan_backends(G, "cpu") == {op: "ref" for op in ops}
    assert {m.backend for m in G.modules() if isinstance(getattr(m, "backend", None), str)} == {"ref"}
