"""Near-duplicate detection side by side: mlscale, datasketch and rensa, from raw text.

    python benchmarks/bench_dedup.py            # accuracy and speed on a real corpus
    python benchmarks/bench_dedup.py --scale    # mlscale's time and memory, 10k..1M docs

The corpus (benchmarks/corpus.py): >= 10,000 real documents (Debian's python3.11-doc and
linux-doc, ../shared/data) plus perturbed copies at edit rates of 1-25%. Ground truth:
every pair with exact Jaccard >= 0.8 on mlscale's shingles (word 5-grams of the normal
form), by a sparse matrix product. All tools use 112 permutations as 14 bands x 8 rows.
mlscale gets raw text; each peer gets the shingling a user would write for it (word
5-grams of `text.lower().split()`), and its documented batch API (datasketch's
`MinHash.bulk` + `MinHashLSH`, rensa's `RMinHash.from_token_sets` + `RMinHashLSH`).
"+ verify" rows keep a peer's candidate pairs whose own estimated Jaccard >= 0.8.
"rensa on mlscale's normal form" feeds rensa the ground truth's own shingles, to tell
apart what the shingling costs a peer from what its sketch and LSH cost.

Each tool runs in its own process pinned to one CPU (NUMBA_NUM_THREADS=1,
RAYON_NUM_THREADS=1), so documents/s are single-core figures and peak memory (ru_maxrss)
is the tool's own; "extra MB" is peak RSS minus the RSS with the corpus loaded.
Clustering (survivor per cluster) is the same code for everyone and scores documents.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus as corpus_mod  # noqa: E402

NUM_PERM, BANDS, ROWS, THRESHOLD, NGRAM = 112, 14, 8, 0.8, 5
CACHE = Path(tempfile.gettempdir()) / "mlscale-bench-dedup"
TOOLS = ["mlscale", "mlscale-noverify", "rensa", "rensa-normal-form", "datasketch"]
LABELS = {
    "mlscale": "mlscale near (verify on)",
    "mlscale-noverify": "mlscale near (verify off, FineWeb)",
    "rensa": "rensa RMinHash + RMinHashLSH",
    "rensa+verify": "rensa + verify",
    "rensa-normal-form": "rensa on mlscale's normal form",
    "rensa-normal-form+verify": "rensa on mlscale's normal form + verify",
    "datasketch": "datasketch MinHash + MinHashLSH",
    "datasketch+verify": "datasketch + verify",
}


# ------------------------------------------------------------------ corpus and truth
def load_corpus(copies: int, seed: int) -> corpus_mod.Corpus:
    path = CACHE / f"corpus-{copies}-{seed}.pkl"
    if path.is_file():
        return pickle.loads(path.read_bytes())
    print("building the corpus (once; cached in", path, ")", file=sys.stderr)
    corpus = corpus_mod.build_corpus(copies=copies, seed=seed)
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(corpus))
    return corpus


def ground_truth(corpus: corpus_mod.Corpus, key: str) -> np.ndarray:
    path = CACHE / f"truth-{key}.npy"
    if path.is_file():
        return np.load(path)
    from mlscale.curate.dedup.jaccard import exact_jaccard_pairs

    t0 = time.perf_counter()
    pairs, _ = exact_jaccard_pairs(corpus.texts, THRESHOLD, NGRAM)
    print(f"ground truth: {len(pairs)} pairs with exact Jaccard >= {THRESHOLD} "
          f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    np.save(path, pairs)
    return pairs


# ------------------------------------------------------------------ the tools
def _clock() -> tuple[float, float]:
    """(wall, CPU) seconds now: CPU time is robust to other users' load, wall is not."""
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _clock()
    return wall - start[0], cpu - start[1]

def natural_shingles(text: str) -> list[str]:
    """What a user writes for a MinHash library: word 5-grams of the lowercased text."""
    words = text.lower().split()
    if len(words) < NGRAM:
        return [" ".join(words)] if words else []
    return list({" ".join(words[i: i + NGRAM]) for i in range(len(words) - NGRAM + 1)})


def _pairs_from_candidates(candidates) -> np.ndarray:
    out = [(min(i, j), max(i, j)) for i, cands in enumerate(candidates) for j in cands if j != i]
    return np.unique(np.array(out, dtype=np.int64).reshape(-1, 2), axis=0)


def run_mlscale(texts: list[str], verify: bool) -> dict[str, np.ndarray]:
    from mlscale.curate.dedup import NearConfig, near_duplicates

    result = near_duplicates(texts, NearConfig(num_perm=NUM_PERM, bands=BANDS, rows=ROWS,
                                               threshold=THRESHOLD, verify=verify))
    return {"pairs": result.pairs}


def run_rensa(texts: list[str], normal_form: bool = False
              ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """rensa's batch API; with `normal_form`, on the shingles the ground truth uses."""
    from rensa import RMinHash, RMinHashLSH

    from mlscale.curate.dedup import normalize_text

    t0 = _clock()
    prepare = (lambda t: natural_shingles(normalize_text(t))) if normal_form else natural_shingles
    sketches = RMinHash.from_token_sets([prepare(t) for t in texts],
                                        num_perm=NUM_PERM, seed=42)
    lsh = RMinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, num_bands=BANDS)
    lsh.insert_many(sketches)
    pairs = _pairs_from_candidates(lsh.query_all(sketches))
    t1 = _since(t0)
    keep = [sketches[i].jaccard(sketches[j]) >= THRESHOLD for i, j in pairs.tolist()]
    t2 = _since(t0)
    return ({"pairs": pairs, "pairs_verified": pairs[np.array(keep, dtype=bool)]},
            {"seconds": t1[0], "cpu": t1[1], "seconds_verified": t2[0], "cpu_verified": t2[1]})


def run_datasketch(texts: list[str]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    from datasketch import MinHash, MinHashLSH

    t0 = _clock()
    sketches = MinHash.bulk(([s.encode() for s in natural_shingles(t)] for t in texts),
                            num_perm=NUM_PERM)
    lsh = MinHashLSH(num_perm=NUM_PERM, params=(BANDS, ROWS))
    for i, m in enumerate(sketches):
        lsh.insert(i, m)
    pairs = _pairs_from_candidates(lsh.query(m) for m in sketches)
    t1 = _since(t0)
    keep = [sketches[i].jaccard(sketches[j]) >= THRESHOLD for i, j in pairs.tolist()]
    t2 = _since(t0)
    return ({"pairs": pairs, "pairs_verified": pairs[np.array(keep, dtype=bool)]},
            {"seconds": t1[0], "cpu": t1[1], "seconds_verified": t2[0], "cpu_verified": t2[1]})


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mb() -> float:
    """Resident memory now (the baseline: corpus loaded, imports done)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _load_texts(path: Path) -> list[str]:
    with path.open("rb") as fh:  # streamed: no transient copy of the whole file
        return pickle.load(fh).texts


def worker(tool: str, corpus_path: Path, out: Path) -> None:
    """One tool in this (pinned, single-threaded) process; pairs and figures to `out`."""
    texts = _load_texts(corpus_path)
    # Warm up imports and (cached) JIT code on a few documents: a one-off per machine.
    warm = texts[:20]
    if tool.startswith("mlscale"):
        run_mlscale(warm, True)
    elif tool.startswith("rensa"):
        run_rensa(warm, tool == "rensa-normal-form")
    else:
        run_datasketch(warm)
    base = _rss_mb()
    t0 = _clock()
    if tool == "mlscale":
        arrays, seconds = run_mlscale(texts, True), {}
    elif tool == "mlscale-noverify":
        arrays, seconds = run_mlscale(texts, False), {}
    elif tool.startswith("rensa"):
        arrays, seconds = run_rensa(texts, tool == "rensa-normal-form")
    else:
        arrays, seconds = run_datasketch(texts)
    wall, cpu = _since(t0)
    seconds.setdefault("seconds", wall)
    seconds.setdefault("cpu", cpu)
    np.savez(out.with_suffix(".npz"), **arrays)  # type: ignore[arg-type]
    out.write_text(json.dumps({**seconds, "peak_mb": _peak_mb(), "base_mb": base}))


def spawn(args: list[str]) -> None:
    env = dict(os.environ, NUMBA_NUM_THREADS="1", RAYON_NUM_THREADS="1",
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cpu = min(os.sched_getaffinity(0))
    subprocess.run([sys.executable, __file__, *args], env=env, check=True,
                   preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))


# ------------------------------------------------------------------ scoring
def _survivor_removed(n: int, pairs: np.ndarray) -> np.ndarray:
    from mlscale.curate.dedup import choose_survivors, connected_components

    survivor, _ = choose_survivors(connected_components(n, pairs), np.arange(n))
    return survivor != np.arange(n)


def score(n: int, truth: np.ndarray, pairs: np.ndarray) -> dict[str, float]:
    code = lambda p: p[:, 0] * n + p[:, 1]  # noqa: E731
    tp = np.intersect1d(code(truth), code(pairs)).shape[0]
    true_removed = _survivor_removed(n, truth)
    removed = _survivor_removed(n, pairs)
    both = int((true_removed & removed).sum())
    return {
        "pair_precision": tp / max(len(pairs), 1), "pair_recall": tp / max(len(truth), 1),
        "doc_precision": both / max(int(removed.sum()), 1),
        "doc_recall": both / max(int(true_removed.sum()), 1),
        "pairs": len(pairs), "removed": int(removed.sum()),
    }


def accuracy_benchmark(args: argparse.Namespace) -> None:
    corpus = load_corpus(args.copies, args.seed)
    n = len(corpus.texts)
    truth = ground_truth(corpus, f"{args.copies}-{args.seed}")
    corpus_path = CACHE / f"corpus-{args.copies}-{args.seed}.pkl"
    mb = sum(len(t.encode()) for t in corpus.texts) / 1e6
    true_removed = int(_survivor_removed(n, truth).sum())
    print(f"\ncorpus: {n} documents ({mb:.1f} MB of text; "
          f"{int((corpus.copy_of >= 0).sum())} perturbed copies at 1-25% edits); "
          f"{len(truth)} pairs with exact Jaccard >= {THRESHOLD}, {true_removed} documents "
          f"to remove; {NUM_PERM} permutations, {BANDS} x {ROWS} bands, one core; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the start\n")
    runs: dict[str, list[dict]] = {tool: [] for tool in args.tools}
    for rep in range(args.repeat):  # interleaved, so load from other users hits all alike
        for tool in args.tools:
            out = CACHE / f"result-{tool}-{rep}.json"
            spawn(["--worker", tool, "--corpus", str(corpus_path), "--out", str(out)])
            runs[tool].append(json.loads(out.read_text()))
    rows = []
    for tool in args.tools:
        arrays = np.load(CACHE / f"result-{tool}-0.npz")
        figures = {k: float(np.median([r[k] for r in runs[tool]])) for k in runs[tool][0]}
        variants = [(tool, "pairs", "seconds", "cpu")]
        if "pairs_verified" in arrays:
            variants.append((f"{tool}+verify", "pairs_verified", "seconds_verified",
                             "cpu_verified"))
        for name, key, wall, cpu in variants:
            s = score(n, truth, arrays[key])
            rows.append((name, n / figures[cpu], n / figures[wall], figures["peak_mb"],
                         figures["peak_mb"] - figures["base_mb"], s))
            print(f"  {LABELS[name]}: {n / figures[cpu]:,.0f} docs/s (CPU time)", file=sys.stderr)
    speed = {name: dps for name, dps, *_ in rows}
    print("| tool | docs/s (CPU) | vs rensa | vs datasketch | docs/s (wall) | peak RSS MB | "
          "extra MB | pair P | pair R | doc P | doc R | pairs | removed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, dps, wall_dps, peak, extra, s in rows:
        vs_r = f"{dps / speed['rensa']:.2f}x" if "rensa" in speed else "-"
        vs_d = f"{dps / speed['datasketch']:.1f}x" if "datasketch" in speed else "-"
        print(f"| {LABELS[name]} | {dps:,.0f} | {vs_r} | {vs_d} | {wall_dps:,.0f} | {peak:.0f} | "
              f"{extra:.0f} | {s['pair_precision']:.3f} | {s['pair_recall']:.3f} | "
              f"{s['doc_precision']:.3f} | {s['doc_recall']:.3f} | {s['pairs']} | "
              f"{s['removed']} |")


# ------------------------------------------------------------------ scaling
def scale_worker(n: int, pool_path: Path, out: Path) -> None:
    from mlscale.curate.dedup import NearConfig, near_duplicates

    with pool_path.open("rb") as fh:
        pool = pickle.load(fh)
    near_duplicates(corpus_mod.short_documents(50, pool), NearConfig())  # warm-up
    base = _rss_mb()
    generating = [0.0, 0.0]  # wall, CPU spent making the documents, not deduplicating

    def timed(stream):
        it = iter(stream)
        while True:
            t = _clock()
            try:
                text = next(it)
            except StopIteration:
                return
            finally:
                wall, cpu = _since(t)
                generating[0] += wall
                generating[1] += cpu
            yield text

    t0 = _clock()
    result = near_duplicates(timed(corpus_mod.short_documents(n, pool)), NearConfig(),
                             batch_size=8192)
    wall, cpu = _since(t0)
    parts = dict(result.seconds)
    parts["signatures"] -= generating[0]
    out.write_text(json.dumps({
        "n": n, "seconds": wall - generating[0], "cpu": cpu - generating[1],
        "peak_mb": _peak_mb(), "base_mb": base, "removed": result.num_removed,
        "parts": parts}))


def scale_benchmark(args: argparse.Namespace) -> None:
    pool_path = CACHE / f"pool-{args.copies}-{args.seed}.pkl"
    if not pool_path.is_file():
        corpus = load_corpus(args.copies, args.seed)
        pool_path.write_bytes(pickle.dumps(corpus_mod.line_pool(corpus.texts)))
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the start")
    print("\n| documents | CPU s | docs/s (CPU) | wall s | peak RSS MB | extra MB | removed | "
          "signatures s | buckets s | verify s | clusters s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        out = CACHE / f"scale-{n}.json"
        spawn(["--scale-worker", str(n), "--pool", str(pool_path), "--out", str(out)])
        r = json.loads(out.read_text())
        p = r["parts"]
        print(f"| {n:,} | {r['cpu']:.1f} | {n / r['cpu']:,.0f} | {r['seconds']:.1f} | "
              f"{r['peak_mb']:.0f} | "
              f"{r['peak_mb'] - r['base_mb']:.0f} | {r['removed']:,} | {p['signatures']:.1f} | "
              f"{p['buckets']:.1f} | {p['verify']:.1f} | {p['clusters']:.1f} |", flush=True)
    print("\n(all times exclude generating the documents; the last four columns are "
          "wall seconds of near_duplicates' stages)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", action="store_true", help="time mlscale from 10k to 1M docs")
    parser.add_argument("--sizes", type=lambda s: [int(float(x)) for x in s.split(",")],
                        default=[10_000, 30_000, 100_000, 300_000, 1_000_000])
    parser.add_argument("--tools", type=lambda s: s.split(","), default=TOOLS)
    parser.add_argument("--copies", type=int, default=2500, help="perturbed copies to add")
    parser.add_argument("--repeat", type=int, default=1, help="runs per tool (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--scale-worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--pool", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.corpus, args.out)
    elif args.scale_worker:
        scale_worker(args.scale_worker, args.pool, args.out)
    elif args.scale:
        scale_benchmark(args)
    else:
        accuracy_benchmark(args)


if __name__ == "__main__":
    main()
