"""Helpers of the `mlscale run` tests: a tiny experiment (real documents, a slice of
Shakespeare, a 1-layer model), seconds end to end on a CPU."""
from __future__ import annotations

import gzip
from pathlib import Path

from mlscale.data import DATA_DIR

TINY_TOML = """\
name = "tiny"

[inputs]
documents = ["{documents}"]
text = ["shakespeare-slice.txt"]
passage_chars = 400

[curate]
workers = 1

[tokenize.tokenizer]
kind = "char"

[tokenize.shards]
workers = 1

[pretrain.model]
n_layer = 1
n_head = 2
d_model = 32
seq_len = 32

[pretrain.train]
batch_size = 8
max_steps = 40
warmup_steps = 5
eval_every = 10
eval_batches = 2
checkpoint_every = 10
log_every = 10

[evaluate]
max_tokens = 4000

[generate]
prompts = ["ROMEO:", "The "]
max_new_tokens = 24
num_samples = 1
"""


def write_tiny_experiment(folder: Path, **replace: str) -> Path:
    """Write the tiny experiment (and its Shakespeare slice) into `folder`; returns the file.

    `replace` maps a line of the TOML to the line that takes its place."""
    folder.mkdir(parents=True, exist_ok=True)
    text = gzip.open(DATA_DIR / "tinyshakespeare.txt.gz", "rt", encoding="utf-8").read()[:20_000]
    (folder / "shakespeare-slice.txt").write_text(text, encoding="utf-8")
    toml = TINY_TOML.format(documents=DATA_DIR / "ccnet-cc_en_head-0091.jsonl.zst")
    for old, new in replace.items():
        assert old in toml, old
        toml = toml.replace(old, new)
    path = folder / "tiny.toml"
    path.write_text(toml, encoding="utf-8")
    return path
