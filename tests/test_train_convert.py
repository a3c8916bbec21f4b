"""`transgan-fast convert`: a released checkpoint becomes one that `generate` and `train --resume`
accept, with weights, EMA, Adam moments (re-indexed) and progress carried over."""
import json
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from transgan_fast.cli import main
from transgan_fast.models import build
from transgan_fast.models.official import official_buffers, official_key_map
from transgan_fast.train import checkpoint as ck
from transgan_fast.train.convert import _iterations_per_epoch, convert_official

# cifar10's layout at 32x32 with tiny widths, so the data resolution stays the preset's.
TINY = dict(latent_dim=16, bottom=8, g_channels=[64, 16, 4], g_depths=[1, 1, 1],
            d_scales=[[24, 2, 2, 0], [8, 4, 4, 0]], d_stages=[["global"], ["global"]])


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _tuples(v):
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def _released(tmp_path):
    """A released-layout checkpoint file whose key order (= the released optimizer's parameter
    order) is shuffled, with Adam moments that say which released key they belong to."""
    G, D = build("cifar10", **{k: _tuples(v) for k, v in TINY.items()})
    with torch.no_grad():
        for p in list(G.parameters()) + list(D.parameters()):
            p.normal_(0, 0.05)
    rng = random.Random(0)
    ck_ = {"epoch": 3, "best_fid": np.float64(20.0), "path_helper": {"prefix": "x"}}
    tags = {}
    for net, layout, sd_key, opt_key in ((G, "rp", "gen_state_dict", "gen_optimizer"),
                                         (D, "scale2", "dis_state_dict", "dis_optimizer")):
        kmap = official_key_map(net, layout)
        own = net.state_dict()
        items = [(kmap[k], own[k].clone()) for k in own]
        rng.shuffle(items)
        sd = {"module." + k: v for k, v in items}
        for k, v in official_buffers(net, layout).items():
            sd["module." + k] = v
        ck_[sd_key] = sd
        state = {}
        for i, (k, v) in enumerate(items):
            tags[(sd_key, k)] = float(i + 1) + (0.5 if sd_key == "dis_state_dict" else 0.0)
            state[i] = {"step": 40, "exp_avg": torch.full_like(v, tags[(sd_key, k)]),
                        "exp_avg_sq": torch.full_like(v, 2 * tags[(sd_key, k)])}
        ck_[opt_key] = {"state": state, "param_groups": [
            {"lr": 1e-4, "betas": (0.0, 0.99), "eps": 1e-8, "weight_decay": 0, "amsgrad": False,
             "params": list(range(len(items)))}]}
    ck_["avg_gen_state_dict"] = {k: v * 0.5 if v.is_floating_point() else v
                                 for k, v in ck_["gen_state_dict"].items()}
    path = tmp_path / "released.pth"
    torch.save(ck_, path)
    return path, G, D, tags


def test_iterations_per_epoch_of_released_loaders():
    # CIFAR-10: 50,000 / 8 GPUs = 6,250 per rank in batches of 8, last one partial.
    assert _iterations_per_epoch("cifar10") == 782
    assert _iterations_per_epoch("stl10") == 3282          # 105,000 / 8 / 4
    assert _iterations_per_epoch("church256") == 7889      # ceil(126,227 / 8) // 2
    assert _iterations_per_epoch("celebahq256") == 1875


def test_convert_then_generate_and_resume(tmp_path):
    path, G, D, tags = _released(tmp_path)
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["convert", "--official", str(path), "--preset", "cifar10",
                                  "--out", str(out), "--model-json", json.dumps(TINY)])
    assert r.exit_code == 0, r.output
    state = ck.load_checkpoint(ck.latest_checkpoint(str(out)))
    assert state["images_seen"] == 3 * 782 * 64 and state["step"] == 3 * 782
    for (n, p), (_, q) in zip(G.state_dict().items(), state["G_ema"].items()):
        assert torch.equal(q, 0.5 * p), n
    for n, p in D.state_dict().items():
        assert torch.equal(state["D"][n], p), n
    # Each package parameter's Adam moment is the one of its released key.
    for net, layout, sd_key, opt in ((G, "rp", "gen_state_dict", "opt_g"),
                                     (D, "scale2", "dis_state_dict", "opt_d")):
        kmap = official_key_map(net, layout)
        names = [n for n, _ in net.named_parameters()]
        assert len(state[opt]["state"]) == len(names)
        for i, n in enumerate(names):
            s = state[opt]["state"][i]
            assert s["exp_avg"].flatten()[0].item() == tags[(sd_key, kmap[n])], n
            assert s["exp_avg_sq"].flatten()[0].item() == 2 * tags[(sd_key, kmap[n])], n
    r = CliRunner().invoke(main, ["generate", "--checkpoint", str(out), "--seeds", "0-3",
                                  "--out", str(tmp_path / "g.png"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "g.png").stat().st_size > 0
    kimg = (3 * 782 * 64 + 128) / 1000
    r = CliRunner().invoke(main, ["train", "--preset", "cifar10", "--data", "shapes", "--outdir",
                                  str(tmp_path), "--resume", str(out), "--kimg", str(kimg),
                                  "--model-json", json.dumps(TINY), "--metrics", "",
                                  "--no-progress", "--device", "cpu"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "Resumed from" in r.output
    last = ck.load_checkpoint(ck.latest_checkpoint(str(out)))
    assert last["step"] == 3 * 782 + 2 and last["images_seen"] == 3 * 782 * 64 + 128


def test_convert_errors(tmp_path):
    path, *_ = _released(tmp_path)
    raw = torch.load(path, weights_only=False)
    del raw["dis_state_dict"]
    with pytest.raises(ValueError, match="no 'dis_state_dict'"):
        convert_official(raw, "cifar10", str(tmp_path / "o"), model=TINY)
    r = CliRunner().invoke(main, ["convert", "--official", str(path), "--preset", "celeba64",
                                  "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "preset must be one of" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["convert", "--official", str(path), "--preset", "cifar10",
                                  "--out", str(tmp_path / "o"), "--images-seen", "100",
                                  "--model-json", json.dumps(TINY)])
    assert r.exit_code == 2 and "multiple of the D batch 64" in r.output
