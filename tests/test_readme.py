"""The README's usage example runs as written and prints what its comments say."""

import contextlib
import io
import re
from pathlib import Path

import pytest


README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("section", ["Usage", "PAVE patches", "REEF and DynFocus", "Compact"])
def test_readme_examples_run(section, tmp_path, monkeypatch):
    text = README.read_text()
    (code,) = re.findall(rf"## {section}\n(?:(?!\n## ).)*?```python\n(.*?)```", text, flags=re.S)
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    printed = out.getvalue().splitlines()
    promised = [
        line.split("# ", 1)[1].split(":")[0].strip() for line in code.splitlines() if line.startswith("print(")
    ]
    assert printed == promised


def test_readme_names_exactly_the_two_setup_commands():
    (block,) = re.findall(r"## Set-up\n.*?```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == ["make demo", "make test"]
