"""`mlscale tokenize` on the command line: flags, config files, overrides, exit codes."""
from __future__ import annotations

from mlscale.cli import main
from mlscale.tokenize import TokenData


def test_flags_config_file_and_overrides(tmp_path, capsys):
    text = tmp_path / "play.txt"
    body = "ROMEO:\nBut soft, what light through yonder window breaks?\n" * 50
    text.write_text(body)
    n_train = int(len(body) * 0.8)
    conf = tmp_path / "tok.toml"
    conf.write_text("[tokenizer]\nkind = \"bpe\"\n[split]\nval_fraction = 0.3\n")
    rc = main(["tokenize", str(text), "--out", str(tmp_path / "tok"), "--config", str(conf),
               "--tokenizer", "char", "--val-fraction", "0.2", "--shards.shard_tokens=2048", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "tokenizer: char, vocab" in out and f"train: {n_train:,} tokens" in out
    td = TokenData(tmp_path / "tok")
    cfg = td.manifest["config"]
    # flags beat the file; --section.key beats both
    assert cfg["tokenizer"]["kind"] == "char" and cfg["split"]["val_fraction"] == 0.2
    assert cfg["shards"] == {"shard_tokens": 2048}
    assert (td.tokens("train"), td.tokens("val")) == (n_train, len(body) - n_train)
    # rerun: a no-op that prints the same summary
    assert main(["tokenize", str(text), "--out", str(tmp_path / "tok"), "--tokenizer", "char",
                 "--val-fraction", "0.2", "--shards.shard_tokens=2048", "--quiet", "--workers", "3"]) == 0


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["tokenize", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "input not found" in capsys.readouterr().err
    text = tmp_path / "a.txt"
    text.write_text("hello\n")
    assert main(["tokenize", str(text), "--out", str(tmp_path / "o"), "--tokenizer.vocab_sise=300"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'tokenizer.vocab_sise'" in err and "tokenizer.vocab_size" in err
    assert main(["tokenize", str(text), "--out", str(tmp_path / "o"), "--vocab-size", "100"]) == 2
    assert "tokenizer.vocab_size: 100 is below the minimum 259" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
