"""Every reference a reader can follow is inside the repository: `docs/ops.md §N` and
`docs/transgan.md §N` citations point at sections that exist, cited repository paths exist, and
nothing cites the old out-of-tree `spec/` pages."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".md", ".h", ".cpp", ".cu", ".cuh", ".txt", ".toml", ".sh", ".in"}


def _files():
    if not (ROOT / "docs").is_dir():
        pytest.skip(f"no docs/ beside {ROOT / 'tests'} (tests run outside a checkout)")
    skip = {".git", ".venv", "build", "dist", "__pycache__", "runs"}
    for p in ROOT.rglob("*"):
        parts = p.relative_to(ROOT).parts
        if (p.is_file() and p.suffix in TEXT_SUFFIXES and not skip & set(parts)
                and not any(part.endswith(".egg-info") for part in parts)):
            yield p


def _sections(doc: Path) -> set:
    return set(re.findall(r"^#+ (\d+(?:\.\d+)*)\.? ", doc.read_text(), flags=re.M))


def test_section_citations_resolve():
    sections = {name: _sections(ROOT / "docs" / name) for name in ("ops.md", "transgan.md")}
    assert {"1", "2", "3", "4", "5", "6", "7", "2.1", "2.4"} <= sections["ops.md"]
    assert {"1", "2", "3", "4", "5"} <= sections["transgan.md"]
    bad, seen = [], 0
    for f in _files():
        for doc, refs in re.findall(r"docs/(ops|transgan)\.md((?:[ ,]*§\s*\d+(?:\.\d+)*(?:[-–]§?\d+)?)+)",
                                    f.read_text(errors="replace")):
            for ref in re.findall(r"§\s*(\d+(?:\.\d+)*)", refs):
                seen += 1
                if ref not in sections[f"{doc}.md"]:
                    bad.append(f"{f.relative_to(ROOT)}: docs/{doc}.md §{ref}")
    assert seen > 20, seen   # the scan found the citations
    assert not bad, bad


def test_no_out_of_tree_references():
    bad = [f"{f.relative_to(ROOT)}:{i}" for f in _files() if f.name != "test_docs.py"
           for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1)
           if re.search(r"(?<![\w/])spec/(ops|transgan)\.md|\.\./shared", line)]
    assert not bad, bad


def test_cited_repository_paths_exist():
    pat = re.compile(r"(?<![\w/.])((?:tests|benchmarks|scripts|csrc|docs)/[\w/]+\.(?:py|md|cuh|cu|cpp|h|sh))\b")
    bad = sorted({f"{f.relative_to(ROOT)}: {m}" for f in _files()
                  for m in pat.findall(f.read_text(errors="replace"))
                  if not (ROOT / m).exists() and f.name not in ("test_packaging.py",)})
    assert not bad, bad
