"""`mlscale evaluate` and `mlscale generate` on a tiny trained run."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mlscale.cli import main
from mlscale.config import from_dict, load_config
from mlscale.train.config import PretrainConfig
from sample_data import shakespeare_text


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster on one thread, and a shared CI machine stays responsive."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread) -> tuple[Path, Path]:
    from mlscale.tokenize import TokenizeConfig, tokenize_corpus
    from mlscale.train.loop import pretrain

    root = tmp_path_factory.mktemp("evalrun")
    src = root / "text.txt"
    src.write_text(shakespeare_text()[:30_000])
    tcfg = load_config(TokenizeConfig, overrides=["--tokenizer.kind=char", "--shards.workers=1"])
    tokenize_corpus([src], root / "tok", tcfg, progress=False)
    cfg = from_dict(PretrainConfig, {
        "model": {"n_layer": 2, "n_head": 2, "d_model": 32, "seq_len": 32},
        "train": {"batch_size": 8, "max_steps": 25, "warmup_steps": 3, "lr": 1e-2, "min_lr": 1e-3,
                  "eval_every": 0, "eval_batches": 2, "checkpoint_every": 0, "device": "cpu",
                  "log_every": 10}})
    pretrain(cfg, root / "tok", root / "run")
    return root / "run", root / "tok"


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_evaluate_prints_json_with_the_figures(run, capsys):
    run_dir, tok = run
    rc, out, _ = run_cli(["evaluate", str(run_dir)], capsys)
    assert rc == 0
    res = json.loads(out)
    assert {"loss", "perplexity", "bits_per_byte", "tokens", "step", "split"} <= set(res)
    assert res["step"] == 25 and res["split"] == "val"
    assert res["tokens"] == json.loads((tok / "manifest.json").read_text())["splits"]["val"]["tokens"] - 1
    assert res["perplexity"] == pytest.approx(math.exp(res["loss"]))
    # ASCII text with a char tokenizer: one byte per token, so bits per byte = loss in bits
    assert res["bits_per_byte"] == pytest.approx(res["loss"] / math.log(2))
    # trained: well below the uniform guess over the vocabulary, above zero
    vocab = json.loads((run_dir / "config.json").read_text())["model"]["vocab_size"]
    assert 0.5 < res["loss"] < math.log(vocab) - 0.5


def test_evaluate_on_a_text_file_and_bad_data(run, tmp_path, capsys):
    run_dir, tok = run
    text = tmp_path / "t.txt"
    text.write_text(shakespeare_text()[30_000:31_000])
    rc, out, _ = run_cli(["evaluate", str(run_dir), "--data", str(text)], capsys)
    res = json.loads(out)
    assert rc == 0 and res["tokens"] == 999 and res["bytes_per_token"] == pytest.approx(1.0)
    rc, _, err = run_cli(["evaluate", str(run_dir), "--data", str(tmp_path / "nope")], capsys)
    assert rc == 2 and "no such file" in err
    rc, _, err = run_cli(["evaluate", str(tmp_path)], capsys)
    assert rc == 2 and "not a mlscale run" in err


def test_generate_prints_text_reproducibly(run, capsys):
    run_dir, _ = run
    argv = ["generate", str(run_dir), "--prompt", "ROMEO:", "--max-new-tokens", "48", "--seed", "3"]
    rc, out1, _ = run_cli(argv, capsys)
    assert rc == 0 and out1.startswith("ROMEO:")
    assert len(out1.strip()) > len("ROMEO:") + 24  # char tokens: ~48 new characters
    assert run_cli(argv, capsys)[1] == out1  # the same seed, the same text
    # two samples in one batch: different from each other (beyond the context of 32: the
    # window slides), each a continuation of the prompt
    rc, two, _ = run_cli(argv[:-1] + ["4", "--num-samples", "2", "--top-k", "10", "--top-p", "0.9"], capsys)
    first, second = two.split("-" * 40 + "\n")[:2]
    assert rc == 0 and first.startswith("ROMEO:") and second.startswith("ROMEO:") and first != second
    rc, _, err = run_cli(argv + ["--top-p", "1.5"], capsys)
    assert rc == 2 and "--top-p" in err
