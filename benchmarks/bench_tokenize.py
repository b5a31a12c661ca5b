"""Tokenize timings: the two reference inputs, worker scaling, and peers on the same text.

    python benchmarks/bench_tokenize.py [--copies 30] [--workers 1,4,16]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mlscale.tokenize import TokenizeConfig, load_tokenizer, tokenize_corpus

HERE = Path(__file__).resolve().parent
REPO = next(p for p in HERE.parents if (p / "pyproject.toml").exists())
SHARED = REPO.parent / "shared" / "data"


def data_file(name: str, shared_rel: str) -> Path:
    """The copy beside this script (what travels to a device machine), else ../shared/data."""
    return HERE / name if (HERE / name).exists() else SHARED / shared_rel


def timed_stage(inputs, cfg, reps=3):
    times, m = [], None
    for _ in range(reps):
        out = Path(tempfile.mkdtemp()) / "tok"
        t = time.perf_counter()
        m = tokenize_corpus(inputs, out, cfg, progress=False)
        times.append(time.perf_counter() - t)
        shutil.rmtree(out.parent)
    return statistics.median(times), m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=30)
    ap.add_argument("--workers", default="1,2,4,8,16")
    args = ap.parse_args()
    import torch  # noqa: F401  (environment() imports it; keep it out of the timings)

    print(f"cpus={os.cpu_count()} python={sys.version.split()[0]}", flush=True)
    char = TokenizeConfig()
    char.tokenizer.kind = "char"
    t, m = timed_stage([data_file("input.txt", "tinyshakespeare/input.txt")], char)
    print(f"tiny shakespeare char: {t:.3f} s (median of 3; tokenizer {m['tokenizer_seconds']} s, "
          f"encode {m['encode_seconds']} s), train {m['splits']['train']['tokens']} val {m['splits']['val']['tokens']}", flush=True)
    bpe = TokenizeConfig()
    t, m = timed_stage([data_file("cc_en_head-0091.jsonl", "commoncrawl/cc_en_head-0091.jsonl")], bpe)
    print(f"commoncrawl jsonl bpe 8192: {t:.3f} s (median of 3; tokenizer {m['tokenizer_seconds']} s, "
          f"encode {m['encode_seconds']} s), vocab {m['tokenizer']['vocab_size']}, "
          f"tokens {m['splits']['train']['tokens'] + m['splits']['val']['tokens']}", flush=True)
    t, m = timed_stage([data_file("input.txt", "tinyshakespeare/input.txt")], bpe)
    print(f"tiny shakespeare bpe 8192: {t:.3f} s (median of 3; tokenizer {m['tokenizer_seconds']} s, "
          f"encode {m['encode_seconds']} s)", flush=True)

    # Larger corpora of real text: Shakespeare cut into documents of about `doc_chars`
    # characters (web documents are a few KB; single paragraphs show the per-document cost).
    text = (data_file("input.txt", "tinyshakespeare/input.txt")).read_text()
    paras = [p for p in text.split("\n\n") if p]
    work = Path(tempfile.mkdtemp())
    for doc_chars, worker_list in ((4000, [int(x) for x in args.workers.split(",")]), (0, [max(int(x) for x in args.workers.split(","))])):
        base_docs, cur = [], ""
        for p in paras:
            cur = cur + "\n\n" + p if cur else p
            if len(cur) >= doc_chars:
                base_docs.append(cur)
                cur = ""
        if cur:
            base_docs.append(cur)
        corpus = work / f"docs{doc_chars}.jsonl"
        with open(corpus, "w") as fh:
            for c in range(args.copies):
                for i, d in enumerate(base_docs):
                    fh.write(json.dumps({"id": f"{c}-{i}", "text": d}) + "\n")
        docs = [d for _ in range(args.copies) for d in base_docs]
        mb = sum(len(d.encode()) for d in docs) / 1e6
        print(f"corpus: {len(docs)} documents of ~{mb * 1e6 / len(docs):.0f} bytes, {mb:.1f} MB", flush=True)
        results, digests = {}, set()
        for w in worker_list:
            cfg = TokenizeConfig()
            cfg.tokenizer.train_bytes = 4_000_000
            cfg.shards.workers = w
            out = work / f"w{w}-{doc_chars}"
            t = time.perf_counter()
            m = tokenize_corpus([corpus], out, cfg, progress=False)
            total = time.perf_counter() - t
            digests.add(json.dumps({s: [x["xxh3"] for x in m["splits"][s]["shards"]] for s in m["splits"]}))
            results[w] = m["encode_seconds"]
            tok_path = out / "tokenizer.json"
            print(f"  workers={w:2d}: encode {m['encode_seconds']:.2f} s = {mb / m['encode_seconds']:.1f} MB/s "
                  f"(stage {total:.2f} s, tokenizer {m['tokenizer_seconds']:.2f} s)", flush=True)
        if len(results) > 1:
            print(f"  identical shards for every worker count: {len(digests) == 1}", flush=True)
            base = results[min(results)]
            print("  speed-up vs 1 worker: " + ", ".join(f"{w}: {base / s:.2f}x" for w, s in results.items()), flush=True)
        tok = load_tokenizer(tok_path)
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
        t = time.perf_counter()
        n = sum(len(e.ids) for e in tok.hf.encode_batch(docs, add_special_tokens=False))
        t_hf = time.perf_counter() - t
        print(f"  peer: HF tokenizers encode_batch of the in-memory texts, one process, Rust threads on all "
              f"cores (no reading, no writing): {t_hf:.2f} s = {mb / t_hf:.1f} MB/s, {n} tokens", flush=True)
        print(f"  ours (best, whole stage's encode pass incl. reading and writing) / peer: "
              f"{t_hf / min(results.values()):.2f}x", flush=True)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
