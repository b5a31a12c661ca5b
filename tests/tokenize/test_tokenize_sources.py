"""Reading inputs: formats, ids, splits, nanoGPT's positional split and its safe cuts."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from mlscale.errors import InputError
from mlscale.tokenize import TokenData, TokenizeConfig, load_tokenizer, tokenize_corpus
from mlscale.tokenize import sources
from mlscale.tokenize.config import InputConfig
from mlscale.tokenize.sources import iter_pieces, resolve_inputs, safe_cut
from mlscale.tokenize.split import position_split, split_of


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_split_by_id_hash_is_stable_and_near_the_fraction():
    ids = [f"https://example.org/{i}" for i in range(20_000)]
    val = [split_of(i, 0.1) for i in ids].count("val")
    assert abs(val / len(ids) - 0.1) < 0.01
    assert [split_of(i, 0.1) for i in ids[:100]] == [split_of(i, 0.1) for i in ids[:100]]
    assert {split_of(i, 0.0) for i in ids} == {"train"}
    assert [split_of(i, 0.1, seed=1) for i in ids] != [split_of(i, 0.1) for i in ids]
    assert position_split(1_115_394, 0.1) == 1_003_854


def test_jsonl_gz_zst_and_parquet_give_the_same_documents(tmp_path, cc_records):
    plain = write_jsonl(tmp_path / "a.jsonl", cc_records)
    with gzip.open(tmp_path / "a.jsonl.gz", "wb") as fh:
        fh.write(plain.read_bytes())
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    pq.write_table(pa.table({"id": [r["id"] for r in cc_records],
                             "content": [r["text"] for r in cc_records]}), tmp_path / "a.parquet")
    expected = [(split_of(r["id"], 0.2), r["text"]) for r in cc_records]
    for name, cfg in (("a.jsonl", InputConfig()), ("a.jsonl.gz", InputConfig()),
                      ("a.jsonl.zst", InputConfig()), ("a.parquet", InputConfig(text_field="content"))):
        pieces = list(iter_pieces(resolve_inputs([tmp_path / name]), cfg, 0.2))
        assert [(p.split, p.text) for p in pieces] == expected, name
        assert all(p.eos and p.starts_doc for p in pieces)


def test_documents_without_id_are_named_by_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "one"}, {"text": ""}, {"text": "three"}])
    docs = list(sources.iter_documents(resolve_inputs([path])[0], InputConfig()))
    assert docs == [("d.jsonl#1", "one"), ("d.jsonl#2", ""), ("d.jsonl#3", "three")]
    # empty documents are dropped: they would be a lone eos
    assert [p.text for p in iter_pieces(resolve_inputs([path]), InputConfig(), 0.0)] == ["one", "three"]


def test_curated_directory_reads_kept_parquet(tmp_path):
    cur = tmp_path / "curated"
    (cur / "kept").mkdir(parents=True)
    (cur / "removed").mkdir()
    pq.write_table(pa.table({"id": ["b", "c"], "text": ["bee", "sea"]}), cur / "kept" / "part-00001.parquet")
    pq.write_table(pa.table({"id": ["a"], "text": ["ay"]}), cur / "kept" / "part-00000.parquet")
    pq.write_table(pa.table({"id": ["x"], "text": ["removed"]}), cur / "removed" / "part-00000.parquet")
    (cur / "stage.json").write_text("{}")
    with pytest.raises(InputError, match="has not finished"):
        resolve_inputs([cur])
    (cur / "manifest.json").write_text("{}")
    pieces = iter_pieces(resolve_inputs([cur]), InputConfig(), 0.0)
    assert [p.text for p in pieces] == ["ay", "bee", "sea"]


@pytest.mark.parametrize("setup, message", [
    (lambda d: d / "missing.jsonl", "input not found"),
    (lambda d: (d / "cur").mkdir() or d / "cur", "kept/\\*.parquet"),
    (lambda d: (d / "x.warc.gz").write_bytes(b"") or d / "x.warc.gz", "unsupported input"),
])
def test_unusable_inputs_are_one_clear_error(tmp_path, setup, message):
    with pytest.raises(InputError, match=message):
        resolve_inputs([setup(tmp_path)])


@pytest.mark.parametrize("body, message", [
    ('{"text": "ok"}\n{"text": "broken"\n', r"b\.jsonl:2: invalid JSON"),
    ('{"text": "ok"}\n{"body": "no text"}\n', r"b\.jsonl:2: no field 'text'"),
    ('{"text": 5}\n', r"b\.jsonl:1: 'text' is not a string"),
    (b"\xff\xfe bad utf-8\n", "not readable as UTF-8"),
])
def test_bad_records_name_file_and_line(tmp_path, body, message):
    path = tmp_path / "b.jsonl"
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    with pytest.raises(InputError, match=message):
        list(iter_pieces(resolve_inputs([path]), InputConfig(), 0.1))


def test_parquet_without_the_text_column_says_which_columns_exist(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "body": ["x"]}), tmp_path / "p.parquet")
    with pytest.raises(InputError, match="no column 'text' .*columns: id, body"):
        list(iter_pieces(resolve_inputs([tmp_path / "p.parquet"]), InputConfig(), 0.1))


def test_safe_cut_never_changes_byte_level_pretokens():
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    words = lambda s: [w for w, _ in pre.pre_tokenize_str(s)]  # noqa: E731
    for text in ["end.\nFirst Citizen:\nSpeak.", "a \nb\n\nc\nd", "x\n y\nz", "no newline at all"]:
        for target in range(len(text) + 1):
            i = safe_cut(text, target)
            if i:
                assert words(text[:i]) + words(text[i:]) == words(text), (text, i)
    assert safe_cut("a \nb", 2) == 0 and safe_cut("ab\ncd", 1) == 3


def test_single_text_file_pieces_encode_exactly_like_the_whole(tmp_path, monkeypatch, shakespeare_text):
    text = shakespeare_text[:60_000]
    path = tmp_path / "input.txt"
    path.write_text(text, encoding="utf-8", newline="")
    monkeypatch.setattr(sources, "PIECE_CHARS", 2048)  # many cuts
    pieces = list(iter_pieces(resolve_inputs([path]), InputConfig(), 0.1))
    cut = int(len(text) * 0.9)
    assert len(pieces) > 20 and not any(p.eos for p in pieces)
    assert "".join(p.text for p in pieces if p.split == "train") == text[:cut]
    assert "".join(p.text for p in pieces if p.split == "val") == text[cut:]
    assert [p.starts_doc for p in pieces].count(True) == 2

    cfg = TokenizeConfig()
    cfg.tokenizer.vocab_size = 600
    cfg.shards.batch_chars = 4096
    tokenize_corpus([path], tmp_path / "tok", cfg, progress=False)
    td, tok = TokenData(tmp_path / "tok"), load_tokenizer(tmp_path / "tok")
    # nanoGPT's GPT-2 prepare.py: encode(train_data), encode(val_data), no eos
    np.testing.assert_array_equal(np.asarray(td.split("train")), tok.encode(text[:cut]))
    np.testing.assert_array_equal(np.asarray(td.split("val")), tok.encode(text[cut:]))


def test_several_text_files_are_whole_documents(tmp_path):
    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / name).write_text(f"text of {name}\n")
    srcs = resolve_inputs(sorted(tmp_path.glob("*.txt")))
    pieces = list(iter_pieces(srcs, InputConfig(), 0.5))
    assert [p.text for p in pieces] == ["text of a.txt\n", "text of b.txt\n", "text of c.txt\n"]
    assert [p.split for p in pieces] == [split_of(n, 0.5) for n in ("a.txt", "b.txt", "c.txt")]
    assert all(p.eos for p in pieces)


@pytest.mark.parametrize("name, message", [("c.jsonl.gz", "not readable as UTF-8 text"),
                                           ("c.jsonl.zst", "not a readable .zst file")])
def test_corrupt_compressed_input_is_an_input_error(tmp_path, name, message):
    (tmp_path / name).write_bytes(b"this is not compressed at all\n" * 10)
    with pytest.raises(InputError, match=message):
        list(iter_pieces(resolve_inputs([tmp_path / name]), InputConfig(), 0.1))


def test_lone_surrogates_in_json_are_replaced_and_pairs_kept(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"id": "a", "text": "lone \\ud800 here"}\n{"id": "b", "text": "pair \\ud83d\\ude00"}\n')
    texts = [p.text for p in iter_pieces(resolve_inputs([path]), InputConfig(), 0.0)]
    assert texts == ["lone ? here", "pair 😀"]
