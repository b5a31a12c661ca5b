"""Helpers of the fine-tuning tests: tiny base runs, tokenizers and JSONL files."""
import json
import string
from pathlib import Path

import torch

from mlscale.config import to_dict
from mlscale.model.llama import LlamaConfig
from mlscale.model.registry import get_family
from mlscale.tokenize.char import build_char_tokenizer
from mlscale.train.checkpoint import save_checkpoint, tokenizer_fingerprint
from mlscale.train.config import PretrainConfig
from mlscale.train.optimizer import build_optimizer
from sample_data import shakespeare_text


def write_char_tokenizer(path: Path) -> None:
    """A char tokenizer over printable ASCII (plus bos/eos/pad/unk)."""
    build_char_tokenizer(string.printable).save(str(path))


def make_run(run: Path, seq_len: int = 256, seed: int = 0, pretrain_steps: int = 0) -> Path:
    """An mlscale pretrain run directory with one checkpoint of a tiny Llama.

    With `pretrain_steps`, the model first learns a little of tiny Shakespeare (full AdamW
    on random 128-character windows), so it is a base with something to adapt rather than
    a random one whose near-uniform output LoRA cannot move.
    """
    from mlscale.tokenize import load_tokenizer

    run.mkdir(parents=True, exist_ok=True)
    write_char_tokenizer(run / "tokenizer.json")
    tok = load_tokenizer(run / "tokenizer.json")
    cfg = PretrainConfig(model=LlamaConfig(n_layer=2, n_head=4, n_kv_head=2, d_model=32, seq_len=seq_len,
                                           vocab_size=tok.vocab_size))
    cfg.train.weight_decay = 0.0
    torch.manual_seed(seed)
    model = get_family("llama").build(cfg.model)
    optimizer = build_optimizer(model, cfg.train)
    if pretrain_steps:
        ids = torch.tensor(tok.encode(shakespeare_text()[:300_000]))
        g = torch.Generator().manual_seed(seed)
        for group in optimizer.param_groups:
            group["lr"] = 1e-2
        for _ in range(pretrain_steps):
            ix = torch.randint(0, len(ids) - 129, (8,), generator=g).tolist()
            x = torch.stack([ids[i:i + 128] for i in ix])
            y = torch.stack([ids[i + 1:i + 129] for i in ix])
            model(x, y)[1].backward()
            optimizer.step()
            optimizer.zero_grad()
    (run / "config.json").write_text(json.dumps(to_dict(cfg)))
    save_checkpoint(run, max(pretrain_steps, 1), model, optimizer,
                    {"tokenizer_fingerprint": tokenizer_fingerprint(run / "tokenizer.json")},
                    to_dict(cfg), keep=1)
    return run


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
