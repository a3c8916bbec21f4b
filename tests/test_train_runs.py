"""Whole runs (`run_training`) on a tiny TransGAN with attention noise in G and D, on built-in
shapes: same seed same run, bit-exact resume across snapshots, resume that never loses or mixes
work (older checkpoints, other options, unreadable files), and clean stats after a resume."""
import hashlib
import json
import os

import pytest
import torch

from transgan_fast.train import checkpoint as ck
from transgan_fast.train import resolve_config
from transgan_fast.train.runner import run_training

# 8x8 images, one block per stage; g_noise on (D has noise by default), so every stream is used.
TINY = dict(latent_dim=8, bottom=4, g_channels=[16, 16], g_depths=[1, 1], g_upsample=["bicubic"],
            g_attn=["global", "global"], g_noise=True, heads=2,
            d_scales=[[16, 2, 2, 0]], d_stages=[["global"]])
STEP_KIMG = 0.004  # batch 4: one step per tick


# Bit-identical runs need the same thread count (README): one thread, from conftest.py.
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(steps, **kw):
    opts = dict(resolution=8, batch=4, kimg=steps * STEP_KIMG, tick_kimg=STEP_KIMG,
                snapshot_ticks=2, shapes_n=32, metrics="", model=TINY, n_critic=2, keep_ckpt=5,
                diffaug="translation,cutout,color")
    opts.update(kw)
    return resolve_config(**opts)


def run(outdir, steps, resume=None, **kw):
    return run_training(tiny_cfg(steps, **kw), str(outdir), resume=resume, progress=False,
                        echo=False)


def weights(path):
    s = ck.load_checkpoint(path)
    return {f"{k}.{n}": v for k in ("G", "D", "G_ema") for n, v in s[k].items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def digest(run_dir):
    return {n: hashlib.sha256(open(os.path.join(run_dir, n), "rb").read()).hexdigest()
            for n in sorted(os.listdir(run_dir)) if n.startswith("ckpt-")}


def test_same_seed_same_run_whatever_the_process_state(tmp_path):
    torch.manual_seed(1)
    a = run(tmp_path / "a", 3)
    torch.manual_seed(2)  # --seed alone must fix everything: init, noise, data order, augment
    b = run(tmp_path / "b", 3)
    assert_same(weights(ck.latest_checkpoint(a.run_dir)), weights(ck.latest_checkpoint(b.run_dir)))
    c = run(tmp_path / "c", 3, seed=1)
    wa, wc = weights(ck.latest_checkpoint(a.run_dir)), weights(ck.latest_checkpoint(c.run_dir))
    assert any(not torch.equal(wa[k], wc[k]) for k in wa), "another seed gave the same run"


@pytest.mark.parametrize("recipe", [{}, dict(accum_d=2, accum_g=2, ema_beta=0.995,  # celebahq256-like
                                             diffaug="filter,translation,erase_ratio,color,hue")])
def test_resume_is_bit_exact_with_noise_and_snapshots(tmp_path, recipe):
    # The straight run samples snapshots at steps 2 and 4 and trains on; the other stops at 4 and
    # resumes in a new process state. Snapshot sampling must not move the training streams.
    torch.manual_seed(0)
    straight = run(tmp_path / "a", 6, **recipe)
    torch.manual_seed(0)
    first = run(tmp_path / "b", 4, **recipe)
    torch.manual_seed(99)
    resumed = run(tmp_path / "b", 6, resume="auto", **recipe)
    assert resumed.run_dir == first.run_dir and resumed.resumed_from.endswith("ckpt-000000004.pt")
    assert_same(weights(ck.latest_checkpoint(straight.run_dir)),
                weights(ck.latest_checkpoint(resumed.run_dir)))


def test_resume_from_older_checkpoint_starts_a_new_branch(tmp_path):
    first = run(tmp_path, 8)                                    # checkpoints 2, 4, 6, 8
    before = digest(first.run_dir)
    old = os.path.join(first.run_dir, "ckpt-000000004.pt")
    branch = run(tmp_path, 10, resume=old)
    assert branch.run_dir != first.run_dir, "the branch was written into the abandoned run"
    assert digest(first.run_dir) == before, "the continued run's checkpoints changed"
    with open(os.path.join(branch.run_dir, "resume.json")) as f:
        assert json.load(f) == {"resumed_from": os.path.abspath(old), "step": 4}
    assert sorted(digest(branch.run_dir)) == ["ckpt-000000006.pt", "ckpt-000000008.pt",
                                              "ckpt-000000010.pt"]
    again = run(tmp_path, 12, resume="auto")                    # continues the branch
    assert again.run_dir == branch.run_dir and again.resumed_from.endswith("ckpt-000000010.pt")
    assert digest(first.run_dir) == before


def test_resume_auto_never_mixes_other_options(tmp_path):
    first = run(tmp_path, 2)
    for kw, name in ((dict(lr_g=2e-4), "lr_g"), (dict(seed=5), "seed"),
                     (dict(model={**TINY, "g_depths": [2, 1]}), "model")):
        other = run(tmp_path, 4, resume="auto", **kw)
        assert other.resumed_from is None and other.run_dir != first.run_dir, name
        with open(os.path.join(other.run_dir, "log.txt")) as f:
            assert f"not continuing {first.run_dir}: its options differ: {name} (" in f.read()
        with open(os.path.join(other.run_dir, "options.json")) as f:
            assert json.load(f)[name] == json.loads(json.dumps(kw[name]))
    with pytest.raises(ValueError, match=r"other options: lr_g \(0.0001 -> 0.0002\)"):
        run(tmp_path / "x", 4, resume=first.run_dir, lr_g=2e-4)
    # bookkeeping options may change: a longer run continues in place
    longer = run(tmp_path, 4, resume=first.run_dir, keep_ckpt=2, tick_kimg=2 * STEP_KIMG)
    assert longer.run_dir == first.run_dir and longer.resumed_from is not None


def test_unreadable_newest_checkpoint_falls_back_loudly(tmp_path):
    first = run(tmp_path, 4)                                    # checkpoints 2, 4
    bad = os.path.join(first.run_dir, "ckpt-000000004.pt")
    with open(bad, "r+b") as f:
        f.truncate(os.path.getsize(bad) // 2)
    resumed = run(tmp_path, 6, resume="auto")
    assert resumed.resumed_from.endswith("ckpt-000000002.pt")
    assert resumed.run_dir != first.run_dir                     # the bad file's run is left as it is
    with open(os.path.join(resumed.run_dir, "log.txt")) as f:
        log = f.read()
    assert f"WARNING: skipping unreadable checkpoint: {bad} is not a readable checkpoint" in log


def test_stats_after_resume_have_no_repeated_ticks_and_no_nan_g(tmp_path):
    first = run(tmp_path, 6)
    os.remove(os.path.join(first.run_dir, "ckpt-000000006.pt"))  # killed before that snapshot
    resumed = run(tmp_path, 8, resume="auto")
    assert resumed.resumed_from.endswith("ckpt-000000004.pt")
    with open(os.path.join(first.run_dir, "stats.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == list(range(1, 9))
    with open(os.path.join(first.run_dir, "log.txt")) as f:
        log = f.read()
    assert "G +nan" not in log and "G -" in log                # n_critic=2: every other tick


def test_resolution_mismatch_is_refused_before_the_run_dir_exists(tmp_path):
    with pytest.raises(ValueError, match="resolution=16 does not match the model.*8x8"):
        run(tmp_path / "runs", 2, resolution=16)
    assert not os.path.exists(tmp_path / "runs")


KILLED_RUN = """
import sys, torch
sys.path[:0] = [{here!r}]
torch.set_num_threads(1)
import transgan_fast  # the same package (and compiled extension) as the test process
assert transgan_fast.__file__ == {pkg!r}, (transgan_fast.__file__, {pkg!r})
from test_train_runs import run
run({outdir!r}, 1000)
"""


@pytest.mark.slow
def test_kill_at_any_moment_then_resume_auto_is_bit_exact(tmp_path):
    import subprocess
    import sys
    import time
    here = os.path.dirname(os.path.abspath(__file__))
    import transgan_fast
    # Not from the checkout's root: there `import transgan_fast` would find the source tree, which
    # has no compiled extension after a plain `pip install .`, and the run would use other kernels.
    code = KILLED_RUN.format(here=here, outdir=str(tmp_path), pkg=transgan_fast.__file__)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=str(tmp_path.parent))
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            dirs = os.listdir(tmp_path)
            if dirs and ck.list_checkpoints(str(tmp_path / dirs[0]))[1:]:  # two snapshots written
                break
            time.sleep(0.05)
    finally:
        proc.kill()  # SIGKILL, wherever it lands (mid-step, mid-snapshot, mid-log line)
        proc.wait()
    (run_dir,) = [str(tmp_path / d) for d in os.listdir(tmp_path)]
    newest = int(os.path.basename(ck.latest_checkpoint(run_dir))[5:14])
    resumed = run(tmp_path, newest + 2, resume="auto")
    assert resumed.run_dir == run_dir
    straight = run(tmp_path / "straight", newest + 2)
    assert_same(weights(ck.latest_checkpoint(straight.run_dir)), weights(ck.latest_checkpoint(run_dir)))
    with open(os.path.join(run_dir, "stats.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == list(range(1, newest + 3))
