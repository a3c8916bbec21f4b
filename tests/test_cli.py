"""The `transgan-fast` command: help texts, dry run, info, demo --quick end to end, generate, bench."""
import json
import os

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from transgan_fast.cli import main
from transgan_fast.train.demo import QUICK_MODEL


@pytest.fixture(autouse=True)
def one_thread():
    # The test machine is shared; one intra-op thread avoids OpenMP oversubscription stalls.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
               "--seed", "3", "--model-json", json.dumps(QUICK_MODEL),
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


def test_demo_quick_then_generate(tmp_path):
    r = invoke("demo", "--quick", "--outdir", str(tmp_path), "--no-progress")
    assert r.exit_code == 0, r.output
    assert "TransGAN demo finished" in r.output and "SWD (x1e3)" in r.output
    (run,) = os.listdir(tmp_path)
    run_dir = tmp_path / run
    names = os.listdir(run_dir)
    for required in ("options.json", "log.txt", "stats.jsonl", "metric-quality.jsonl", "reals.png",
                     "curves.png", "summary.json"):
        assert required in names, f"{required} missing from {names}"
    assert any(n.startswith("fakes") for n in names) and any(n.startswith("ckpt-") for n in names)
    assert any(n.startswith("events.out.tfevents") for n in names)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] > 0 and summary["swd_initial"] > 0
    out = tmp_path / "grid.png"
    r = invoke("generate", "--checkpoint", str(run_dir), "--seeds", "0-5", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == (3 * 16, 2 * 16)
    r = invoke("generate", "--checkpoint", str(run_dir), "--seeds", "4,7", "--files",
               "--out", str(tmp_path / "files"))
    assert sorted(os.listdir(tmp_path / "files")) == ["seed00004.png", "seed00007.png"]


def test_generate_and_bench_errors(tmp_path):
    r = CliRunner().invoke(main, ["generate", "--checkpoint", str(tmp_path)])
    assert r.exit_code == 2 and "no checkpoint" in r.output
    r = CliRunner().invoke(main, ["bench", "--path", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "not found" in r.output
