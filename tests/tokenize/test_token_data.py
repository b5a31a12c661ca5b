"""TokenData: manifest facts, memory-mapped splits, sharded views, clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from mlscale.errors import ArtifactError
from mlscale.tokenize import TokenData, TokenizeConfig, tokenize_corpus
from mlscale.tokenize.data import ShardedArray


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory, cc_jsonl):
    cfg = TokenizeConfig()
    cfg.tokenizer.vocab_size = 512
    cfg.shards.shard_tokens = 1024
    cfg.shards.workers = 1
    out = tmp_path_factory.mktemp("data") / "tok"
    tokenize_corpus([cc_jsonl], out, cfg, progress=False)
    return out


def test_facts_come_from_the_manifest(sharded_dir):
    td = TokenData(sharded_dir)
    m = td.manifest
    assert td.vocab_size == 512 and td.dtype == np.uint16
    assert td.tokens("train") == sum(s["tokens"] for s in m["splits"]["train"]["shards"])
    assert td.tokenizer.fingerprint == td.tokenizer_fingerprint
    assert td.special_ids == {"bos": 0, "eos": 1, "pad": 2}
    train = td.split("train")
    assert isinstance(train, ShardedArray) and len(train) == td.tokens("train")
    assert int(np.asarray(train).max()) < td.vocab_size
    with pytest.raises(KeyError, match="unknown split"):
        td.split("test")


def test_sharded_array_indexes_like_the_concatenation():
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 1000, size=n).astype(np.uint16) for n in (5, 0, 17, 1, 30)]
    whole = np.concatenate(parts)
    arr = ShardedArray(parts)
    assert len(arr) == len(whole) == 53
    for i in (0, 4, 5, 21, 22, 52, -1, -53):
        assert arr[i] == whole[i]
    for a, b in ((0, 53), (3, 9), (4, 23), (22, 23), (50, 80), (10, 10), (-7, None)):
        np.testing.assert_array_equal(arr[a:b], whole[a:b])
    np.testing.assert_array_equal(arr[::3], whole[::3])
    idx = rng.integers(0, 53, size=(4, 9))
    np.testing.assert_array_equal(arr[idx], whole[idx])
    np.testing.assert_array_equal(np.asarray(arr), whole)
    with pytest.raises(IndexError):
        arr[53]
    with pytest.raises(IndexError):
        arr[np.array([0, 60])]


def test_unfinished_or_damaged_directories_are_clear_errors(tmp_path, sharded_dir):
    with pytest.raises(ArtifactError, match="not a `mlscale tokenize` output"):
        TokenData(tmp_path)
    (tmp_path / "stage.json").write_text("{}")
    with pytest.raises(ArtifactError, match="unfinished"):
        TokenData(tmp_path)

    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(sharded_dir, broken)
    shard = broken / "train-00001.bin"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="train-00001.bin is missing or truncated"):
        TokenData(broken).split("train")
    (broken / "tokenizer.json").write_text((broken / "tokenizer.json").read_text().replace('"<|pad|>"', '"<|pda|>"'))
    with pytest.raises(ArtifactError, match="not the tokenizer these shards were made with"):
        TokenData(broken).tokenizer
