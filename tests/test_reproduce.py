"""docs/reproduce.md: its commands parse and resolve to the released recipe, its smoke block runs,
and the FID/IS path runs end to end through torch-fidelity with locally built Inception weights."""
import os
import re
import shlex

import pytest
import torch
from click.testing import CliRunner

from transgan_fast.cli import main
from transgan_fast.train.config import resolve_config

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "reproduce.md")


def _commands(section=None):
    """`transgan-fast ...` argument lists from the bash blocks of the doc (torchrun prefix dropped)."""
    text = open(DOC).read()
    if section:
        text = text[text.index(section):]
        text = text[:text.index("\n## ", 1)]
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            args = shlex.split(line)
            if args[0] == "torchrun":
                args = ["transgan-fast"] + args[args.index("transgan_fast.cli") + 1:]
            assert args[0] == "transgan-fast", line
            out.append(args[1:])
    return out


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_doc_commands_parse_and_resolve_to_the_table():
    """Every documented command parses; every train command resolves to the preset's row."""
    text = open(DOC).read()
    kimg = {m[0]: float(m[1].replace(",", "")) for m in
            re.findall(r"\| `(\w+)` \|.*\| ([\d,]+)(?: \(ours\))? \|\n", text)}
    assert set(kimg) == {"cifar10", "stl10", "celeba64", "celeba128", "church256", "celebahq256"}
    trained = set()
    for args in _commands():
        cmd = main.commands[args[0]]
        ctx = cmd.make_context(args[0], list(args[1:]))  # raises on unknown options / bad values
        if args[0] == "train":
            p = ctx.params
            opts = {k: v for k, v in p.items() if k not in (
                "outdir", "resume", "dry_run", "model_json", "mirror", "max_minutes", "progress")}
            cfg = resolve_config(**opts)
            if p["data"] != "shapes":
                assert cfg.kimg == kimg[cfg.preset], cfg.preset
                trained.add(cfg.preset)
    assert trained == set(kimg)


def test_doc_smoke_block_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in _commands("## Smoke test"):
        r = CliRunner().invoke(main, args, catch_exceptions=False)
        assert r.exit_code == 0, r.output
    assert (tmp_path / "runs-smoke" / "samples.png").stat().st_size > 0


def _fidelity():
    try:
        import torch_fidelity.feature_extractor_inceptionv3 as fe
    except Exception as exc:  # ImportError, or torchvision built for another torch
        pytest.skip(f"torch-fidelity (the 'metrics' extra) is not importable here: "
                    f"{type(exc).__name__}: {exc}")
    return fe


@pytest.mark.slow
def test_fid_is_end_to_end_with_local_weights(tmp_path, monkeypatch):
    """The whole FID/IS path with torch-fidelity's real Inception module, loading a weights file
    of the right shapes built here (random values; nothing is downloaded)."""
    fe = _fidelity()
    from transgan_fast.train.metrics import fid_is
    cls = fe.FeatureExtractorInceptionV3

    def no_download(*a, **k):
        raise AssertionError("test tried to download the Inception weights")

    with monkeypatch.context() as m:  # build the module once without any weights to learn shapes
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(cls, "load_state_dict", lambda self, sd, *a, **k: None)
        shapes = cls("inception-v3-compat", ["2048", "logits_unbiased"]).state_dict()
    g = torch.Generator().manual_seed(0)
    weights = {}
    for k, v in shapes.items():
        if not v.is_floating_point():
            weights[k] = torch.zeros_like(v)
        elif k.endswith("running_var") or v.dim() == 1 and k.endswith("weight"):
            weights[k] = torch.ones_like(v)  # batch norms: unit scale keeps activations alive
        elif k.endswith(("running_mean", "bias")):
            weights[k] = torch.zeros_like(v)
        else:
            fan_in = v[0].numel() if v.dim() > 1 else v.numel()
            weights[k] = torch.randn(v.shape, generator=g) * (2.0 / fan_in) ** 0.5
    path = tmp_path / "inception-local.pth"
    torch.save(weights, path)
    monkeypatch.setattr(fe, "load_state_dict_from_url", no_download)

    a = torch.rand(10, 3, 32, 32, generator=g) * 2 - 1
    b = torch.rand(10, 3, 32, 32, generator=g) * 0.5 - 0.25
    same = fid_is(a, a.clone(), str(path))                       # IS: 10 splits of 1 image
    diff = fid_is(a, b, str(path), isc=False)
    assert set(same) == {"fid", "is"} and set(diff) == {"fid"}
    assert abs(same["fid"]) < 1e-3 and diff["fid"] > 1e3 * max(abs(same["fid"]), 1e-9)
    assert same["is"] == pytest.approx(1.0)  # one image per split: IS is exactly 1
