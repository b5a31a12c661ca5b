"""The character tokenizer against nanoGPT's char model and against `tokenizers` itself."""
from __future__ import annotations

import numpy as np
import tokenizers

from mlscale.tokenize import TokenData, TokenizeConfig, load_tokenizer, tokenize_corpus
from mlscale.tokenize.char import CharTable, build_char_tokenizer


def char_cfg() -> TokenizeConfig:
    cfg = TokenizeConfig()
    cfg.tokenizer.kind = "char"
    return cfg


def test_tiny_shakespeare_matches_nanogpt(tmp_path, shakespeare, shakespeare_text):
    m = tokenize_corpus([shakespeare], tmp_path / "tok", char_cfg(), progress=False)
    # nanoGPT data/shakespeare_char/prepare.py
    data = shakespeare_text
    chars = sorted(set(data))
    stoi = {c: i for i, c in enumerate(chars)}
    n = len(data)
    train_ids = np.array([stoi[c] for c in data[:int(n * 0.9)]], dtype=np.uint16)
    val_ids = np.array([stoi[c] for c in data[int(n * 0.9):]], dtype=np.uint16)
    assert len(chars) == 65
    assert (len(train_ids), len(val_ids)) == (1_003_854, 111_540)

    td = TokenData(tmp_path / "tok")
    assert m["dtype"] == "uint16" and td.vocab_size == 65 + 4
    assert td.special_ids == {"bos": 65, "eos": 66, "pad": 67, "unk": 68}
    assert td.tokens("train") == 1_003_854 and td.tokens("val") == 111_540
    assert td.documents("train") == 1 and td.documents("val") == 1
    assert td.bytes_per_token("train") == 1.0
    # exactly nanoGPT's train.bin / val.bin: same ids, no eos between the halves
    np.testing.assert_array_equal(np.asarray(td.split("train")), train_ids)
    np.testing.assert_array_equal(np.asarray(td.split("val")), val_ids)


def test_file_loads_on_its_own_and_round_trips(tmp_path, shakespeare, shakespeare_text):
    tokenize_corpus([shakespeare], tmp_path / "tok", char_cfg(), progress=False)
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    ours = load_tokenizer(tmp_path / "tok")
    assert ours.kind == "char" and ours.vocab_size == 69
    sample = shakespeare_text[:20_000]
    assert hf.encode(sample).ids == ours.encode(sample)
    assert hf.decode(hf.encode(sample).ids) == sample
    assert ours.decode(ours.encode(sample)) == sample


def test_vectorised_encoder_equals_wordlevel_model():
    hf = build_char_tokenizer("abc \n\r<|>eos")
    table = CharTable.from_tokenizer(hf)
    # unknown characters (é, emoji, tab) -> <|unk|>; special-token spellings are plain text
    text = "abc\r\n<|eos|> é🙂\tcab\n\n"
    hf.encode_special_tokens = True
    expected = hf.encode(text, add_special_tokens=False).ids
    np.testing.assert_array_equal(table.encode(text), expected)
    unk = hf.token_to_id("<|unk|>")
    assert expected.count(unk) == 3
    assert hf.token_to_id("<|eos|>") not in expected
    assert table.encode("").size == 0


def test_unknown_characters_encode_to_unk_and_decode_to_nothing(tmp_path, shakespeare):
    tokenize_corpus([shakespeare], tmp_path / "tok", char_cfg(), progress=False)
    tok = load_tokenizer(tmp_path / "tok")
    ids = tok.encode("Café")
    assert ids[-1] == tok.unk_id and len(ids) == 4
    assert tok.decode(ids) == "Caf"
