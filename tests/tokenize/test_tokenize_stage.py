"""The stage: worker-count independence, sharding, no-op reruns, resume, config changes, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mlscale.errors import ArtifactError, InputError
from mlscale.tokenize import TokenData, TokenizeConfig, tokenize_corpus
from mlscale.tokenize import stage as stage_mod
from mlscale.tokenize.shards import ShardWriter


def small_shards_cfg(**shards) -> TokenizeConfig:
    cfg = TokenizeConfig()
    cfg.tokenizer.vocab_size = 1024
    cfg.split.val_fraction = 0.3
    cfg.shards.shard_tokens = 2048
    cfg.shards.batch_chars = 1024  # one document per batch: many batches in flight
    for k, v in shards.items():
        setattr(cfg.shards, k, v)
    return cfg


def shard_bytes(tok_dir) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(tok_dir.glob("*.bin"))}


def test_output_does_not_depend_on_worker_count(tmp_path, cc_jsonl):
    m1 = tokenize_corpus([cc_jsonl], tmp_path / "w1", small_shards_cfg(workers=1), progress=False)
    m2 = tokenize_corpus([cc_jsonl], tmp_path / "w2", small_shards_cfg(workers=2), progress=False)
    assert m2["workers"] == 2
    assert shard_bytes(tmp_path / "w1") == shard_bytes(tmp_path / "w2")
    assert m1["splits"] == m2["splits"]
    assert (tmp_path / "w1" / "tokenizer.json").read_bytes() == (tmp_path / "w2" / "tokenizer.json").read_bytes()


def test_shards_have_the_configured_size_and_join_to_the_one_shard_stream(tmp_path, cc_jsonl):
    m = tokenize_corpus([cc_jsonl], tmp_path / "small", small_shards_cfg(workers=1), progress=False)
    one = small_shards_cfg(workers=1, shard_tokens=1 << 20)
    tokenize_corpus([cc_jsonl], tmp_path / "big", one, progress=False)
    shards = m["splits"]["train"]["shards"]
    assert len(shards) > 5
    assert all(s["tokens"] == 2048 for s in shards[:-1]) and 0 < shards[-1]["tokens"] <= 2048
    assert all((tmp_path / "small" / s["file"]).stat().st_size == s["bytes"] == 2 * s["tokens"] for s in shards)
    for split in ("train", "val"):
        many, single = TokenData(tmp_path / "small").split(split), TokenData(tmp_path / "big").split(split)
        np.testing.assert_array_equal(np.asarray(many), np.asarray(single))


def test_rerun_is_a_no_op(tmp_path, cc_jsonl, monkeypatch):
    cfg = small_shards_cfg(workers=1)
    first = tokenize_corpus([cc_jsonl], tmp_path / "tok", cfg, progress=False)

    def must_not_encode(*a, **k):
        raise AssertionError("a finished stage was encoded again")

    monkeypatch.setattr(stage_mod, "encode_batches", must_not_encode)
    cfg.shards.workers = 2  # execution settings may change freely
    assert tokenize_corpus([cc_jsonl], tmp_path / "tok", cfg, progress=False) == first


def test_interrupted_run_resumes_after_its_last_shard_with_identical_output(tmp_path, cc_jsonl, monkeypatch):
    cfg = small_shards_cfg(workers=1)
    tokenize_corpus([cc_jsonl], tmp_path / "clean", cfg, progress=False)

    real_write = ShardWriter._write
    calls = {"n": 0}

    def crash_on_fifth(self, n):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        real_write(self, n)

    monkeypatch.setattr(ShardWriter, "_write", crash_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        tokenize_corpus([cc_jsonl], tmp_path / "tok", cfg, progress=False)
    monkeypatch.setattr(ShardWriter, "_write", real_write)
    assert not (tmp_path / "tok" / "manifest.json").exists()
    done_before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "tok").glob("*.bin")}
    assert len(done_before) == 4

    encoded = []
    real_encode = stage_mod.encode_batches

    def counting(tok, batches, workers):
        return real_encode(tok, _tee(batches, encoded), workers)

    monkeypatch.setattr(stage_mod, "encode_batches", counting)
    m = tokenize_corpus([cc_jsonl], tmp_path / "tok", cfg, progress=False)
    assert shard_bytes(tmp_path / "tok") == shard_bytes(tmp_path / "clean")
    assert m["splits"] == json.loads((tmp_path / "clean" / "manifest.json").read_text())["splits"]
    # the four finished shards were kept, and their documents were not all encoded again
    assert all((tmp_path / "tok" / n).stat().st_mtime_ns == t for n, t in done_before.items())
    n_docs = m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"]
    assert 0 < sum(len(b) for b in encoded) < n_docs


def _tee(batches, store):
    for b in batches:
        store.append(list(b[0]))  # the texts of a (texts, eos flags) batch
        yield b


def test_another_config_on_the_same_output_is_refused_and_force_starts_over(tmp_path, cc_jsonl):
    cfg = small_shards_cfg(workers=1)
    tokenize_corpus([cc_jsonl], tmp_path / "tok", cfg, progress=False)
    cfg.split.val_fraction = 0.5
    with pytest.raises(ArtifactError, match=r"split\.val_fraction: 0\.3 -> 0\.5.*--force"):
        tokenize_corpus([cc_jsonl], tmp_path / "tok", cfg, progress=False)
    m = tokenize_corpus([cc_jsonl], tmp_path / "tok", cfg, force=True, progress=False)
    assert m["config"]["split"]["val_fraction"] == 0.5


def test_empty_input_fails_before_writing_anything(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"id": "a", "text": ""}\n\n{"id": "b", "text": ""}\n')
    with pytest.raises(InputError, match="no text in the inputs"):
        tokenize_corpus([empty], tmp_path / "tok", progress=False)
    assert not (tmp_path / "tok").exists()


def test_bpe_needs_a_train_document(tmp_path):
    one = tmp_path / "one.jsonl"
    doc = next(f"d{i}" for i in range(100) if __import__("mlscale.tokenize.split", fromlist=["x"])
               .split_of(f"d{i}", 0.5) == "val")
    one.write_text(json.dumps({"id": doc, "text": "hello"}) + "\n")
    cfg = TokenizeConfig()
    cfg.split.val_fraction = 0.5
    with pytest.raises(InputError, match="train split"):
        tokenize_corpus([one], tmp_path / "tok", cfg, progress=False)


def test_large_vocabulary_uses_uint32(tmp_path, shakespeare_text):
    from mlscale.tokenize.shards import token_dtype

    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
