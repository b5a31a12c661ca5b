"""The lm task: token shards with ids outside the vocabulary are refused before training,
naming the shard (one line, no traceback), by pretrain and by evaluate alike."""
import numpy as np

from mlscale.cli import main
from mlscale.config import load_config
from mlscale.tokenize import TokenizeConfig, tokenize_corpus
from sample_data import shakespeare_text


def test_a_shard_with_ids_outside_the_vocabulary_is_refused_by_name(tmp_path, capsys):
    (tmp_path / "text.txt").write_text(shakespeare_text()[:20_000])
    cfg = load_config(TokenizeConfig, overrides=["--tokenizer.kind=char", "--shards.workers=1"])
    tokenize_corpus([tmp_path / "text.txt"], tmp_path / "tok", cfg, progress=False)
    tiny = ["--model.n_layer=1", "--model.n_head=2", "--model.d_model=16", "--model.seq_len=16",
            "--train.max_steps=2", "--train.warmup_steps=1", "--train.device=cpu"]
    assert main(["pretrain", "--data", str(tmp_path / "tok"), "--out", str(tmp_path / "run"), *tiny]) == 0
    capsys.readouterr()
    shard = sorted((tmp_path / "tok").glob("train-*.bin"))[0]
    ids = np.memmap(shard, dtype=np.uint16, mode="r+")
    ids[len(ids) // 2] = 60_000  # far outside the char vocabulary
    ids.flush()
    del ids
    for args in (["pretrain", "--data", str(tmp_path / "tok"), "--out", str(tmp_path / "run2"), *tiny],
                 ["evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "tok"), "--split", "train"]):
        assert main(args) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(shard) in err[0] and "token id 60000" in err[0], err
    assert not (tmp_path / "run2" / "checkpoints").exists()
