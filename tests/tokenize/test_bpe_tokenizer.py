"""Byte-level BPE: training, the standalone tokenizer.json, exact round trips, shards of documents."""
from __future__ import annotations

import json

import numpy as np
import tokenizers

from mlscale.tokenize import TokenData, TokenizeConfig, load_tokenizer, tokenize_corpus, train_bpe
from mlscale.tokenize.split import split_of
from mlscale.tokenize.tokenizer import Tokenizer


def test_commoncrawl_jsonl_documents_round_trip_through_the_shards(tmp_path, cc_jsonl, cc_records):
    cfg = TokenizeConfig()
    cfg.split.val_fraction = 0.3
    m = tokenize_corpus([cc_jsonl], tmp_path / "tok", cfg, progress=False)
    td = TokenData(tmp_path / "tok")
    tok = td.tokenizer
    assert tok.kind == "bpe" and m["dtype"] == "uint16"
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    assert 259 < tok.vocab_size <= 8192
    assert td.tokenizer_fingerprint == tok.fingerprint

    for split in ("train", "val"):
        docs = [r["text"] for r in cc_records if split_of(r["id"], 0.3) == split]
        ids = np.asarray(td.split(split))
        assert len(ids) == td.tokens(split) and ids[-1] == tok.eos_id
        # a document = its tokens + eos, in input order; whole documents per split
        pieces = np.split(ids, np.flatnonzero(ids == tok.eos_id) + 1)[:-1]
        assert [tok.decode(p) for p in pieces] == docs
        assert td.documents(split) == len(docs)
        n_bytes = sum(len(d.encode("utf-8")) for d in docs)
        assert abs(td.bytes_per_token(split) - n_bytes / len(ids)) < 1e-12
    assert td.documents("train") > 0 and td.documents("val") > 0


def test_tokenizer_json_loads_standalone_and_round_trips_any_text(tmp_path, cc_jsonl):
    tokenize_corpus([cc_jsonl], tmp_path / "tok", TokenizeConfig(), progress=False)
    path = tmp_path / "tok" / "tokenizer.json"
    hf = tokenizers.Tokenizer.from_file(str(path))
    tok = load_tokenizer(path)
    for text in ["Hello, world!\r\n\tTabs  and  spaces \n", "naïve café — 東京 🙂 ∑x²",
                 "ends with spaces   ", ""]:
        assert hf.decode(hf.encode(text).ids) == text
        assert tok.decode(tok.encode(text)) == text
        assert tok.encode(text) == hf.encode(text, add_special_tokens=False).ids
    # the spelling of a special token inside a document is text, not a document end
    ids = tok.encode("a <|eos|> b")
    assert tok.eos_id not in ids and tok.decode(ids) == "a <|eos|> b"
    assert json.loads(path.read_text())["model"]["type"] == "BPE"


def test_training_is_deterministic_and_respects_vocab_size(cc_records):
    texts = [r["text"] for r in cc_records]
    a = train_bpe(texts, 600, progress=False)
    b = train_bpe(texts, 600, progress=False)
    assert a.to_str() == b.to_str()
    assert a.get_vocab_size() == 600
    assert [a.id_to_token(i) for i in range(3)] == ["<|bos|>", "<|eos|>", "<|pad|>"]
    # the 256 byte symbols are always there: nothing is ever unknown
    tok = Tokenizer(a)
    assert tok.decode(tok.encode("\x00\x7f ☃")) == "\x00\x7f ☃"


def test_foreign_gpt2_style_tokenizer_gets_its_roles(tmp_path, cc_records):
    hf = train_bpe([r["text"] for r in cc_records], 300, progress=False)
    spec = json.loads(hf.to_str())
    for t in spec["added_tokens"]:  # rename to GPT-2's single special token
        t["content"] = {"<|bos|>": "<|endoftext|>", "<|eos|>": "<unused0>", "<|pad|>": "<unused1>"}[t["content"]]
    vocab = spec["model"]["vocab"]
    for old, new in (("<|bos|>", "<|endoftext|>"), ("<|eos|>", "<unused0>"), ("<|pad|>", "<unused1>")):
        vocab[new] = vocab.pop(old)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    tok = load_tokenizer(path)
    assert tok.eos_id == tok.bos_id == tok.pad_id == 0


def test_train_bytes_caps_the_tokenizer_training_text(cc_jsonl, cc_records):
    from tqdm import tqdm

    from mlscale.tokenize.sources import resolve_inputs
    from mlscale.tokenize.stage import _train_texts

    cfg = TokenizeConfig()
    cfg.split.val_fraction = 0.3
    train = [r["text"] for r in cc_records if split_of(r["id"], 0.3) == "train"]
    sizes = np.cumsum([len(t.encode("utf-8")) for t in train])
    cfg.tokenizer.train_bytes = int(sizes[2]) - 1  # reached inside the third train document
    got = list(_train_texts(resolve_inputs([cc_jsonl]), cfg, tqdm(disable=True)))
    assert got == train[:3]
    cfg.tokenizer.train_bytes = 0
    assert list(_train_texts(resolve_inputs([cc_jsonl]), cfg, tqdm(disable=True))) == train
