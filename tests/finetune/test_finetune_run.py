"""`mlscale finetune` end to end on a tiny base: LoRA/QLoRA/full SFT, DPO, resume, reload."""
import json

import numpy as np
import pytest
import torch

from mlscale.cli import main
from mlscale.config import from_dict, merge
from mlscale.errors import ArtifactError, InputError
from mlscale.finetune.base import load_base
from mlscale.finetune.config import FINETUNE_DEFAULTS, FinetuneConfig
from mlscale.finetune.loop import finetune
from mlscale.finetune.merge import load_finetuned, merge_into_base
from mlscale.model.lora import lora_layers
from mlscale.train.metrics import read_metrics

from ft_helpers import write_jsonl

FAST = {"train": {"max_steps": 6, "warmup_steps": 1, "batch_size": 4, "eval_every": 0, "device": "cpu",
                  "lr": 1e-2, "min_lr": 1e-3, "log_every": 100},
        "lora": {"r": 4, "alpha": 8}, "data": {"seq_len": 192}}


def config(**over) -> FinetuneConfig:
    return from_dict(FinetuneConfig, merge(merge(FINETUNE_DEFAULTS, FAST), over))


def test_lora_sft_via_the_cli_writes_a_peft_adapter_and_lowers_the_loss(tmp_path, base_run, alpaca_file, capsys):
    out = tmp_path / "ft"
    rc = main(["finetune", str(base_run), "--data", str(alpaca_file), "--out", str(out), "--method", "lora",
               "--train.max_steps=25", "--train.warmup_steps=2", "--train.lr=1e-2", "--train.min_lr=1e-3",
               "--train.batch_size=4", "--train.eval_every=0", "--train.device=cpu", "--data.seq_len=192",
               "--lora.r=4", "--lora.alpha=8", "--lora.targets=q,v,up,down"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "step 25/25 | loss" in printed and "trainable" in printed
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    # r * (in + out) for q (32->32), v (32->16), up (32->96), down (96->32), in 2 layers
    assert summary["trainable_parameters"] == 2 * 4 * ((32 + 32) + (32 + 16) + (32 + 96) + (96 + 32))
    assert summary["trainable_share"] == summary["trainable_parameters"] / summary["total_parameters"] < 0.2
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["target_modules"] == ["q_proj", "v_proj", "up_proj", "down_proj"] and adapter["r"] == 4
    assert json.loads((out / "adapter" / "template.json").read_text())["text"].startswith("<|bos|>")
    # the held-out instruction loss went down from the base model's
    assert summary["final_val_loss"] < summary["initial_val_loss"] - 0.3, summary
    steps = [r for r in read_metrics(out / "metrics.jsonl") if "train_loss" in r]
    assert len(steps) == 25 and np.mean([r["train_loss"] for r in steps[-5:]]) < steps[0]["train_loss"]
    # a rerun of the finished run is a no-op; other settings on the same directory are refused
    assert main(["finetune", str(base_run), "--data", str(alpaca_file), "--out", str(out), "--method", "lora",
                 "--train.max_steps=25", "--train.warmup_steps=2", "--train.lr=1e-2", "--train.min_lr=1e-3",
                 "--train.batch_size=4", "--train.eval_every=0", "--train.device=cpu", "--data.seq_len=192",
                 "--lora.r=4", "--lora.alpha=8", "--lora.targets=q,v,up,down"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(["finetune", str(base_run), "--data", str(alpaca_file), "--out", str(out),
                 "--lora.r=8"]) == 2
    assert "lora.r" in capsys.readouterr().err


def test_the_reloaded_finetuned_model_is_the_trained_one(tmp_path, base_run, alpaca_file):
    out = tmp_path / "ft"
    finetune(config(), base_run, alpaca_file, out)
    merged = load_finetuned(out)
    unmerged = load_finetuned(out, merge=False)
    assert not list(lora_layers(merged.model)) and len(list(lora_layers(unmerged.model))) == 2 * 7
    assert merged.config.model.seq_len == 256 and merged.step == 6 and merged.method == "lora"
    base = load_base(base_run)  # the untouched base
    x = torch.tensor([merged.prompt_ids("Say hi.")])
    with torch.no_grad():
        a, b, c = merged.model(x)[0], unmerged.model(x)[0], base.model(x)[0]
    assert torch.allclose(a, b, atol=1e-5)
    assert (a - c).abs().max() > 1e-3
    tok = merged.tokenizer
    assert tok.decode(x[0].tolist(), skip_special_tokens=False) == \
        "<|bos|>### Instruction:\nSay hi.\n\n### Response:\n"
    # the merged export (what `mlscale export FT --format hf --merge` writes) loads in
    # transformers and gives the fine-tuned logits
    from transformers import LlamaForCausalLM

    from mlscale.export.hf import export_hf

    exported = merge_into_base(out)
    export_hf(exported.model, tmp_path / "hf", exported.run_dir / "tokenizer.json")
    hf = LlamaForCausalLM.from_pretrained(str(tmp_path / "hf"), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        assert (hf(x).logits - b).abs().max() < 1e-4


def test_an_interrupted_run_resumes_to_the_same_adapter(tmp_path, base_run, alpaca_file, monkeypatch):
    import mlscale.train.trainer as loop

    cfg = config(train={"max_steps": 6, "checkpoint_every": 2}, lora={"dropout": 0.1})
    finetune(cfg, base_run, alpaca_file, tmp_path / "straight")

    real = loop.lr_at

    def crash_at_step_5(step, t):
        if step == 4:
            raise KeyboardInterrupt
        return real(step, t)

    monkeypatch.setattr(loop, "lr_at", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, base_run, alpaca_file, tmp_path / "resumed")
    # pretraining's checkpoint format: the checkpoints of steps 2 and 4, nothing after them
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == \
        ["step-00000002", "step-00000004"]
    assert (tmp_path / "resumed" / "checkpoints" / "step-00000004" / "state.json").exists()
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    monkeypatch.setattr(loop, "lr_at", real)
    finetune(cfg, base_run, alpaca_file, tmp_path / "resumed")
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl") if "train_loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("method", ["qlora", "full"])
def test_qlora_and_full_fine_tuning_run_and_reload(tmp_path, base_run, alpaca_file, method):
    out = tmp_path / method
    summary = finetune(config(method=method, train={"max_steps": 3}), base_run, alpaca_file, out)
    assert summary["method"] == method
    if method == "full":
        assert summary["trainable_share"] == 1.0 and (out / "model.safetensors").exists()
    else:
        assert summary["trainable_share"] < 0.5 and (out / "adapter" / "adapter_model.safetensors").exists()
    loaded = load_finetuned(out)
    x = torch.tensor([loaded.prompt_ids("Name a colour.")])
    with torch.no_grad():
        assert torch.isfinite(loaded.model(x)[0]).all()


def test_dpo_prefers_the_chosen_answers_and_caches_the_reference(tmp_path, base_run, seed_tasks, monkeypatch):
    # preference pairs from the real seed tasks: the task's own answer is chosen, the
    # answer of another task rejected; evaluated on the same pairs after 8 epochs
    tasks = [json.loads(line) for line in seed_tasks.read_text().splitlines()][:8]
    recs = [{"prompt": t["instruction"][:80], "chosen": t["instances"][0]["output"][:60],
             "rejected": tasks[(i + 3) % len(tasks)]["instances"][0]["output"][:60]} for i, t in enumerate(tasks)]
    data = write_jsonl(tmp_path / "pref.jsonl", recs)
    cfg = config(objective="dpo", train={"max_steps": 16, "lr": 5e-3, "min_lr": 5e-4},
                 data={"val": str(data)})
    out = tmp_path / "dpo"
    summary = finetune(cfg, base_run, data, out)
    assert (out / "ref_logps.safetensors").exists()
    assert cfg.dpo.beta == 0.1
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "reward_margin" in r]
    assert len(rows) == 16 and rows[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)  # policy == reference
    assert summary["initial_val_loss"] == pytest.approx(np.log(2), abs=1e-5)
    assert summary["final_val_loss"] < 0.65
    assert summary["final_val_reward_margin"] > 0.1 and summary["final_val_reward_accuracy"] >= 0.75

    # rerunning after an interruption reuses the cached reference, never the trained policy
    import mlscale.finetune.dpo as dpo

    (out / "manifest.json").unlink()
    monkeypatch.setattr(dpo, "reference_logps", lambda *a, **k: pytest.fail("reference recomputed"))
    finetune(cfg, base_run, data, out)


def test_bad_inputs_fail_before_any_output(tmp_path, base_run, alpaca_file):
    with pytest.raises(InputError, match="data file not found"):
        finetune(config(), base_run, tmp_path / "missing.jsonl", tmp_path / "a")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match="empty.jsonl is empty"):
        finetune(config(), base_run, empty, tmp_path / "b")
    with pytest.raises(InputError, match="base model not found"):
        finetune(config(), tmp_path / "nobase", alpaca_file, tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "something").write_text("x")
    with pytest.raises(ArtifactError, match="not a mlscale finetune output"):
        finetune(config(), base_run, alpaca_file, tmp_path / "d")


def test_a_hugging_face_llama_directory_is_a_base_too(tmp_path, alpaca_file):
    from transformers import LlamaConfig, LlamaForCausalLM

    from ft_helpers import write_char_tokenizer
    from mlscale.tokenize import load_tokenizer

    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    write_char_tokenizer(hf_dir / "tokenizer.json")
    vocab = load_tokenizer(hf_dir / "tokenizer.json").vocab_size
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                                      tie_word_embeddings=False)).eval()
    hf.save_pretrained(hf_dir, safe_serialization=True)
    base = load_base(hf_dir)
    assert base.kind == "hf" and base.model_config.ffn_hidden == 64 and not base.model_config.tie_embeddings
    x = torch.randint(0, vocab, (1, 20))
    with torch.no_grad():
        assert torch.allclose(base.model(x)[0], hf(x).logits, atol=1e-5)
    summary = finetune(config(train={"max_steps": 2}), hf_dir, alpaca_file, tmp_path / "ft")
    assert summary["steps"] == 2
    assert load_finetuned(tmp_path / "ft").model.cfg.d_model == 32


def test_evaluate_and_generate_work_on_a_finetuned_run_through_the_load_run_hook(tmp_path, base_run,
                                                                                  alpaca_file, monkeypatch):
    """The one-line hook the lead wires into train/checkpoint.load_run:
    `if is_finetuned(run_dir): return load_finetuned(run_dir, device=device)`."""
    import mlscale.train.checkpoint as checkpoint
    from mlscale.evaluate.command import evaluate_run
    from mlscale.evaluate.generate_command import generate_text
    from mlscale.finetune.merge import is_finetuned

    out = tmp_path / "ft"
    finetune(config(), base_run, alpaca_file, out)
    real = checkpoint.load_run

    def hooked(run_dir, step=None, device="cpu"):
        if is_finetuned(run_dir):
            return load_finetuned(run_dir, device=device)
        return real(run_dir, step=step, device=device)

    monkeypatch.setattr(checkpoint, "load_run", hooked)
    text = tmp_path / "answers.txt"
    text.write_text("\n".join(json.loads(line)["output"] for line in alpaca_file.read_text().splitlines()))
    tuned = evaluate_run(out, text, progress=False)
    base = evaluate_run(base_run, text, progress=False)
    assert np.isfinite(tuned["loss"]) and tuned["loss"] != base["loss"]
    (sample,) = generate_text(out, "Say hi.", max_new_tokens=8, temperature=0)
    assert sample.startswith("Say hi.")
