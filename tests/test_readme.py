"""The README's Python examples run as written (the plugin example runs in test_plugin_project)."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _blocks():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_function_and_layer_examples_run(capsys):
    blocks = [b for b in _blocks() if "def test_" not in b]
    assert len(blocks) >= 2
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "True" in out
    assert namespace["report"].ok
