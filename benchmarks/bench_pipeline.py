"""The FineWeb-style curation chain on real WARC pages: mlscale against datatrove, one core.

Both pipelines read the same WARC file (real pages: Common Crawl captures, the Debian
Reference in four languages, the Python 3.11 documentation), and run equivalent steps:

    mlscale    read_file -> ExtractStep (resiliparse) -> LanguageFilter (py3langid, numba walk)
               -> GopherRepetition -> GopherQuality -> C4 -> FineWeb
    datatrove  WarcReader -> Trafilatura (favour_precision, in its sandbox process, timeout 10 s)
               -> LambdaFilter(py3langid) -> GopherRepetitionFilter -> GopherQualityFilter
               -> C4QualityFilter(filter_no_terminal_punct=False) -> FineWebQualityFilter

datatrove's own LanguageFilter downloads fastText's lid.176 at run time, which is not
possible here, so its language step is a LambdaFilter around py3langid (the same model
mlscale uses, in its original pure-Python form); the output says so. Trafilatura's default
1 s timeout is raised to 10 s: on a busy 2-core machine the sandbox's own import of
trafilatura exceeds 1 s, the sandbox restarts, and every page is dropped; with 10 s
datatrove does the full work (`--trafilatura-timeout` changes it).

Each step runs to completion before the next (lists in between), so per-step times are
exact; start-up (imports, model loading, spaCy) is counted in the total. The process is
pinned to one core. Output: a markdown table with documents/s, MB of HTML/s and the ratio.

    .venv/bin/python benchmarks/bench_pipeline.py [--docs 240] [--skip-datatrove]
"""
from __future__ import annotations

import argparse
import gzip
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCES = [SHARED / "commoncrawl" / "sample-0000.warc.gz", SHARED / "commoncrawl" / "sample-0001.warc.gz",
           SHARED / "web" / "debian-reference.warc.gz", SHARED / "web" / "python-3.11-docs.warc.gz"]


def build_input(n_docs: int, folder: Path) -> tuple[Path, int, int]:
    """One .warc.gz of up to `n_docs` HTML responses taken round-robin from the sources.

    Returns (path, records, bytes of HTTP payload). Records are copied byte for byte
    (each source is gzip-compressed per record, so a member is a record).
    """
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    per_source: list[list[tuple[bytes, int]]] = []
    for src in SOURCES:
        raw = src.read_bytes()
        with open(src, "rb") as fh:
            recs = [(r.stream_pos, r.record_type, r.http_content_type, len(r.reader.read()))
                    for r in ArchiveIterator(fh, parse_http=True)]
        bounds = [pos for pos, *_ in recs] + [len(raw)]
        per_source.append([(raw[bounds[i]:bounds[i + 1]], size)
                           for i, (_, rtype, ctype, size) in enumerate(recs)
                           if rtype == WarcRecordType.response and (ctype or "").startswith("text/html")])
    chosen: list[tuple[bytes, int]] = []
    i = 0
    while len(chosen) < n_docs and any(i < len(s) for s in per_source):
        chosen += [s[i] for s in per_source if i < len(s)][: n_docs - len(chosen)]
        i += 1
    path = folder / "pages.warc.gz"
    path.write_bytes(b"".join(member for member, _ in chosen))
    gzip.decompress(path.read_bytes())  # a valid multi-member gzip
    return path, len(chosen), sum(size for _, size in chosen)


class Timer:
    """Seconds per named step, each step materialised before the next starts."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.steps: list[tuple[str, float, int]] = []

    def run(self, name: str, fn, *args):
        t = time.perf_counter()
        out = list(fn(*args))
        self.steps.append((name, time.perf_counter() - t, len(out)))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
        print(f"  {self.label:9s} {name:18s} {self.steps[-1][1]:7.2f} s  {len(out):5d} docs  "
              f"peak RSS {rss} MB", file=sys.stderr, flush=True)
        return out


def run_mlscale(path: Path) -> dict:
    t0 = time.perf_counter()
    from mlscale.curate.document import Document
    from mlscale.curate.extract import ExtractStep
    from mlscale.curate.filters import quality_steps
    from mlscale.curate.language import LanguageFilter
    from mlscale.curate.readers import ReadConfig, read_file

    lang = LanguageFilter()
    steps = [("extract", ExtractStep()), ("language", lang)] + [(s.name, s) for s in quality_steps()]
    startup = time.perf_counter() - t0

    timer = Timer("mlscale")
    items = timer.run("read", read_file, path, ReadConfig())
    for name, step in steps:
        items = timer.run(name, lambda s, xs: (x for x in s.run(xs) if isinstance(x, Document)), step, items)
    total = time.perf_counter() - t0
    return {"startup": startup, "total": total, "steps": timer.steps,
            "kept": {d.id for d in items}, "timeouts": 0}


def run_datatrove(path: Path, timeout: float) -> dict:
    t0 = time.perf_counter()
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter, LambdaFilter)
    from datatrove.pipeline.readers import WarcReader
    from datatrove.utils.text import split_into_words
    from py3langid import langid

    ident = langid.LanguageIdentifier.from_model_file(langid.MODEL_FILE, norm_probs=True)

    def english(doc) -> bool:
        lang, score = ident.classify(doc.text)
        doc.metadata["language"], doc.metadata["language_score"] = lang, score
        return lang == "en" and score >= 0.65

    split_into_words("warm up spaCy's tokenizer.")  # its ~2 s load counts as start-up
    reader = WarcReader(str(path.parent), glob_pattern=path.name)
    extractor = Trafilatura(favour_precision=True, timeout=timeout)
    steps = [("extract", extractor), ("language", LambdaFilter(english)),
             ("gopher_repetition", GopherRepetitionFilter()), ("gopher_quality", GopherQualityFilter()),
             ("c4", C4QualityFilter(filter_no_terminal_punct=False)), ("fineweb", FineWebQualityFilter())]
    startup = time.perf_counter() - t0

    timer = Timer("datatrove")
    items = timer.run("read", reader.run, None, 0, 1)
    for name, step in steps:
        items = timer.run(name, step.run, items, 0, 1)
    total = time.perf_counter() - t0
    timeout_stat = extractor.stats.stats.get("timeout")  # Stats has no __contains__
    timeouts = int(timeout_stat.total) if timeout_stat is not None else 0
    return {"startup": startup, "total": total, "steps": timer.steps,
            "kept": {str(d.id).strip("<>") for d in items}, "timeouts": timeouts}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=240, help="HTML pages in the input (round-robin over sources)")
    ap.add_argument("--skip-datatrove", action="store_true", help="time mlscale only")
    ap.add_argument("--trafilatura-timeout", type=float, default=10.0,
                    help="datatrove's per-page extraction timeout in seconds (its default is 1)")
    args = ap.parse_args(argv)

    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        path, n, html_bytes = build_input(args.docs, Path(tmp))
        mb = html_bytes / 1e6
        print(f"input: {n} real HTML pages ({mb:.1f} MB of HTML) from "
              f"{', '.join(p.name for p in SOURCES)}; pinned to CPU {core}; python {sys.version.split()[0]}\n")
        results = {"mlscale": run_mlscale(path)}
        if not args.skip_datatrove:
            results["datatrove"] = run_datatrove(path, args.trafilatura_timeout)

    print("| pipeline | docs in | kept | start-up s | total s | docs/s | MB HTML/s | extract timeouts |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {n} | {len(r['kept'])} | {r['startup']:.2f} | {r['total']:.2f} | "
              f"{n / r['total']:.1f} | {mb / r['total']:.2f} | {r['timeouts']} |")
    if "datatrove" in results:
        m, d = results["mlscale"], results["datatrove"]
        ratio = d["total"] / m["total"]
        steady = (d["total"] - d["startup"]) / (m["total"] - m["startup"])
        both = len(m["kept"] & d["kept"]) / max(1, len(m["kept"] | d["kept"]))
        print(f"\nratio (mlscale docs/s / datatrove docs/s): {ratio:.1f}x end to end, "
              f"{steady:.1f}x without start-up; kept-set Jaccard {both:.2f}")
        print("datatrove's LanguageFilter needs a fastText model download, so its language step is a "
              "LambdaFilter around py3langid (offline, the model mlscale uses).")

    print("\nper step (seconds, documents out):\n")
    names = [s for s, _, _ in results["mlscale"]["steps"]]
    print("| step | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    for i, step in enumerate(names):
        cells = [f"{r['steps'][i][1]:.2f} ({r['steps'][i][2]})" for r in results.values()]
        print(f"| {step} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
