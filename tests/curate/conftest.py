"""Shared inputs of the curate stage tests: small real-text corpora with known duplicates."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from sample_data import shakespeare_text, write_commoncrawl


def shakespeare_docs(n: int, lines: int = 40, start: int = 0) -> list[str]:
    """`n` consecutive, non-overlapping passages of the plays (real text, ~1.5 kB each)."""
    all_lines = shakespeare_text().splitlines()
    return ["\n".join(all_lines[start + i * lines: start + (i + 1) * lines]) for i in range(n)]


def perturb(text: str, rate: float, rng: random.Random) -> str:
    """Replace a fraction `rate` of the words by other words (a near duplicate)."""
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, int(rate * len(words)))):
        words[i] = rng.choice(["lo", "anon", "prithee", "forsooth", "marry"])
    return " ".join(words)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")
    return path


def build_dedup_corpus(folder: Path, files: int = 3, per_file: int = 30, seed: int = 0) -> dict:
    """JSONL files of Shakespeare passages with exact copies (case and punctuation changed)
    and near copies (1% of words replaced) spread over the files; returns what was planted.
    """
    rng = random.Random(seed)
    originals = shakespeare_docs(files * per_file)
    planted = {"exact": {}, "near": {}}
    records: list[list[dict]] = [[] for _ in range(files)]
    for i, text in enumerate(originals):
        records[i % files].append({"id": f"doc-{i:04d}", "text": text})
    # copies go into later files than their original, so the original survives
    for j, i in enumerate(range(0, len(originals), 7)):
        copy = originals[i].upper().replace(",", " ,")
        planted["exact"][f"exact-{j:03d}"] = f"doc-{i:04d}"
        records[-1].append({"id": f"exact-{j:03d}", "text": copy})
    for j, i in enumerate(range(3, len(originals), 9)):
        planted["near"][f"near-{j:03d}"] = f"doc-{i:04d}"
        records[-1].append({"id": f"near-{j:03d}", "text": perturb(originals[i], 0.01, rng)})
    for f in range(files):
        write_jsonl(folder / f"part-{f}.jsonl", records[f])
    planted["total"] = sum(len(r) for r in records)
    return planted


@pytest.fixture(scope="session")
def commoncrawl(tmp_path_factory) -> Path:
    """The Common Crawl sample folder: cc_en_head-0091.jsonl, sample-0000/0001.warc.gz."""
    return write_commoncrawl(tmp_path_factory.mktemp("commoncrawl"))


@pytest.fixture(scope="session")
def dedup_corpus(tmp_path_factory) -> tuple[Path, dict]:
    """(folder, planted duplicates) of a 3-file JSONL corpus with known duplicates."""
    folder = tmp_path_factory.mktemp("dedup_corpus")
    return folder, build_dedup_corpus(folder)


def output_files(out: Path) -> dict[str, bytes]:
    """The bytes of every kept/removed part of a curate output, by relative path."""
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for sub in ("kept", "removed") for p in sorted((out / sub).glob("*.parquet"))}


def read_output(out: Path) -> tuple[list[dict], list[dict]]:
    """(kept rows, removed rows) of a curate output, in part order."""
    import pyarrow.parquet as pq

    def rows(sub: str) -> list[dict]:
        return [r for p in sorted((out / sub).glob("part-*.parquet"))
                for r in pq.read_table(p).to_pylist()]

    return rows("kept"), rows("removed")


@pytest.fixture
def outputs():
    """Helpers to read a curate output: `outputs.files(out)`, `outputs.rows(out)`."""
    class Outputs:
        files = staticmethod(output_files)
        rows = staticmethod(read_output)

    return Outputs


# several shards per file and three key partitions, so that every stage has parallel work;
# no quality filters, which would drop the planted duplicates (Shakespeare's verse is
# short lines heavy in punctuation) before dedup sees them
SPLIT = ("--steps=language,exact,near", "--shard.input_bytes=16000", "--shard.dedup_docs=50")


@dataclass(frozen=True)
class Reference:
    """An uninterrupted in-process run of all steps on the dedup corpus."""

    folder: Path
    out: Path
    manifest: dict
    overrides: tuple[str, ...] = SPLIT

    def config(self, *extra: str):
        """The run's config, with `extra` overrides (e.g. where it runs)."""
        from mlscale.config import load_config
        from mlscale.curate.config import CurateConfig

        return load_config(CurateConfig, overrides=["--workers=1", *self.overrides, *extra])


@pytest.fixture(scope="session")
def reference(dedup_corpus, tmp_path_factory) -> Reference:
    from mlscale.curate.pipeline import curate

    folder, _planted = dedup_corpus
    out = tmp_path_factory.mktemp("reference") / "out"
    ref = Reference(folder, out, {})
    return Reference(folder, out, curate([folder], out, ref.config()))
