"""README.md's Python examples run as written (in order, sharing one namespace)."""

import pathlib
import re
import textwrap

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_blocks_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2, "README.md lost its examples"
    namespace: dict = {}
    for block in blocks:
        exec(compile(textwrap.dedent(block), str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "align_loss/digits" in printed
    assert namespace["feats"]["pooled"].shape == (1, 64)
    assert int(namespace["state"].step) == 2
