"""The README's quick start runs as written (issue 24: every command in it runs from a fresh clone)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs the quick start end to end: synth, tune on local mode and on Edge

ROOT = Path(__file__).resolve().parents[1]


def _quick_start_blocks() -> list[tuple[str, str]]:
    """(language, code) of every fenced block of the README's "Quick start" section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(bash|python)\n(.*?)```", section, flags=re.S)


def test_the_quick_start_runs_as_written(tmp_path):
    blocks = _quick_start_blocks()
    assert [language for language, _ in blocks] == ["bash", "python", "bash"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "AMIPS_STORE": "", "PYTHONPATH": str(ROOT)}
    env.pop("AMIPS_STORE")
    setup, python, cli = (code for _, code in blocks)
    assert "cd runs/demo" in setup
    made = subprocess.run(["bash", "-euo", "pipefail", "-c", setup], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    demo = tmp_path / "runs" / "demo"
    ran = subprocess.run([sys.executable, "-c", python], cwd=demo, env=env, capture_output=True, text=True,
                         timeout=600)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "the stored policy is plain search" in ran.stdout and "SearchReport(" in ran.stdout
    commands = subprocess.run(["bash", "-euo", "pipefail", "-c", cli], cwd=demo, env=env, capture_output=True,
                              text=True, timeout=900)
    assert commands.returncode == 0, commands.stderr[-2000:]
    assert "recall@1" in commands.stdout and "policy v1" in commands.stdout
