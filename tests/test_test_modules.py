"""The test tree itself: pytest's default import mode puts each test folder on sys.path and
imports modules by basename, so two test modules (or helpers) with one name, or an import
`from conftest`, pick up another folder's file in a full run while passing alone."""
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_test_and_helper_modules_have_names_of_their_own():
    names = Counter(p.name for p in TESTS.rglob("*.py") if p.name != "conftest.py")
    assert not [n for n, c in names.items() if c > 1], "rename: one basename per module under tests/"


def test_no_test_imports_from_conftest():
    offenders = [str(p.relative_to(TESTS)) for p in TESTS.rglob("*.py")
                 if p.name != Path(__file__).name and ("from conftest import" in p.read_text()
                                                      or "import conftest" in p.read_text())]
    assert not offenders, f"move shared helpers into a module of their own: {offenders}"
