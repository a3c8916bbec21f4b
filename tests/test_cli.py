"""The `transgan-fast` command: help texts, dry run, info, demo --quick end to end, generate, bench."""
import json
import os

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from transgan_fast.cli import main
from transgan_fast.train.demo import QUICK_MODEL


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def invoke(*args):
    r = CliRunner().invoke(main, list(args), terminal_width=200, catch_exceptions=False)
    return r


@pytest.mark.parametrize("command", sorted(main.commands))
def test_help_lists_every_option_with_default(command):
    r = invoke(command, "--help")
    assert r.exit_code == 0
    blocks, cur = [], None
    for line in r.output.splitlines():
        if line.startswith("  -"):
            cur = [line]
            blocks.append(cur)
        elif cur is not None and line.startswith("    "):
            cur.append(line)
    text = {b[0].split()[0]: " ".join(b) for b in blocks}
    for p in main.commands[command].params:
        for opt in p.opts:
            assert any(opt in t.split()[0].split("/") or t.startswith(opt) for t in text.values()) \
                or opt in r.output, f"{command}: {opt} missing from --help"
        if "--help" in p.opts:
            continue
        block = next(v for k, v in text.items() if k.startswith(p.opts[0]))
        assert "default" in block or (p.required and "required" in block), \
            f"{command} {p.opts[0]}: no default shown: {block!r}"
        assert p.help, f"{command} {p.opts[0]}: no help text"


def test_train_dry_run_prints_plan(tmp_path):
    r = invoke("train", "--dry-run", "--outdir", str(tmp_path), "--kimg", "2", "--batch", "16",
               "--seed", "3", "--model-json", json.dumps(QUICK_MODEL), "--resolution", "16",
               "--preset", "cifar10", "--data", "shapes")
    assert r.exit_code == 0, r.output
    plan = json.loads(r.output[r.output.index("{"):])
    assert plan["steps"] == 125 and plan["per_rank_batch"] == 16 and plan["world_size"] == 1
    assert plan["options"]["g_batch"] == 32 and plan["options"]["n_critic"] == 4
    assert plan["run_dir"].endswith("00000-cifar10-shapes-b16") and not os.listdir(tmp_path)


def test_train_bad_options_are_usage_errors(tmp_path):
    r = CliRunner().invoke(main, ["train", "--dry-run", "--batch", "6", "--accum-d", "4"])
    assert r.exit_code == 2 and "accum_d" in r.output
    r = CliRunner().invoke(main, ["train", "--dry-run", "--model-json", "[1]"])
    assert r.exit_code == 2 and "JSON object" in r.output


def test_info_table():
    r = invoke("info")
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert lines[1].split()[:4] == ["backend", "built", "usable", "reason"]
    ref = next(l for l in lines if l.startswith("ref "))
    assert ref.split()[1:3] == ["yes", "yes"] and "attn_fwd" in ref
    assert json.loads(invoke("info", "--json").output)["ref"]["usable"] is True


def test_demo_quick_then_generate(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSGAN_FAST_CACHE", str(tmp_path / "cache"))  # the shape classifier
    r = invoke("demo", "--quick", "--outdir", str(tmp_path / "runs"), "--no-progress")
    assert r.exit_code == 0, r.output
    assert "TransGAN demo finished" in r.output and "swd_final" in r.output
    (run,) = os.listdir(tmp_path / "runs")
    run_dir = tmp_path / "runs" / run
    names = os.listdir(run_dir)
    for required in ("options.json", "log.txt", "stats.jsonl", "metric-quality.jsonl", "reals.png",
                     "curves.png", "summary.json", "samples.png"):
        assert required in names, f"{required} missing from {names}"
    assert any(n.startswith("fakes") for n in names) and any(n.startswith("ckpt-") for n in names)
    assert any(n.startswith("events.out.tfevents") for n in names)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] > 0 and summary["swd_initial"] > 0
    assert summary["kind_accuracy"] <= summary["shape_accuracy"]  # the demo is class-conditional
    out = tmp_path / "grid.png"
    r = invoke("generate", "--checkpoint", str(run_dir), "--seeds", "0-5", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == (6 * 16, 3 * 16)  # one row per class
    r = invoke("generate", "--checkpoint", str(run_dir), "--seeds", "0-5", "--class", "2",
               "--out", str(out))
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == (6 * 16, 16)  # the one class asked for: one row
    r = invoke("generate", "--checkpoint", str(run_dir), "--seeds", "4,7", "--class", "1", "--files",
               "--out", str(tmp_path / "files"))
    assert sorted(os.listdir(tmp_path / "files")) == ["seed00004-class1.png", "seed00007-class1.png"]


def test_generate_and_bench_errors(tmp_path):
    r = CliRunner().invoke(main, ["generate", "--checkpoint", str(tmp_path)])
    assert r.exit_code == 2 and "no checkpoint" in r.output
    r = CliRunner().invoke(main, ["bench", "--path", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "not found" in r.output


@pytest.fixture
def noisy_ckpt(tmp_path):
    """A tiny 8x8 checkpoint whose EMA generator has strong attention noise."""
    from test_train_runs import tiny_cfg
    from transgan_fast.train import Trainer
    from transgan_fast.train import checkpoint as ck
    from transgan_fast.train.data import ShapesSource
    from transgan_fast.train.runner import build_models
    cfg = tiny_cfg(1)
    t = Trainer(cfg, *build_models(cfg), ShapesSource(8, 8))
    state = t.state_dict()
    for k in state["G_ema"]:
        if k.endswith("noise_strength"):
            state["G_ema"][k] = torch.tensor(0.5)
    return ck.save_checkpoint(str(tmp_path / "run"), state, 0)


def png(path):
    import numpy as np
    return np.asarray(Image.open(path))


def test_generate_with_noise_is_reproducible(tmp_path, noisy_ckpt):
    grids = []
    for i in range(2):
        r = invoke("generate", "--checkpoint", noisy_ckpt, "--seeds", "0-3", "--out",
                   str(tmp_path / f"g{i}.png"))
        assert r.exit_code == 0, r.output
        grids.append(png(tmp_path / f"g{i}.png"))
    assert (grids[0] == grids[1]).all(), "same seeds, different images"
    # an image depends on its seed alone, not on the other seeds of the call
    invoke("generate", "--checkpoint", noisy_ckpt, "--seeds", "3", "--out", str(tmp_path / "s3.png"))
    assert (png(tmp_path / "s3.png") == grids[0][8:, 8:]).all()
    for mode in ("random", "none"):
        invoke("generate", "--checkpoint", noisy_ckpt, "--seeds", "0-3", "--noise-mode", mode,
               "--out", str(tmp_path / f"{mode}.png"))
        assert (png(tmp_path / f"{mode}.png") != grids[0]).any(), f"--noise-mode {mode} had no effect"


def test_generate_noise_modes_in_python(noisy_ckpt):
    from transgan_fast.train.sample import generate_images, load_generator
    G, path, notes = load_generator(noisy_ckpt)
    assert path == noisy_ckpt and notes == []
    assert torch.equal(generate_images(G, [1, 2], "const"), generate_images(G, [1, 2], "const"))
    assert not torch.equal(generate_images(G, [1, 2], "random"), generate_images(G, [1, 2], "random"))
    assert torch.equal(generate_images(G, [1, 2], "none"), generate_images(G, [1, 2], "none"))
    with pytest.raises(ValueError, match="noise_mode must be one of"):
        generate_images(G, [1], "fixed")


def one_line_error(args, expect):
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0 and isinstance(r.exception, SystemExit), r.output
    assert "Traceback" not in r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and expect in errors[0], r.output


@pytest.mark.parametrize("extra, expect", [
    (["--seeds", "abc"], "'abc' is not a seed or a range"),
    (["--seeds=-3-2"], "'-3-2' is not a seed or a range"),
    (["--seeds", "5-2,7"], "range '5-2' is reversed"),
    (["--seeds", ","], "no seeds in"),
    (["--out", "{tmp}/missing/grid.png"], "does not exist"),
    (["--out", "{tmp}/noext"], "needs an image extension"),
    (["--out", "{tmp}"], "is a directory"),
    (["--backend", "trtion"], "'trtion' is not one of"),
])
def test_generate_argument_errors(tmp_path, noisy_ckpt, extra, expect):
    one_line_error(["generate", "--checkpoint", noisy_ckpt] +
                   [a.format(tmp=tmp_path) for a in extra], expect)


def test_unreadable_checkpoints_and_data_are_one_line_errors(tmp_path, noisy_ckpt):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(3000))
    half = tmp_path / "half.pt"
    half.write_bytes(open(noisy_ckpt, "rb").read()[:4000])
    for bad in (junk, half):
        one_line_error(["generate", "--checkpoint", str(bad), "--out", str(tmp_path / "x.png")],
                       f"{bad} is not a readable checkpoint")
    r = CliRunner().invoke(main, ["--debug", "generate", "--checkpoint", str(junk),
                                  "--out", str(tmp_path / "x.png")])
    assert type(r.exception).__name__ == "CheckpointError"  # --debug: the exception itself
    # a run directory whose newest checkpoint is cut short: the older one, and the bad file named
    run = os.path.dirname(noisy_ckpt)
    (open(os.path.join(run, "ckpt-000000009.pt"), "wb")).write(half.read_bytes())
    r = invoke("generate", "--checkpoint", run, "--seeds", "1", "--out", str(tmp_path / "y.png"))
    assert r.exit_code == 0 and "ckpt-000000009.pt is not a readable checkpoint" in r.output
    assert f"from {noisy_ckpt}" in r.output
    bad_zip = tmp_path / "data.zip"
    bad_zip.write_bytes(b"PK\x03\x04 not really a zip")
    one_line_error(["train", "--dry-run", "--data", str(bad_zip), "--outdir", str(tmp_path / "r")],
                   f"{str(bad_zip)!r} is not a readable zip archive")


def test_train_model_data_mismatch_and_backend_errors(tmp_path):
    one_line_error(["train", "--outdir", str(tmp_path / "runs"), "--model-json",
                    json.dumps(QUICK_MODEL), "--resolution", "32", "--no-progress"],
                   "resolution=32 does not match the model")
    assert not os.path.exists(tmp_path / "runs")
    one_line_error(["train", "--dry-run", "--backend", "cpuu"], "'cpuu' is not one of")


def test_cli_backend_names_match_the_dispatcher():
    from transgan_fast.cli import BACKENDS
    from transgan_fast.ops._dispatch import BACKENDS as OPS_BACKENDS
    from transgan_fast.train.sample import NOISE_MODES
    from transgan_fast.cli import NOISE_MODES as CLI_NOISE_MODES
    assert BACKENDS == ("auto",) + OPS_BACKENDS and CLI_NOISE_MODES == NOISE_MODES


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
def test_device_cuda_without_gpu(tmp_path, noisy_ckpt):
    one_line_error(["generate", "--checkpoint", noisy_ckpt, "--device", "cuda"],
                   "no CUDA device is available")
    one_line_error(["train", "--dry-run", "--device", "cuda"], "no CUDA device is available")


@pytest.mark.parametrize("user_env, spin", [({}, "1000"), ({"GOMP_SPINCOUNT": "5"}, "5"),
                                            ({"OMP_WAIT_POLICY": "ACTIVE"}, "unset")])
def test_cli_shortens_openmp_spinning_before_torch(user_env, spin):
    """The CLI shortens OpenMP's spin-wait unless the user chose a policy, and it can only do so
    because importing the package and the CLI does not load torch (OpenMP reads the variable
    once, when torch loads it)."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = ("import os, sys, transgan_fast.cli; "
            "print('torch' in sys.modules, os.environ.get('GOMP_SPINCOUNT', 'unset'))")
    out = subprocess.run([sys.executable, "-c", code], env={**env, **user_env},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", spin]


def test_package_exports_ops_lazily():
    import transgan_fast
    assert "grid_attention" in transgan_fast.__all__ and "backends" in transgan_fast.__all__
    assert transgan_fast.grid_attention is transgan_fast.ops.grid_attention
    with pytest.raises(AttributeError, match="no attribute 'not_an_op'"):
        transgan_fast.not_an_op
