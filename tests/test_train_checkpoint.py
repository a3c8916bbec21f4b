"""Checkpoints: bit-exact resume (in a fresh process), atomic writes, keep-last-K, safe loading."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import transgan_fast
from _toy_models import ToyD, ToyG
from transgan_fast.train import Trainer, resolve_config
from transgan_fast.train import checkpoint as ck
from transgan_fast.train.data import ShapesSource

HERE = os.path.dirname(os.path.abspath(__file__))
# The child imports the same package as this process (the installed one in CI, not a checkout
# without the compiled extension, whose kernels would differ in the last bits).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(transgan_fast.__file__)))


def make_trainer(seed_models=0):
    torch.manual_seed(seed_models)
    cfg = resolve_config(batch=4, resolution=8, shapes_n=12, n_critic=2, diffaug="translation,cutout,color")
    return Trainer(cfg, ToyG(), ToyD(), ShapesSource(12, 8, seed=1))


def flat_state(t):
    s = t.state_dict()
    out = {}
    for k in ("G", "D", "G_ema"):
        out.update({f"{k}.{n}": v for n, v in s[k].items()})
    for k in ("opt_g", "opt_d"):
        for pid, st in s[k]["state"].items():
            out.update({f"{k}.{pid}.{n}": v for n, v in st.items()})
    return out


RESUME_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads({threads})  # the parent's: reductions split by thread count
    sys.path[:0] = [{root!r}, {here!r}]
    from test_train_checkpoint import make_trainer, flat_state
    from transgan_fast.train import checkpoint as ck
    torch.manual_seed(12345)          # a different process state: must not matter
    t = make_trainer(seed_models=99)  # different initial weights: must be overwritten
    path, state = ck.load_latest({run!r})
    t.load_state_dict(state)
    for _ in range({n}):
        t.step()
    torch.save(flat_state(t), {out!r})
""")


def test_resume_is_bit_exact_in_fresh_process(tmp_path):
    N = 8  # crosses an epoch boundary (12 images, 4 per step) and several G steps
    straight = make_trainer()
    for _ in range(N):
        straight.step()
    first = make_trainer()
    for _ in range(N // 2):
        first.step()
    ck.save_checkpoint(str(tmp_path), first.state_dict(), first.step_idx)
    out = tmp_path / "resumed.pt"
    code = RESUME_SCRIPT.format(root=ROOT, here=HERE, run=str(tmp_path), n=N // 2, out=str(out),
                              threads=torch.get_num_threads())
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    resumed = torch.load(out, weights_only=True)
    ref = flat_state(straight)
    assert resumed.keys() == ref.keys()
    for k in ref:
        assert torch.equal(resumed[k], ref[k]), f"{k} differs after resume"


def test_resume_restores_counters_sampler_and_rng(tmp_path):
    t = make_trainer()
    for _ in range(5):
        t.step()
    torch.manual_seed(7)
    expect_next = torch.rand(3)
    torch.manual_seed(7)
    ck.save_checkpoint(str(tmp_path), t.state_dict(), t.step_idx)
    u = make_trainer(seed_models=3)
    u.load_state_dict(ck.load_checkpoint(ck.latest_checkpoint(str(tmp_path))))
    assert (u.step_idx, u.images_seen) == (5, 20)
    assert u.loader.sampler.state_dict() == t.loader.sampler.state_dict()
    assert torch.equal(torch.rand(3), expect_next)  # global torch RNG restored


def test_checkpoint_is_weights_only_loadable(tmp_path):
    t = make_trainer()
    t.step()
    p = ck.save_checkpoint(str(tmp_path), t.state_dict(), 1)
    s = torch.load(p, weights_only=True)  # raises on any pickled object
    assert s["step"] == 1 and s["config"]["batch"] == 4


def test_keep_last_k_and_bad_args(tmp_path):
    for step in range(5):
        ck.save_checkpoint(str(tmp_path), {"step": step}, step, keep=2)
    names = sorted(os.listdir(tmp_path))
    assert names == ["ckpt-000000003.pt", "ckpt-000000004.pt"]
    with pytest.raises(ValueError, match="keep"):
        ck.save_checkpoint(str(tmp_path), {}, 5, keep=0)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ck.load_checkpoint(str(tmp_path / "nope.pt"))


def test_crash_during_write_keeps_previous_latest(tmp_path, monkeypatch):
    ck.save_checkpoint(str(tmp_path), {"w": torch.ones(10), "step": 1}, 1)

    def crashing_save(obj, f):
        f.write(b"PK\x03\x04 partial garbage")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ck.torch, "save", crashing_save)
    with pytest.raises(OSError, match="simulated"):
        ck.save_checkpoint(str(tmp_path), {"w": torch.zeros(10), "step": 2}, 2)
    assert os.listdir(tmp_path) == ["ckpt-000000001.pt"]  # no partial file, no temp left
    path, state = ck.load_latest(str(tmp_path))
    assert state["step"] == 1


WRITER = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {root!r})
    from transgan_fast.train import checkpoint as ck
    big = torch.randn(4_000_000)
    step = 0
    print("ready", flush=True)
    while True:
        step += 1
        big[0] = step
        ck.save_checkpoint({run!r}, {{"big": big, "step": step}}, step, keep=2)
""")


def test_sigkill_during_writes_never_corrupts(tmp_path):
    run = str(tmp_path)
    for delay in (0.3, 0.55, 0.8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER.format(root=ROOT, run=run)],
                                stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for p in ck.list_checkpoints(run):  # every visible checkpoint is complete
            s = ck.load_checkpoint(p)
            assert s["big"][0].item() == s["step"]
        path, state = ck.load_latest(run)
        assert state is not None and path == ck.latest_checkpoint(run)
    # the next save cleans up temporaries a killed writer left behind
    ck.save_checkpoint(run, {"step": 10 ** 6}, 10 ** 6, keep=1)
    assert os.listdir(run) == ["ckpt-001000000.pt"]


def test_load_latest_skips_corrupt_file(tmp_path):
    ck.save_checkpoint(str(tmp_path), {"step": 1}, 1, keep=5)
    (tmp_path / "ckpt-000000002.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unreadable"):
        path, state = ck.load_latest(str(tmp_path))
    assert state["step"] == 1
