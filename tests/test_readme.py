"""Every ```python block of README.md runs as written, each in a fresh interpreter."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TIMEOUT_S = 300


def python_blocks(text):
  """The bodies of the ```python fenced blocks of a Markdown text, in order."""
  return [m.group(1) for m in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text,
                                          re.MULTILINE | re.DOTALL)]


BLOCKS = python_blocks(README.read_text())


def block_id(i, code):
  first = next((l.strip() for l in code.splitlines() if l.strip()), "")
  return f"{i}:{first[:40]}"


def test_readme_has_python_blocks():
  assert BLOCKS, f"no ```python block in {README}"


def test_python_blocks_parser():
  text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\nz = 3\n```\n"
  assert python_blocks(text) == ["x = 1\n", "y = 2\nz = 3\n"]


@pytest.mark.parametrize("code", BLOCKS, ids=[block_id(i, c) for i, c in enumerate(BLOCKS)])
def test_readme_block_runs(code, tmp_path):
  script = tmp_path / "readme_block.py"
  script.write_text(code)
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
  proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=TIMEOUT_S)
  rc = proc.returncode
  assert rc == 0, f"README block exited {rc}:\n{code}\n{proc.stderr}"
