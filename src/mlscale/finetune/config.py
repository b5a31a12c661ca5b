"""Settings of `mlscale finetune`: method, objective, LoRA, data and template, DPO, training."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlscale.config import option
from mlscale.errors import ConfigError
from mlscale.model.lora_config import LoraConfig
from mlscale.train.config import ParallelConfig, TrainConfig
from mlscale.train.data import data_config_class, register_data_kind

METHODS = ("full", "lora", "qlora")
OBJECTIVES = ("sft", "dpo")
FORMATS = ("auto", "alpaca", "self_instruct", "chat", "prompt_completion", "preference")

RUN_INFO = "finetune.json"  # FT/finetune.json: what a fine-tuned run is and where its base is
PROMPT, RESPONSE = "{prompt}", "{response}"
BOS_MARK, EOS_MARK = "<|bos|>", "<|eos|>"


@dataclass
class TemplateConfig:
    """How a (prompt, response) turn becomes text. `<|bos|>` / `<|eos|>` stand for the
    tokenizer's begin/end token ids whatever they are spelled (`<s>`, `<|endoftext|>`...)."""

    text: str = option(f"{BOS_MARK}### Instruction:\n{PROMPT}\n\n### Response:\n{RESPONSE}{EOS_MARK}",
                       "one turn: the prompt goes in {prompt}, the answer in {response}; everything "
                       "before {response} is masked out of the SFT loss")
    input: str = option("{instruction}\n\n### Input:\n{input}",
                        "how an instruction and a non-empty input form the prompt (Alpaca)")
    system: str = option("{system}\n\n{instruction}",
                         "how a chat's system message is put before the first user message")

    def validate(self) -> None:
        for key, text, slots in (("template.text", self.text, (PROMPT, RESPONSE)),
                                 ("template.input", self.input, ("{instruction}", "{input}")),
                                 ("template.system", self.system, ("{system}", "{instruction}"))):
            for slot in slots:
                n = text.count(slot)
                if n != 1:
                    what = "the answer" if slot == RESPONSE else "the " + slot.strip("{}")
                    raise ConfigError(f"{key}: the template must contain {slot} exactly once "
                                      f"(for {what}); it has it {n} times: {text!r}")
        if self.text.index(PROMPT) > self.text.index(RESPONSE):
            raise ConfigError(f"template.text: {PROMPT} must come before {RESPONSE}")


@dataclass
class DataConfig:
    """`data` when data.kind = records: JSONL instruction, chat or preference records."""

    kind: str = option("records", "what --data holds (records: a JSONL file of instructions, "
                       "chats or preference pairs)")
    format: str = option("auto", "record format; auto detects it from the first record's fields",
                         choices=FORMATS)
    val: str = option("", "held-out file in the same format; empty = split data.val_fraction off --data")
    val_fraction: float = option(0.1, "share of examples held out for validation when data.val is empty",
                                 min=0.0, max=0.5)
    seq_len: int = option(0, "tokens per training row; 0 = the base model's context length", min=0)
    pack: bool = option(True, "SFT: pack several examples into one row (segment ids keep them apart)")


register_data_kind("records", DataConfig)


@dataclass
class DPOConfig:
    beta: float = option(0.1, "DPO temperature: strength of the KL pull towards the reference", min=0.0)


@dataclass
class FinetuneConfig:
    """Everything `mlscale finetune` is configured by; saved as FT/config.json."""

    method: str = option("lora", "full: all weights; lora: adapters on a frozen base; qlora: "
                         "adapters on a frozen NF4 4-bit base", choices=METHODS)
    objective: str = option("sft", "sft: instruction tuning (prompt masked); dpo: preference tuning",
                            choices=OBJECTIVES)
    lora: LoraConfig = option(default_factory=LoraConfig, help="LoRA adapters")
    template: TemplateConfig = option(default_factory=TemplateConfig, help="prompt template")
    data: Any = option(default_factory=DataConfig, help="instruction data",
                       select=("kind", data_config_class))
    dpo: DPOConfig = option(default_factory=DPOConfig, help="preference tuning")
    train: TrainConfig = option(default_factory=TrainConfig, help="optimisation (as pretrain)")
    parallel: ParallelConfig = option(default_factory=ParallelConfig,
                                      help="data parallelism across torchrun ranks (as pretrain)")

    def validate(self) -> None:
        self.lora.validate()
        self.template.validate()
        self.train.validate()
        if self.data.format == "preference" and self.objective != "dpo":
            raise ConfigError("data.format=preference needs --objective dpo")


# Fine-tuning starts from a trained model: a short run, a gentler rate, no weight decay on
# adapters. These replace TrainConfig's pretraining defaults; files and flags override them.
FINETUNE_DEFAULTS = {
    "train": {"max_steps": 200, "lr": 2e-4, "min_lr": 2e-5, "warmup_steps": 10, "weight_decay": 0.0,
              "batch_size": 8, "eval_every": 50, "eval_batches": 1000, "checkpoint_every": 0},
}
