"""The documentation site builds with ``mkdocs build --strict`` (broken links, missing
references and unknown names fail), and every public name is documented: a docstring
of its own and a place in the API reference."""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import regrow

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DIRECTIVE = re.compile(r"^::: ([\w.]+)\s*$", re.M)
# A version string has no docstring to give; it is shown on the reference index page.
NOT_DOCUMENTABLE = {"__version__"}


def test_mkdocs_build_strict(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                           "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "core" / "index.html").is_file()


def own_docstring(obj) -> str:
    """The docstring written for ``obj`` itself: not inherited, not dataclass's
    generated signature; for an instance (a registry), its class's."""
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__") or ""
        if dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("):
            return ""
        return doc.strip()
    if inspect.isroutine(obj):
        return (obj.__doc__ or "").strip()
    return (type(obj).__dict__.get("__doc__") or "").strip()


def resolve(path: str):
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


def referenced():
    """Every object a ``::: path`` directive of the docs renders."""
    objs = []
    for page in DOCS.rglob("*.md"):
        for path in DIRECTIVE.findall(page.read_text()):
            objs.append((resolve(path), f"{page.relative_to(ROOT)}: {path}"))
    return objs


def test_every_public_name_has_a_docstring():
    missing = [n for n in regrow.__all__ if n not in NOT_DOCUMENTABLE and not own_docstring(getattr(regrow, n))]
    assert not missing, f"public names without a docstring of their own: {missing}"


def test_every_public_name_has_a_reference_page():
    shown = [obj for obj, _ in referenced()]
    missing = [n for n in regrow.__all__ if n not in NOT_DOCUMENTABLE
               and not any(getattr(regrow, n) is o for o in shown)]
    assert not missing, f"public names in no '::: ...' directive under docs/: {missing}"


def test_every_registered_method_has_a_page():
    missing = [n for n in regrow.METHODS.names() if not (DOCS / "methods" / f"{n}.md").is_file()]
    assert not missing, f"methods without docs/methods/<name>.md: {missing}"


def test_version_is_on_the_reference_index():
    assert "regrow.__version__" in (DOCS / "reference" / "index.md").read_text()


def test_every_config_option_is_documented():
    """Each method page names every field of its Config (the shared ones: the methods
    index), so an option added in code without a line in the docs fails here."""
    from regrow.methods.base import SparsityConfig

    shared = {f.name for f in dataclasses.fields(SparsityConfig)}
    index = (DOCS / "methods" / "index.md").read_text()
    assert not [f for f in shared if f"`{f}`" not in index]
    missing = {}
    for name in regrow.METHODS.names():
        page = (DOCS / "methods" / f"{name}.md").read_text()
        own = [f.name for f in dataclasses.fields(regrow.METHODS.get(name).Config) if f.name not in shared]
        gaps = [f for f in own if f"`{f}`" not in page]
        if gaps:
            missing[name] = gaps
    assert not missing, f"Config fields not named on their method page: {missing}"
