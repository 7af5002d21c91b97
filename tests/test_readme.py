"""The README's Python examples run as written, in order, in one namespace (a user
copies them top to bottom)."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(text: str):
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)   # the examples write checkpoint.pt
    namespace: dict = {"__name__": "readme"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md[python block {i}]", "exec"), namespace)
    sparsity = namespace["sparsity"]
    assert sparsity.state.step == len(namespace["loader"]) * (namespace["epochs"] + 1)
    assert sparsity.pop_metrics(), "the README's IEE run made no structure change"
    hf = namespace["trainer"]   # the last example: RigL under the HF Trainer
    sp = next(c for c in hf.callback_handler.callbacks if hasattr(c, "sparsity")).sparsity
    assert sp.state.step == 40 and abs(sp.density() - 0.1) < 0.01
