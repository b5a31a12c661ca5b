"""`mlscale export` and export_hf: the directory transformers loads, offline, as it is."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mlscale.cli import main
from mlscale.config import to_dict
from mlscale.errors import ArtifactError
from mlscale.export.hf import export_hf
from mlscale.model.llama import Llama, LlamaConfig
from mlscale.model.llama.hf import hf_name
from mlscale.model.registry import get_family
from mlscale.tokenize.tokenizer import load_tokenizer, train_bpe
from sample_data import seed_tasks_text, shakespeare_text


@pytest.fixture(scope="module")
def bpe_file(tmp_path_factory) -> Path:
    text = shakespeare_text()[:60_000]
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    train_bpe((text[i:i + 2000] for i in range(0, len(text), 2000)), 400, progress=False).save(str(path))
    return path


def tiny_model(vocab_size: int, tie: bool = True, seq_len: int = 64) -> Llama:
    cfg = LlamaConfig(n_layer=2, n_head=4, n_kv_head=2, d_model=32, seq_len=seq_len,
                      vocab_size=vocab_size, tie_embeddings=tie)
    cfg.validate()
    torch.manual_seed(0)
    return get_family("llama").build(cfg).eval()


def make_run(run: Path, tokenizer_file: Path, steps: tuple[int, ...] = (1,)) -> Path:
    """A pretraining run directory (config, tokenizer, checkpoints) as `mlscale pretrain` lays it out."""
    from mlscale.train.checkpoint import save_checkpoint, tokenizer_fingerprint
    from mlscale.train.config import PretrainConfig
    from mlscale.train.optimizer import build_optimizer

    run.mkdir(parents=True)
    (run / "tokenizer.json").write_bytes(tokenizer_file.read_bytes())
    tok = load_tokenizer(run / "tokenizer.json")
    cfg = PretrainConfig(model=LlamaConfig(n_layer=2, n_head=4, n_kv_head=2, d_model=32, seq_len=128,
                                           vocab_size=tok.vocab_size))
    (run / "config.json").write_text(json.dumps(to_dict(cfg)))
    for step in steps:
        torch.manual_seed(step)
        model = get_family("llama").build(cfg.model)
        save_checkpoint(run, step, model, build_optimizer(model, cfg.train),
                        {"tokenizer_fingerprint": tokenizer_fingerprint(run / "tokenizer.json")},
                        to_dict(cfg), keep=len(steps))
    return run


def test_hf_names_are_a_renaming_of_ours():
    assert hf_name("embed.weight") == "model.embed_tokens.weight"
    assert hf_name("blocks.3.attn.q_proj.weight") == "model.layers.3.self_attn.q_proj.weight"
    assert hf_name("blocks.0.attn_norm.weight") == "model.layers.0.input_layernorm.weight"
    assert hf_name("blocks.0.mlp_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert hf_name("blocks.1.mlp.down_proj.weight") == "model.layers.1.mlp.down_proj.weight"
    assert hf_name("norm.weight") == "model.norm.weight"
    assert hf_name("lm_head.weight") == "lm_head.weight"


@pytest.mark.parametrize("tie", [True, False])
def test_export_writes_config_weights_and_a_tokenizer_transformers_loads(tmp_path, bpe_file, tie):
    from transformers import AutoTokenizer

    tok = load_tokenizer(bpe_file)
    model = tiny_model(tok.vocab_size, tie=tie)
    out = tmp_path / "hf"
    written = export_hf(model, out, bpe_file)
    assert {p.name for p in written} == {"config.json", "generation_config.json", "model.safetensors",
                                          "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    assert all(p.is_file() for p in written)
    assert not list(out.glob(".*tmp"))  # no temporary files left behind

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]) == (32, model.cfg.ffn_hidden, 2)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (4, 2)
    assert cfg["vocab_size"] == tok.vocab_size and cfg["max_position_embeddings"] == 64
    assert cfg["rms_norm_eps"] == model.cfg.norm_eps and cfg["rope_theta"] == model.cfg.rope_theta
    assert cfg["tie_word_embeddings"] is tie and cfg["torch_dtype"] == "float32"
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (tok.bos_id, tok.eos_id, tok.pad_id)

    weights = load_file(out / "model.safetensors")
    assert ("lm_head.weight" in weights) == (not tie)
    assert torch.equal(weights["model.layers.1.self_attn.k_proj.weight"], model.blocks[1].attn.k_proj.weight)
    assert sum(w.numel() for w in weights.values()) == model.num_params()

    hf_tok = AutoTokenizer.from_pretrained(out)
    text = "KING RICHARD III:\nNow is the winter of our discontent"
    assert hf_tok(text)["input_ids"] == tok.encode(text)
    assert hf_tok.decode(tok.encode(text)) == text
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (tok.bos_id, tok.eos_id, tok.pad_id)


def test_export_in_bf16_halves_the_weights(tmp_path, bpe_file):
    from transformers import AutoModelForCausalLM

    model = tiny_model(load_tokenizer(bpe_file).vocab_size)
    export_hf(model, tmp_path, bpe_file, dtype="bf16")
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    weights = load_file(tmp_path / "model.safetensors")
    assert all(w.dtype == torch.bfloat16 for w in weights.values())
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.dtype == torch.bfloat16
    torch.testing.assert_close(loaded.model.embed_tokens.weight.float(), model.embed.weight, rtol=1e-2, atol=1e-3)
    with pytest.raises(ArtifactError, match="dtype"):
        export_hf(model, tmp_path / "x", None, dtype="int8")


def test_a_model_with_extra_weights_is_refused(tmp_path):
    model = tiny_model(50)
    model.blocks[0].attn.q_proj.register_parameter("lora_A", torch.nn.Parameter(torch.zeros(4, 32)))
    with pytest.raises(ArtifactError, match="merge"):
        export_hf(model, tmp_path / "out", None)
    assert not (tmp_path / "out").exists()


def test_the_export_command_writes_the_run_and_is_idempotent(tmp_path, bpe_file, capsys):
    from transformers import AutoModelForCausalLM

    from mlscale.train.checkpoint import load_run

    run = make_run(tmp_path / "run", bpe_file, steps=(1, 2))
    out = tmp_path / "hf"
    assert main(["export", str(run), "--format", "hf", "--out", str(out)]) == 0
    assert "step 2" in capsys.readouterr().out
    ours = load_run(run).model
    theirs = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, ours.cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids)[0], rtol=0, atol=1e-5)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["step"] == 2 and "model.safetensors" in manifest["files"]

    # the same export again: nothing to do; another checkpoint on the same DIR: refused
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(["export", str(run), "--out", str(out), "--step", "1"]) == 2
    assert "step" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(out), "--step", "1", "--force"]) == 0
    assert json.loads((out / "manifest.json").read_text())["step"] == 1


def test_export_errors_are_one_line_messages(tmp_path, bpe_file, capsys):
    run = make_run(tmp_path / "run", bpe_file)
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "o1")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(tmp_path / "o2"), "--merge"]) == 2
    assert "--merge applies to fine-tuned runs" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(tmp_path / "o3"), "--step", "7"]) == 2
    assert "no checkpoint of step 7" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["export", str(run), "--out", str(busy)]) == 2
    assert (busy / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_merge_exports_a_lora_finetuned_run(tmp_path, capsys):
    """--merge folds the adapter in: transformers computes the fine-tuned model's logits."""
    import string

    from transformers import AutoModelForCausalLM

    from mlscale.finetune.merge import load_finetuned
    from mlscale.tokenize.char import build_char_tokenizer
    from mlscale.train.checkpoint import load_run

    char = tmp_path / "char.json"
    build_char_tokenizer(string.printable).save(str(char))
    base = make_run(tmp_path / "base", char)
    records = []
    for line in seed_tasks_text().splitlines()[:30]:
        task = json.loads(line)
        inst = task["instances"][0]
        records.append({"instruction": task["instruction"][:60], "input": inst["input"][:20],
                        "output": inst["output"][:30]})
    data = tmp_path / "alpaca.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    ft = tmp_path / "ft"
    assert main(["finetune", str(base), "--data", str(data), "--out", str(ft), "--method", "lora",
                 "--train.max_steps=3", "--train.warmup_steps=1", "--train.batch_size=2",
                 "--train.eval_every=0", "--train.device=cpu", "--train.lr=5e-2", "--data.seq_len=128",
                 "--lora.r=2", "--lora.alpha=4"]) == 0
    capsys.readouterr()
    out = tmp_path / "hf"
    assert main(["export", str(ft), "--out", str(out)]) == 2
    assert "--merge" in capsys.readouterr().err
    assert main(["export", str(ft), "--out", str(out), "--merge"]) == 0
    merged = load_finetuned(ft).model
    theirs = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, merged.cfg.vocab_size, (1, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = merged(ids)[0]
        torch.testing.assert_close(theirs(ids).logits, expected, rtol=0, atol=1e-5)
        # and the adapter did change the model: the export is not just the base
        assert (load_run(base).model(ids)[0] - expected).abs().max() > 1e-5
