"""The suite passes in a clone with nothing beside it: no test reads the project's shared data.

Tests take their data from the package's bundled sample or from tests/data (both opened by
tests/sample_data.py); the shared data folder beside the checkout serves the benchmarks only.
"""
from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent
# spelled in pieces, so that this file does not name them itself
FORBIDDEN = ("../" + "shared", "shared" + "/data", '"shared" / "data"', "'shared' / 'data'")


def test_no_test_file_refers_to_the_shared_data():
    offenders = []
    for path in sorted(TESTS.rglob("*")):
        if not path.is_file() or path == Path(__file__).resolve() or "__pycache__" in path.parts:
            continue
        try:
            text = path.read_text("utf-8")
        except UnicodeDecodeError:
            continue  # compressed data files
        offenders += [f"{path.relative_to(TESTS)}:{n}: {line.strip()}"
                      for n, line in enumerate(text.splitlines(), 1) if any(f in line for f in FORBIDDEN)]
    assert not offenders, "tests must not read the shared data folder (use sample_data):\n" + "\n".join(offenders)
