"""The tokenize stage: inputs -> TOK/tokenizer.json + token shards + TOK/manifest.json.

Two passes over the inputs: the first trains the tokenizer (BPE on the train split; the
char vocabulary from all text, as nanoGPT), the second encodes every piece in parallel
and appends its tokens (plus eos at the end of each document) to its split's shards.
Work units: the tokenizer, then each shard; the manifest is written last.
"""
from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from mlscale.artifacts import StageDir, atomic_path, fingerprint_paths
from mlscale.errors import InputError
from mlscale.tokenize.char import build_char_tokenizer
from mlscale.tokenize.config import TokenizeConfig
from mlscale.tokenize.encode import default_workers, encode_batches
from mlscale.tokenize.shards import ShardWriter, token_dtype
from mlscale.tokenize.sources import Piece, Source, iter_pieces, positional, resolve_inputs
from mlscale.tokenize.split import SPLITS, TRAIN
from mlscale.tokenize.tokenizer import TOKENIZER_FILE, Tokenizer, load_tokenizer, train_bpe

STAGE_NAME = "tokenize"
FORMAT = "mlscale-tokens-v1"


def tokenize_corpus(inputs: Sequence[str | Path], out: str | Path, cfg: TokenizeConfig | None = None,
                    *, force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train a tokenizer on `inputs` and write token shards to `out`; returns the manifest.

    A finished `out` with the same config and inputs is returned as is; an interrupted one
    resumes after its last complete shard; `force` starts over.
    """
    cfg = cfg or TokenizeConfig()
    sources = resolve_inputs(inputs)
    _require_text(sources, cfg)
    fingerprints = fingerprint_paths([s.path.resolve() for s in sources])
    stage = StageDir.open(out, STAGE_NAME, cfg.content_dict(), fingerprints, force=force)
    if stage.complete:
        return stage.manifest()

    t0 = time.time()
    tok = _tokenizer(stage, sources, cfg, progress)
    t1 = time.time()
    splits, workers = _encode(stage, sources, cfg, tok, progress)
    t2 = time.time()
    dtype = token_dtype(tok.vocab_size)
    return stage.write_manifest({
        "format": FORMAT,
        "tokenizer": {"file": TOKENIZER_FILE, "kind": tok.kind, "vocab_size": tok.vocab_size,
                      "fingerprint": tok.fingerprint, "special_ids": tok.special_ids},
        "dtype": dtype.name,
        "shard_tokens": cfg.shards.shard_tokens,
        "split_by": "position" if positional(sources) else "document id hash",
        "splits": splits,
        "sources": [{"path": str(s.path), "format": s.format} for s in sources],
        "workers": workers,
        "tokenizer_seconds": round(t1 - t0, 3),
        "encode_seconds": round(t2 - t1, 3),
    })


def _pieces(sources: Sequence[Source], cfg: TokenizeConfig) -> Iterator[Piece]:
    return iter_pieces(sources, cfg.input, cfg.split.val_fraction, cfg.split.seed)


def _require_text(sources: Sequence[Source], cfg: TokenizeConfig) -> None:
    """Fail before creating the output directory when there is nothing to work on."""
    found = False
    for piece in _pieces(sources, cfg):
        found = True
        if piece.split == TRAIN or cfg.tokenizer.kind == "char":
            return
    names = ", ".join(str(s.path) for s in sources[:3]) + (" ..." if len(sources) > 3 else "")
    if not found:
        raise InputError(f"no text in the inputs ({names}): every document is empty")
    raise InputError(f"no document of {names} went to the train split to train the tokenizer on: "
                     "lower split.val_fraction or add documents")


# ----------------------------------------------------------------------------- tokenizer
def _tokenizer(stage: StageDir, sources: Sequence[Source], cfg: TokenizeConfig,
               progress: bool) -> Tokenizer:
    path = stage.path / TOKENIZER_FILE
    if stage.unit_done("tokenizer") and path.exists():
        return load_tokenizer(path)
    tc = cfg.tokenizer
    bar = tqdm(desc=f"tokenizer ({tc.kind}): reading", unit="char" if tc.kind == "char" else "B",
               unit_scale=True, disable=not progress)
    if tc.kind == "char":
        # nanoGPT takes the characters of the whole text (train and val) as the vocabulary
        seen = np.zeros(0x110000, dtype=bool)
        for piece in _pieces(sources, cfg):
            seen[np.frombuffer(piece.text.encode("utf-32-le"), dtype=np.uint32)] = True
            bar.update(len(piece.text))
        hf = build_char_tokenizer(chr(c) for c in np.flatnonzero(seen))
    else:
        hf = train_bpe(_train_texts(sources, cfg, bar), tc.vocab_size, tc.min_frequency, progress=progress)
    bar.close()
    with atomic_path(path) as tmp:
        hf.save(str(tmp))
    tok = load_tokenizer(path)
    stage.mark_done("tokenizer", {"fingerprint": tok.fingerprint, "vocab_size": tok.vocab_size})
    return tok


def _train_texts(sources: Sequence[Source], cfg: TokenizeConfig, bar: tqdm) -> Iterator[str]:
    """The train split's texts, up to tokenizer.train_bytes UTF-8 bytes (whole pieces)."""
    limit = cfg.tokenizer.train_bytes
    seen = 0
    for piece in _pieces(sources, cfg):
        if piece.split != TRAIN:
            continue
        nbytes = len(piece.text.encode("utf-8"))
        seen += nbytes
        bar.update(nbytes)
        yield piece.text
        if limit and seen >= limit:
            return


# ------------------------------------------------------------------------------ encoding
def _encode(stage: StageDir, sources: Sequence[Source], cfg: TokenizeConfig, tok: Tokenizer,
            progress: bool) -> tuple[dict[str, Any], int]:
    """Encode every piece into its split's shards; per-split statistics and workers used."""
    dtype = token_dtype(tok.vocab_size)
    writers = {s: ShardWriter(stage, s, dtype, cfg.shards.shard_tokens) for s in SPLITS}
    stats = {s: {"documents": 0, "bytes": 0} for s in SPLITS}
    # The char tokenizer is a vectorised table lookup at hundreds of MB/s: worker
    # processes would only add the cost of shipping text to them.
    workers = 1 if tok.kind == "char" else (cfg.shards.workers or default_workers())
    # per batch, in submission order: the split number of each piece, and the index (within
    # its split) of each split's first piece; a split's pieces in a batch are consecutive
    metas: deque[tuple[list[int], dict[int, int]]] = deque()
    bar = tqdm(desc="tokenize: encoding", unit="B", unit_scale=True, disable=not progress)

    def batches() -> Iterator[tuple[list[str], list[bool]]]:
        counters = [0] * len(SPLITS)
        codes: list[int] = []
        first: dict[int, int] = {}
        texts: list[str] = []
        eos: list[bool] = []
        size = 0
        for piece in _pieces(sources, cfg):
            code = SPLITS.index(piece.split)
            index = counters[code]
            counters[code] += 1
            stats[piece.split]["documents"] += int(piece.starts_doc)
            if not writers[piece.split].wants(index):
                # already in a shard from an earlier, interrupted run
                stats[piece.split]["bytes"] += len(piece.text.encode("utf-8"))
                continue
            first.setdefault(code, index)
            codes.append(code)
            texts.append(piece.text)
            eos.append(piece.eos)
            size += len(piece.text)
            if size >= cfg.shards.batch_chars:
                metas.append((codes, first))
                yield texts, eos
                codes, first, texts, eos, size = [], {}, [], [], 0
        if texts:
            metas.append((codes, first))
            yield texts, eos

    for enc in encode_batches(tok, batches(), workers):
        codes, first = metas.popleft()
        code_arr = np.array(codes, dtype=np.int8)
        for code, first_index in first.items():
            split = SPLITS[code]
            sel = code_arr == code
            if sel.all():
                tokens, lengths, nbytes = enc.tokens, enc.lengths, enc.nbytes
            else:
                tokens = enc.tokens[np.repeat(sel, enc.lengths)]
                lengths, nbytes = enc.lengths[sel], enc.nbytes[sel]
            writers[split].extend(first_index, tokens, lengths)
            stats[split]["bytes"] += int(nbytes.sum())
        bar.update(int(enc.nbytes.sum()))
    bar.close()

    out: dict[str, Any] = {}
    for s in SPLITS:
        shards = writers[s].close()
        tokens_total = sum(sh["tokens"] for sh in shards)
        out[s] = {"tokens": tokens_total, "documents": stats[s]["documents"], "bytes": stats[s]["bytes"],
                  "bytes_per_token": stats[s]["bytes"] / tokens_total if tokens_total else None,
                  "shards": shards}
    return out, workers
