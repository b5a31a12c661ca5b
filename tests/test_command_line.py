"""The command line: help, overrides splitting, user errors as one line."""
from __future__ import annotations

import subprocess
import sys

from mlscale.cli import main, split_overrides


def test_split_overrides_keeps_positionals():
    args, ov = split_overrides(["curate", "a.jsonl", "--near.threshold", "0.7", "--out", "o", "--x.y=1"])
    assert args == ["curate", "a.jsonl", "--out", "o"]
    assert ov == ["--near.threshold", "0.7", "--x.y=1"]


def test_help_lists_stages(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "mlscale run" in out and "--section.key=value" in out


def test_python_dash_m_works():
    r = subprocess.run([sys.executable, "-m", "mlscale", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("mlscale ")
