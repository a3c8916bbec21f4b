"""What each install needs (pyproject.toml, README "Install"): the kernels need torch and numpy; the
command line needs the `cli` extra (click) and training the `train` extra. Missing extras give one
line naming the extra to install, never a traceback.

Each check runs in a fresh interpreter where the optional modules are made unimportable
(`sys.modules[name] = None`, which is how Python spells "not installed" to an import).
"""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("click", "tqdm", "PIL", "safetensors", "matplotlib", "tensorboard", "scipy")


def _run(code: str, hide=OPTIONAL):
    prelude = f"import sys\nfor _m in {tuple(hide)!r}:\n    sys.modules[_m] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True,
                          cwd=ROOT.parent)


def test_kernels_import_and_run_without_the_cli_and_train_dependencies():
    p = _run("import transgan_fast as tf, transgan_fast.nn, transgan_fast.models, torch\n"
             "q = torch.randn(1, 2, 16, 8)\n"
             "o = tf.local_attention(q, q, q, (4, 4), kernel_size=3, backend='ref')\n"
             "print(tuple(o.shape), tf.backends()['ref']['usable'])\n")
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().endswith("(1, 2, 16, 8) True"), p.stdout


def test_cli_without_click_names_the_extra():
    p = _run("import runpy; runpy.run_module('transgan_fast.cli', run_name='__main__')")
    assert p.returncode == 1, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "pip install 'transgan_fast[cli]'" in lines[0], lines[0]


def test_train_commands_without_the_train_extra_name_it():
    pytest.importorskip("click", reason="the CLI needs click (cli/train extra)")
    hide = tuple(m for m in OPTIONAL if m != "click")
    p = _run("from click.testing import CliRunner\n"
             "from transgan_fast.cli import main\n"
             "for cmd in (['demo', '--quick'], ['train', '--dry-run'], ['generate', '--checkpoint', 'x.pt']):\n"
             "    r = CliRunner().invoke(main, cmd)\n"
             "    print(cmd[0], r.exit_code, repr(r.exception), r.output.strip().splitlines())\n", hide=hide)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 3, p.stdout
    for line in lines:   # one line, exit 1 (ClickException), naming the extra
        assert " 1 SystemExit(1) [\"Error: this command needs the 'train' extra" in line, line
        assert "pip install 'transgan_fast[train]'" in line, line


def test_core_requirements_are_torch_and_numpy_at_the_tested_version():
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli", reason="needs tomllib (Python 3.11+) or tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == ["torch>=2.13", "numpy"], project["dependencies"]
    extras = project["optional-dependencies"]
    assert "click>=8" in extras["cli"] and "click>=8" in extras["train"], extras
    for module in ("tqdm", "pillow"):
        assert module in extras["train"], (module, extras["train"])
