"""Every code block of the README and of docs/ runs as written, so no example can drift
from the code.

One test per page. A page's blocks run in document order in one temporary working
directory (with ``configs/`` linked in, as from the repository root): its ``python`` blocks in one namespace (a reader copies them top to bottom),
its ``bash`` blocks through bash with ``regrow`` and ``torchrun`` meaning this checkout's
CLI. ``yaml`` blocks must parse. A block that cannot run here (a real dataset, a GPU,
hours of training) says so visibly on the page with a title, ```` ```bash title="not run
in CI: why" ````; those are counted and kept rare. Examples use tiny settings; the
pages say how to scale them up.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)([^\n]*)\n(.*?)^```[ \t]*$", re.S | re.M)
NOT_RUN = re.compile(r'title="not run in CI: ([^"]+)"')
RUNNABLE = {"python", "bash", "yaml"}
# Languages shown but never run: command output and file contents.
SHOWN = {"text", "json", "console-output", ""}
MAX_NOT_RUN = 12


def blocks(page: Path):
    """(language, info, code, line) of every fenced block of ``page``."""
    text = page.read_text()
    for m in FENCE.finditer(text):
        yield m.group(1), m.group(2), m.group(3), text.count("\n", 0, m.start()) + 1


def rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def command_dir(tmp: Path) -> Path:
    """``regrow`` and ``torchrun`` as executables running this checkout (also for the
    shells a block starts itself, e.g. ``xargs sh -c`` over a ``--plan`` file)."""
    bin_dir = tmp / ".bin"
    bin_dir.mkdir(exist_ok=True)
    for name, module in (("regrow", "regrow"), ("torchrun", "torch.distributed.run")):
        exe = bin_dir / name
        exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
        exe.chmod(0o755)
    return bin_dir


def run_shell(code: str, where: str, cwd: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               PATH=os.pathsep.join([str(command_dir(cwd)), os.environ.get("PATH", "")]),
               OMP_NUM_THREADS="1", NO_MKDOCS_2_WARNING="1")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{where} failed ({done.returncode}):\n{code}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def check_readme(namespace: dict) -> None:
    """The README's own loop really trains and IEE really changes the structure."""
    sparsity = namespace["sparsity"]
    assert sparsity.state.step == len(namespace["loader"]) * namespace["epochs"]
    assert sparsity.pop_metrics(), "the README's IEE run made no structure change"


def check_frameworks(namespace: dict) -> None:
    """Both integrations built their method and trained to the density asked for."""
    assert namespace["callback"].sparsity.density() == pytest.approx(0.1, abs=0.01)
    hf = namespace["hf_callback"].sparsity
    assert hf.state.step == 40 and hf.density() == pytest.approx(0.1, abs=0.01)


AFTER = {"README.md": check_readme, "docs/guide/frameworks.md": check_frameworks}


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")   # commands name configs/ as from the root
    namespace: dict = {"__name__": "docs_example"}
    ran = 0
    for lang, info, code, line in blocks(page):
        where = f"{rel(page)}:{line} ({lang} block)"
        if NOT_RUN.search(info):
            continue
        assert lang in RUNNABLE | SHOWN, f"{where}: unknown block language {lang!r}"
        if lang == "python":
            exec(compile(code, where, "exec"), namespace)
        elif lang == "bash":
            run_shell(code, where, tmp_path)
        elif lang == "yaml":
            yaml.safe_load(code)
        ran += lang in RUNNABLE
    if rel(page) in AFTER:
        AFTER[rel(page)](namespace)


def test_not_run_blocks_are_rare_and_say_why():
    skipped = [(rel(p), line, NOT_RUN.search(info).group(1))
               for p in PAGES for _, info, _, line in blocks(p) if NOT_RUN.search(info)]
    assert len(skipped) <= MAX_NOT_RUN, skipped
    assert all(len(why.strip()) >= 8 for *_, why in skipped), skipped


def test_no_code_hides_from_the_collector():
    """An indented fence (inside a list or admonition) or an unknown language would
    escape the runner; pages keep code blocks at the left margin."""
    for page in PAGES:
        for n, line in enumerate(page.read_text().splitlines(), 1):
            assert not re.match(r"^\s+```", line), f"{rel(page)}:{n}: indented code fence"
        for lang, info, _, line in blocks(page):
            assert lang in RUNNABLE | SHOWN, f"{rel(page)}:{line}: block language {lang!r}"


def test_collector_finds_blocks():
    """The collector sees the README's examples (a broken regex would pass everything)."""
    langs = [lang for lang, *_ in blocks(ROOT / "README.md")]
    assert langs.count("python") >= 2
