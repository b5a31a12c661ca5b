"""Bad input to every command's file arguments: one clear line, never a traceback.

Each file or directory argument of every command gets, in turn: a file of random bytes,
an empty file, a directory where a file is expected (or a file where a directory is
expected), a missing path; for input directories also one whose files are random bytes and
a copy of a good one with one file garbled (a run's weights, a token directory's
tokenizer); for output directories a file in their place (with and without --force) and
a directory of garbled files. Each must end with a non-zero exit code and exactly one line
on stderr that names the bad path (`mlscale CMD: error: ...`), and must leave every file
that existed before as it was.

The rest of each command line is valid, built from tiny real inputs (a slice of the
bundled tiny Shakespeare, tokenized by characters, and a 2-step model trained on it) made
once per session. Commands run in this process through `mlscale.cli.main`. A new command
or argument is one `Arg` line in ARGS.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import json
import random
import re
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from experiment_helpers import write_tiny_experiment
from mlscale.cli import main
from mlscale.data import DATA_DIR

# a tiny model: trains in a second, so that a case that wrongly gets that far stays cheap
TINY_MODEL = ["--model.n_layer=1", "--model.n_head=2", "--model.d_model=16", "--model.seq_len=256",
              "--train.batch_size=2", "--train.max_steps=2", "--train.warmup_steps=1",
              "--train.eval_every=2", "--train.eval_batches=1", "--train.checkpoint_every=2"]
TINY_FINETUNE = ["--train.max_steps=1", "--train.warmup_steps=0"]
# a token directory and a run: the valid directory a garbled one copies, and the file
# that a "damaged-file" case garbles in a copy of it
TOK_DIR = {"like": "tok", "damage": "tokenizer.json"}
RUN_DIR = {"like": "run", "damage": "checkpoints/*/model.safetensors"}


class Valid:
    """Good inputs for the rest of each command line, all under `root`; the token directory
    and the run are made when a case first needs them."""

    def __init__(self, root: Path):
        self.root = root
        text = gzip.open(DATA_DIR / "tinyshakespeare.txt.gz", "rt", encoding="utf-8").read()[:20_000]
        self.text = root / "shakespeare.txt"  # plain UTF-8 text
        self.text.write_text(text, "utf-8")
        self.docs_dir = root / "docs"  # a folder holding docs.jsonl: documents {"id", "text"}
        self.docs = self.docs_dir / "docs.jsonl"
        self.docs_dir.mkdir()
        paragraphs = [p for p in text.split("\n\n") if len(p) > 200][:20]
        self.docs.write_text("".join(json.dumps({"id": f"d{i}", "text": p}) + "\n"
                                     for i, p in enumerate(paragraphs)), "utf-8")
        self.sft = root / "sft.jsonl"  # Alpaca-style instruction records
        lines = [line[:16] for line in text.splitlines() if len(line) > 16]  # short
        self.sft.write_text("".join(json.dumps({"instruction": "Next:", "input": a, "output": b}) + "\n"
                                    for a, b in zip(lines[:40:2], lines[1:40:2])), "utf-8")
        self.runs_csv = root / "runs.csv"  # a table of runs (N, D, loss) for `scaling fit`
        rows = ["N,D,loss"] + [f"{n:g},{d:g},{1.8 + 480 / n ** 0.35 + 2000 / d ** 0.37:.6f}"
                               for n in (1e6, 3e6, 1e7, 3e7, 1e8) for d in (2e7, 1e8, 5e8, 2e9)]
        self.runs_csv.write_text("\n".join(rows) + "\n", "utf-8")
        self.experiment = write_tiny_experiment(root / "experiment")  # as the `mlscale run` tests

    @functools.cached_property
    def tok(self) -> Path:
        """`mlscale tokenize --tokenizer char` of the text."""
        tok = self.root / "tok"
        assert main(["tokenize", str(self.text), "--out", str(tok), "--tokenizer", "char", "--quiet"]) == 0
        return tok

    @functools.cached_property
    def images(self) -> Path:
        """An ImageFolder: two classes of two tiny PNG pictures each."""
        from PIL import Image

        folder = self.root / "images"
        for c, name in enumerate(("cat", "dog")):
            (folder / name).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 6), (60 * c + 20 * i, 90, 200)).save(folder / name / f"{i}.png")
        return folder

    @functools.cached_property
    def run(self) -> Path:
        """`mlscale pretrain` of the token directory: a tiny 2-step run."""
        run = self.root / "run"
        assert main(["pretrain", "--data", str(self.tok), "--out", str(run), *TINY_MODEL]) == 0
        return run


@pytest.fixture(scope="session")
def valid(tmp_path_factory) -> Valid:
    return Valid(tmp_path_factory.mktemp("valid"))


# ------------------------------------------------------------------------ the arguments
@dataclass(frozen=True)
class Arg:
    """One file argument of one command.

    `argv(bad, valid, out)` is the command line with `bad` in this argument's place and
    valid values everywhere else (`out`: a fresh output path). `expects` is what the
    argument takes: "file", "dir", "file-or-dir", or "out" (an output directory).
    `suffix` names the bad file as the argument's files are named (so the reader for that
    format is the one that meets it); `like` is a valid directory (a `Valid` field) or a
    tuple of relative file names whose names a garbled directory copies; `damage` (a glob
    in the `like` directory) adds the kind "damaged-file": a copy of that directory with
    only the matching files garbled. `kinds`, where given, replaces the kinds of bad input
    that `expects` implies.
    """

    command: str
    name: str
    expects: str
    argv: Callable[[str, Valid, str], list[str]]
    suffix: str = ""
    like: str | tuple[str, ...] | None = None
    damage: str | None = None
    kinds: tuple[str, ...] | None = None


ARGS: list[Arg] = [
    Arg("curate", "INPUT.jsonl", "file-or-dir",
        lambda bad, v, out: ["curate", bad, "--out", out, "--workers", "1"], ".jsonl", like="docs_dir"),
    Arg("curate", "INPUT.warc.gz", "file",
        lambda bad, v, out: ["curate", bad, "--out", out, "--workers", "1"], ".warc.gz"),
    Arg("curate", "INPUT.parquet", "file",
        lambda bad, v, out: ["curate", bad, "--out", out, "--workers", "1"], ".parquet"),
    Arg("curate", "--config", "file",
        lambda bad, v, out: ["curate", str(v.docs), "--out", out, "--workers", "1", "--config", bad],
        ".toml"),
    Arg("curate", "--out", "out",
        lambda bad, v, out: ["curate", str(v.docs), "--out", bad, "--workers", "1"]),

    Arg("tokenize", "INPUT.txt", "file-or-dir",
        lambda bad, v, out: ["tokenize", bad, "--out", out, "--tokenizer", "char", "--quiet"], ".txt",
        like=("manifest.json", "stage.json", "kept/part-00000.parquet")),  # a curated folder
    Arg("tokenize", "INPUT.jsonl", "file",
        lambda bad, v, out: ["tokenize", bad, "--out", out, "--tokenizer", "char", "--quiet"], ".jsonl"),
    Arg("tokenize", "INPUT.parquet", "file",
        lambda bad, v, out: ["tokenize", bad, "--out", out, "--tokenizer", "char", "--quiet"], ".parquet"),
    Arg("tokenize", "--config", "file",
        lambda bad, v, out: ["tokenize", str(v.text), "--out", out, "--quiet", "--config", bad], ".toml"),
    Arg("tokenize", "--out", "out",
        lambda bad, v, out: ["tokenize", str(v.text), "--out", bad, "--tokenizer", "char", "--quiet"]),

    Arg("images", "INPUT.png", "file-or-dir",
        lambda bad, v, out: ["images", bad, "--out", out, "--workers", "1", "--quiet"], ".png",
        like=("cat/0.png", "dog/1.jpg")),
    Arg("images", "INPUT-images-idx3-ubyte.gz", "file",
        lambda bad, v, out: ["images", bad, "--out", out, "--workers", "1", "--quiet"],
        "-images-idx3-ubyte.gz"),
    Arg("images", "INPUT.tar", "file",
        lambda bad, v, out: ["images", bad, "--out", out, "--workers", "1", "--quiet"], ".tar"),
    Arg("images", "INPUT.parquet", "file",
        lambda bad, v, out: ["images", bad, "--out", out, "--workers", "1", "--quiet"], ".parquet"),
    Arg("images", "INPUT.csv", "file",
        lambda bad, v, out: ["images", bad, "--out", out, "--workers", "1", "--quiet"], ".csv"),
    Arg("images", "--config", "file",
        lambda bad, v, out: ["images", str(v.images), "--out", out, "--workers", "1", "--quiet",
                             "--config", bad], ".toml"),
    Arg("images", "--out", "out",
        lambda bad, v, out: ["images", str(v.images), "--out", bad, "--workers", "1", "--quiet"]),

    Arg("pretrain", "--data", "dir",
        lambda bad, v, out: ["pretrain", "--data", bad, "--out", out, *TINY_MODEL], **TOK_DIR),
    Arg("pretrain", "--config", "file",
        lambda bad, v, out: ["pretrain", "--data", str(v.tok), "--out", out, "--config", bad, *TINY_MODEL],
        ".toml"),
    Arg("pretrain", "--preset", "file",  # a preset may be given as the path of a TOML file
        lambda bad, v, out: ["pretrain", "--data", str(v.tok), "--out", out, "--preset", bad, *TINY_MODEL],
        ".toml"),
    Arg("pretrain", "--out", "out",
        lambda bad, v, out: ["pretrain", "--data", str(v.tok), "--out", bad, *TINY_MODEL]),
    # with --resume, --out is an input: the run to continue (a missing or empty one starts
    # from step 0, as documented)
    Arg("pretrain", "--out --resume", "dir",
        lambda bad, v, out: ["pretrain", "--data", str(v.tok), "--out", bad, "--resume", *TINY_MODEL,
                             "--train.max_steps=4"],
        **RUN_DIR, kinds=("random-bytes", "empty-file", "garbled-directory")),

    Arg("finetune", "BASE", "dir",
        lambda bad, v, out: ["finetune", bad, "--data", str(v.sft), "--out", out, *TINY_FINETUNE],
        **RUN_DIR),
    Arg("finetune", "--data", "file",
        lambda bad, v, out: ["finetune", str(v.run), "--data", bad, "--out", out, *TINY_FINETUNE],
        ".jsonl"),
    Arg("finetune", "--config", "file",
        lambda bad, v, out: ["finetune", str(v.run), "--data", str(v.sft), "--out", out, "--config", bad,
                             *TINY_FINETUNE], ".toml"),
    Arg("finetune", "--out", "out",
        lambda bad, v, out: ["finetune", str(v.run), "--data", str(v.sft), "--out", bad, *TINY_FINETUNE]),

    Arg("evaluate", "RUN", "dir", lambda bad, v, out: ["evaluate", bad, "--data", str(v.tok)], **RUN_DIR),
    Arg("evaluate", "--data", "file-or-dir",
        lambda bad, v, out: ["evaluate", str(v.run), "--data", bad], ".txt", **TOK_DIR),

    Arg("generate", "RUN", "dir",
        lambda bad, v, out: ["generate", bad, "--prompt", "ROMEO:", "--max-new-tokens", "4"], **RUN_DIR),

    Arg("export", "RUN", "dir", lambda bad, v, out: ["export", bad, "--out", out], **RUN_DIR),
    Arg("export", "--out", "out", lambda bad, v, out: ["export", str(v.run), "--out", bad]),

    Arg("scaling fit", "TABLE", "file", lambda bad, v, out: ["scaling", "fit", bad, "--starts", "1"], ".csv"),
    Arg("scaling fit", "--out", "out",  # a plain folder (fit.json and plots), not a stage output
        lambda bad, v, out: ["scaling", "fit", str(v.runs_csv), "--starts", "1", "--out", bad],
        kinds=("existing-file",)),  # (and it has no --force)
    Arg("scaling plan", "--fit", "file",
        lambda bad, v, out: ["scaling", "plan", "--compute", "1e21", "--fit", bad], ".json"),
    Arg("scaling sweep", "--data", "dir",
        lambda bad, v, out: ["scaling", "sweep", "--data", bad, "--out", out, "--budgets", "3e10",
                             "--sizes", "3"], **TOK_DIR),
    Arg("scaling sweep", "--config", "file",
        lambda bad, v, out: ["scaling", "sweep", "--data", str(v.tok), "--out", out, "--budgets", "3e10",
                             "--sizes", "3", "--config", bad], ".toml"),
    Arg("scaling sweep", "--out", "out",
        lambda bad, v, out: ["scaling", "sweep", "--data", str(v.tok), "--out", bad, "--budgets", "3e10",
                             "--sizes", "3"]),

    Arg("run", "EXPERIMENT", "file", lambda bad, v, out: ["run", bad, "--out", out], ".toml"),
    Arg("run", "--out", "out", lambda bad, v, out: ["run", str(v.experiment), "--out", bad],
        like=("run-state.json", "notes.txt"),  # a folder of stage folders, and the run's state
        kinds=("existing-file", "garbled-directory")),  # (it has no --force)

    # `mlscale train --task T --data D --out R`; a new task's file arguments are one line each
    Arg("train", "--data (lm)", "dir",
        lambda bad, v, out: ["train", "--task", "lm", "--data", bad, "--out", out, *TINY_MODEL], **TOK_DIR),
    Arg("train", "--config", "file",
        lambda bad, v, out: ["train", "--task", "lm", "--data", str(v.tok), "--out", out, "--config", bad,
                             *TINY_MODEL], ".toml"),
    Arg("train", "--preset", "file",
        lambda bad, v, out: ["train", "--task", "lm", "--data", str(v.tok), "--out", out, "--preset", bad,
                             *TINY_MODEL], ".toml"),
    Arg("train", "--out", "out",
        lambda bad, v, out: ["train", "--task", "lm", "--data", str(v.tok), "--out", bad, *TINY_MODEL]),
    Arg("train", "--base (sft)", "dir",
        lambda bad, v, out: ["train", "--task", "sft", "--base", bad, "--data", str(v.sft), "--out", out,
                             *TINY_FINETUNE], **RUN_DIR),
    Arg("train", "--data (sft)", "file",
        lambda bad, v, out: ["train", "--task", "sft", "--base", str(v.run), "--data", bad, "--out", out,
                             *TINY_FINETUNE], ".jsonl"),
]

# the kinds of bad input each kind of argument gets
KINDS = {
    "file": ("random-bytes", "empty-file", "directory", "missing"),
    "dir": ("random-bytes", "empty-file", "empty-directory", "missing", "garbled-directory"),
    "file-or-dir": ("random-bytes", "empty-file", "empty-directory", "missing", "garbled-directory"),
    # an output directory: a file in its place (also with --force, which deletes an earlier
    # output, never a file), or a directory of garbled files (a corrupt earlier output);
    # either way nothing there may be lost
    "out": ("existing-file", "existing-file+force", "garbled-directory"),
}
OUT_GARBLED = ("stage.json", "manifest.json", "notes.txt")


def _random_bytes(seed: str, n: int = 4096) -> bytes:
    data = random.Random(seed).randbytes(n)
    # not by chance valid UTF-8, gzip, zstd, Parquet or JSON: a high byte first
    return b"\xff" + data[1:]


def make_bad(arg: Arg, kind: str, valid: Valid, where: Path) -> Path:
    """Create the bad input `kind` for `arg` under `where`; returns its path."""
    bad = where / f"bad{arg.suffix}"
    if kind == "random-bytes":
        bad.write_bytes(_random_bytes(arg.name + kind))
    elif kind == "empty-file":
        bad.write_bytes(b"")
    elif kind.startswith("existing-file"):
        bad.write_text("a file someone wrote\n", "utf-8")
    elif kind in ("directory", "empty-directory"):
        bad.mkdir()
    elif kind == "missing":
        bad = where / "nowhere" / f"bad{arg.suffix}"
    elif kind == "damaged-file":
        bad = where / "bad-dir"
        shutil.copytree(getattr(valid, arg.like), bad)  # type: ignore[arg-type]
        damaged = sorted(bad.glob(arg.damage))  # type: ignore[arg-type]
        assert damaged, f"{arg.command} {arg.name}: no {arg.damage} to damage"
        for f in damaged:
            f.write_bytes(_random_bytes(str(f.relative_to(bad)), f.stat().st_size))
    elif kind == "garbled-directory":
        if arg.expects == "out":
            names: tuple[str, ...] = arg.like or OUT_GARBLED  # type: ignore[assignment]
        elif isinstance(arg.like, str):
            src = getattr(valid, arg.like)
            names = tuple(str(p.relative_to(src)) for p in sorted(src.rglob("*")) if p.is_file())
        else:
            names = arg.like or ()
        assert names, f"{arg.command} {arg.name}: nothing to garble"
        bad = where / "bad-dir"
        for i, name in enumerate(names):
            (bad / name).parent.mkdir(parents=True, exist_ok=True)
            (bad / name).write_bytes(_random_bytes(f"{arg.name}-{i}", 256 + 64 * i))
    else:  # pragma: no cover
        raise ValueError(kind)
    return bad


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under `roots` (or the file itself) with a digest of its bytes."""
    files = [f for root in roots for f in ([root] if root.is_file() else sorted(root.rglob("*")))]
    return {str(f): hashlib.sha1(f.read_bytes()).hexdigest() for f in files if f.is_file()}


def kinds(arg: Arg) -> tuple[str, ...]:
    return (*(arg.kinds or KINDS[arg.expects]), *(("damaged-file",) if arg.damage else ()))


# known failures, each with where the fix goes; strict, so a fix makes its entry fail until
# it is removed here
def _case(arg: Arg, kind: str):
    return pytest.param(arg, kind, id=f"{arg.command}:{arg.name}:{kind}".replace(" ", "-"))


CASES = [_case(arg, kind) for arg in ARGS for kind in kinds(arg)]
# a progress bar that a stage drew before it met the bad input is not part of the answer
PROGRESS_BAR = re.compile(r"^[^|]*\d+%\|.*\|")


@pytest.mark.parametrize("arg,kind", CASES)
def test_bad_input_is_one_line_naming_the_file(arg: Arg, kind: str, valid: Valid, tmp_path, capsys):
    bad = make_bad(arg, kind, valid, tmp_path)
    out = tmp_path / "out"
    argv = [str(a) for a in arg.argv(str(bad), valid, str(out))]  # may make valid.tok and .run
    if kind.endswith("+force"):
        argv.append("--force")
    before = snapshot(valid.root, tmp_path)
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse: a usage message, not an answer about the file
        rc = e.code
    except Exception as e:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if "mlscale" in f.filename]
        where = f" (from {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        pytest.fail(f"ended in a traceback: {type(e).__name__}: {e}{where}; "
                    f"command: mlscale {' '.join(argv)}")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS_BAR.match(line)]
    command = arg.command.split()[0]
    assert rc not in (0, None), f"exit code {rc} for bad input; stderr:\n{err}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith(f"mlscale {command}: error: "), lines[0]
    assert str(bad) in lines[0], f"the message does not name {bad}: {lines[0]}"
    assert "Traceback" not in err
    # nothing that existed before was changed or lost: the bad input, the valid inputs
    after = snapshot(valid.root, tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
