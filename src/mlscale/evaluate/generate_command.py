"""Sample text from a trained run: KV-cached decoding with temperature, top-k and top-p.

The prompt is encoded with the run's tokenizer and continued for --max-new-tokens tokens
(stopping early at the end-of-text token); the prompt and its continuation are printed.
--temperature 0 decodes greedily. The same --seed gives the same text.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN", help="run directory of `mlscale pretrain`")
    parser.add_argument("--prompt", default="", help="text to continue (default: start of a document)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="tokens to generate (default 256)")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="softmax temperature; 0 = greedy (default 0.8)")
    parser.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, help="nucleus sampling: the smallest set of tokens "
                                                     "whose probability reaches p")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--num-samples", type=int, default=1, help="independent samples to print")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"))


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from mlscale.errors import ConfigError

    if overrides:
        raise ConfigError(f"mlscale generate takes no config overrides (got {' '.join(overrides)})")
    for text in generate_text(args.run_dir, args.prompt, max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                              seed=args.seed, num_samples=args.num_samples, step=args.step,
                              device=args.device):
        print(text)
        if args.num_samples > 1:
            print("-" * 40)
    return 0


def generate_text(run_dir: Path, prompt: str, max_new_tokens: int = 256, temperature: float = 0.8,
                  top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                  num_samples: int = 1, step: int | None = None, device: str = "cpu") -> list[str]:
    """`num_samples` continuations of `prompt` (each printed with its prompt)."""
    import torch

    from mlscale.errors import ConfigError
    from mlscale.evaluate.sampling import check_sampling, generate
    from mlscale.train.checkpoint import load_run
    from mlscale.runtime.device import resolve_device

    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    check_sampling(temperature, top_k, top_p, flags=True)
    dev = resolve_device(device)
    loaded = load_run(run_dir, step=step, device=dev)
    tok = loaded.tokenizer
    # an empty prompt starts where documents start in training: right after an end-of-text
    if prompt and hasattr(loaded, "prompt_ids"):  # a fine-tuned run: its training template
        ids = loaded.prompt_ids(prompt)
    else:
        ids = tok.encode(prompt) if prompt else [tok.eos_id]
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    with torch.no_grad():
        out = generate(loaded.model, idx, max_new_tokens, temperature=temperature, top_k=top_k,
                       top_p=top_p, generator=gen, eos_id=tok.eos_id)
    texts = []
    for row in out.tolist():
        new = row[len(ids):]
        if tok.eos_id in new:
            new = new[:new.index(tok.eos_id)]
        texts.append(prompt + tok.decode(new))
    return texts
