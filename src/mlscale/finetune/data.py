"""Instruction and preference data: record formats, the prompt template, loss masks, packing.

Formats (JSONL, one record a line; `data.format=auto` looks at the first record):
- alpaca:            {"instruction", "input" (optional), "output"}
- self_instruct:     {"instruction", "instances": [{"input", "output"}, ...]}: one example
                     per instance (the self-instruct seed tasks)
- chat:              {"messages": [{"role": "system"|"user"|"assistant", "content"}, ...]}
- prompt_completion: {"prompt", "completion"}
- preference (DPO):  {"prompt", "chosen", "rejected"}

Every record becomes turns of (prompt, response) text; the template renders each turn, the
prompt part is masked out of the SFT loss (label -100) and the response part (with the end
token after it) is learned. SFT rows are packed: several examples share a row of
`seq_len` tokens, kept apart by segment ids (block-diagonal attention) and position ids
that restart at 0 for each example.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from mlscale.errors import InputError
from mlscale.finetune.config import BOS_MARK, EOS_MARK, PROMPT, RESPONSE, TemplateConfig

IGNORE = -100


# --------------------------------------------------------------------------------- records
@dataclass
class Example:
    """One SFT example: the turns of a conversation and where it came from (file:line)."""

    turns: list[tuple[str, str]]
    source: str


@dataclass
class PreferencePair:
    """One DPO example: a prompt with a preferred and a dispreferred response."""

    prompt: str
    chosen: str
    rejected: str
    source: str


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-blank line; bad JSON names the file and line."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory: --data takes a JSONL file (one JSON object a line)")
    if not path.is_file():
        raise InputError(f"data file not found: {path}")
    n = 0
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{line_no}: not UTF-8 text ({e.reason} at byte {e.start} of "
                                 "the line); --data takes a JSONL file (one JSON object a line)") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{line_no}: not valid JSON ({e.msg}); one JSON object a line") from None
            if not isinstance(rec, dict):
                raise InputError(f"{path}:{line_no}: expected a JSON object, got {type(rec).__name__}")
            n += 1
            yield line_no, rec
    if n == 0:
        raise InputError(f"{path} is empty: it holds no records (one JSON object a line)")


def detect_format(rec: dict[str, Any], where: str) -> str:
    """The format a record's fields spell."""
    if "messages" in rec:
        return "chat"
    if "instances" in rec:
        return "self_instruct"
    if "chosen" in rec or "rejected" in rec:
        return "preference"
    if "instruction" in rec:
        return "alpaca"
    if "prompt" in rec:
        return "prompt_completion"
    raise InputError(f"{where}: cannot tell the format from fields {sorted(rec)}; expected "
                     "instruction/input/output, instruction/instances, messages, "
                     "prompt/completion or prompt/chosen/rejected (or set data.format)")


def _text(rec: dict[str, Any], key: str, where: str, *, required: bool = True, nonempty: bool = True) -> str:
    if key not in rec or rec[key] is None:
        if not required:
            return ""
        raise InputError(f"{where}: missing field '{key}'")
    value = rec[key]
    if not isinstance(value, str):
        raise InputError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    if nonempty and not value.strip():
        raise InputError(f"{where}: field '{key}' is empty")
    return value


def _instruction_prompt(instruction: str, inp: str, template: TemplateConfig) -> str:
    if not inp.strip():
        return instruction
    return template.input.replace("{instruction}", instruction).replace("{input}", inp)


def _chat_turns(rec: dict[str, Any], where: str, template: TemplateConfig) -> list[tuple[str, str]]:
    messages = rec["messages"]
    if not isinstance(messages, list) or not messages:
        raise InputError(f"{where}: field 'messages' must be a non-empty list of {{role, content}}")
    system = ""
    turns: list[tuple[str, str]] = []
    pending: str | None = None
    for i, m in enumerate(messages):
        at = f"{where}: messages[{i}]"
        if not isinstance(m, dict):
            raise InputError(f"{at}: expected an object with 'role' and 'content'")
        role = _text(m, "role", at)
        content = _text(m, "content", at)
        if role == "system":
            if turns or pending is not None:
                raise InputError(f"{at}: a system message must come first")
            system = content
        elif role == "user":
            if pending is not None:
                raise InputError(f"{at}: two user messages in a row; an assistant answer must follow each")
            pending = content
            if system and not turns:
                pending = template.system.replace("{system}", system).replace("{instruction}", content)
        elif role == "assistant":
            if pending is None:
                raise InputError(f"{at}: an assistant message without a user message before it")
            turns.append((pending, content))
            pending = None
        else:
            raise InputError(f"{at}: field 'role' is {role!r}; use system, user or assistant")
    if not turns:
        raise InputError(f"{where}: field 'messages' has no assistant answer to learn")
    return turns


def read_examples(path: Path, fmt: str, template: TemplateConfig) -> list[Example]:
    """The SFT examples of a JSONL file (`fmt` may be "auto")."""
    path = Path(path)
    out: list[Example] = []
    for line_no, rec in read_jsonl(path):
        where = f"{path}:{line_no}"
        f = detect_format(rec, where) if fmt == "auto" else fmt
        if fmt == "auto" and not out:
            fmt = f  # the whole file is one format; later lines are checked against it
        if f == "preference":
            raise InputError(f"{where}: prompt/chosen/rejected records are preference data; "
                             "use --objective dpo")
        if f == "alpaca":
            prompt = _instruction_prompt(_text(rec, "instruction", where),
                                         _text(rec, "input", where, required=False, nonempty=False),
                                         template)
            out.append(Example([(prompt, _text(rec, "output", where))], where))
        elif f == "self_instruct":
            instruction = _text(rec, "instruction", where)
            instances = rec.get("instances")
            if not isinstance(instances, list) or not instances:
                raise InputError(f"{where}: field 'instances' must be a non-empty list of {{input, output}}")
            for j, inst in enumerate(instances):
                at = f"{where}: instances[{j}]"
                if not isinstance(inst, dict):
                    raise InputError(f"{at}: expected an object with 'input' and 'output'")
                prompt = _instruction_prompt(instruction, _text(inst, "input", at, required=False,
                                                                nonempty=False), template)
                out.append(Example([(prompt, _text(inst, "output", at))], f"{where}#{j}"))
        elif f == "chat":
            if "messages" not in rec:
                raise InputError(f"{where}: missing field 'messages'")
            out.append(Example(_chat_turns(rec, where, template), where))
        elif f == "prompt_completion":
            out.append(Example([(_text(rec, "prompt", where), _text(rec, "completion", where))], where))
        else:  # pragma: no cover - FORMATS is closed
            raise InputError(f"{where}: unknown format {f!r}")
    return out


def read_preferences(path: Path, fmt: str = "auto") -> list[PreferencePair]:
    """The DPO pairs of a JSONL file of {prompt, chosen, rejected} records."""
    path = Path(path)
    if fmt not in ("auto", "preference"):
        raise InputError(f"--objective dpo reads prompt/chosen/rejected records, not data.format={fmt}")
    out = []
    for line_no, rec in read_jsonl(path):
        where = f"{path}:{line_no}"
        out.append(PreferencePair(_text(rec, "prompt", where), _text(rec, "chosen", where),
                                  _text(rec, "rejected", where), where))
    return out


# -------------------------------------------------------------------------------- template
@dataclass
class TokenizedExample:
    """Token ids of a rendered example and which of them are learned (the answers)."""

    ids: list[int]
    learn: list[bool]
    source: str

    @property
    def n_learned(self) -> int:
        return sum(self.learn[1:])  # position 0 is never a target


class TemplateRenderer:
    """Turns (prompt, response) text into token ids with a loss mask, via the template."""

    def __init__(self, template: TemplateConfig, tokenizer: Any):
        template.validate()
        self.template = template
        self.tokenizer = tokenizer
        text = template.text
        self.before = text[: text.index(RESPONSE)]
        self.after = text[text.index(RESPONSE) + len(RESPONSE):]

    def _encode(self, text: str) -> list[int]:
        """Encode text in which <|bos|>/<|eos|> stand for the tokenizer's special ids."""
        ids: list[int] = []
        specials = {BOS_MARK: self.tokenizer.bos_id, EOS_MARK: self.tokenizer.eos_id}
        while text:
            hits = [(text.find(m), m) for m in specials if text.find(m) >= 0]
            if not hits:
                ids += self.tokenizer.encode(text)
                break
            pos, mark = min(hits)
            if pos:
                ids += self.tokenizer.encode(text[:pos])
            ids.append(int(specials[mark]))
            text = text[pos + len(mark):]
        return ids

    def prompt_ids(self, prompt: str) -> list[int]:
        """The masked part of a turn: the template up to {response}, prompt filled in."""
        return self._encode(self.before.replace(PROMPT, prompt))

    def response_ids(self, response: str) -> list[int]:
        """The learned part of a turn: the answer and the template after it (the end token)."""
        return self._encode(response + self.after)

    def render(self, example: Example) -> TokenizedExample:
        ids: list[int] = []
        learn: list[bool] = []
        for prompt, response in example.turns:
            p, r = self.prompt_ids(prompt), self.response_ids(response)
            if not r:
                raise InputError(f"{example.source}: the answer renders to no tokens")
            ids += p + r
            learn += [False] * len(p) + [True] * len(r)
        return TokenizedExample(ids, learn, example.source)

    def render_text(self, prompt: str, response: str = "") -> str:
        """The turn as text (what generation should be prompted with when response is '')."""
        return self.before.replace(PROMPT, prompt) + response


# --------------------------------------------------------------------------------- packing
@dataclass
class PackedRows:
    """Training rows: inputs, targets (-100 = no loss), position ids and segment ids."""

    x: np.ndarray          # int64 [rows, seq_len]
    y: np.ndarray          # int64 [rows, seq_len]
    position_ids: np.ndarray
    segment_ids: np.ndarray
    n_examples: int
    n_truncated: int = 0
    n_dropped: int = 0
    sources_dropped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.x.shape[0]

    def batch(self, rows: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(getattr(self, k)[rows]).to(device)
                for k in ("x", "y", "position_ids", "segment_ids")}

    @property
    def target_tokens(self) -> int:
        return int((self.y != IGNORE).sum())


def example_inputs(ex: TokenizedExample, seq_len: int) -> tuple[list[int], list[int], bool]:
    """(inputs, targets, truncated) of one example, cut to at most `seq_len` positions."""
    ids, learn = ex.ids, ex.learn
    truncated = len(ids) - 1 > seq_len
    if truncated:
        ids, learn = ids[: seq_len + 1], learn[: seq_len + 1]
    x = ids[:-1]
    y = [t if keep else IGNORE for t, keep in zip(ids[1:], learn[1:])]
    return x, y, truncated


def pack_examples(examples: list[TokenizedExample], seq_len: int, pad_id: int, pack: bool = True) -> PackedRows:
    """Pack examples into rows of `seq_len` positions (first-fit decreasing).

    Each example keeps its own segment id within its row and position ids from 0, so
    attention never crosses examples and rotary positions are those of a lone example.
    Padding gets a segment of its own and no loss. An example longer than a row is cut
    (counted in n_truncated); one that loses every answer token to the cut is dropped.
    With `pack=False` every example gets a row of its own.
    """
    items = []
    n_trunc, dropped = 0, []
    for ex in examples:
        x, y, truncated = example_inputs(ex, seq_len)
        n_trunc += truncated
        if all(t == IGNORE for t in y):
            dropped.append(ex.source)
            continue
        items.append((x, y))
    if not items:
        raise InputError(f"no example has an answer token within data.seq_len={seq_len}: "
                         f"all {len(examples)} were cut before their answer; raise data.seq_len")
    order = sorted(range(len(items)), key=lambda i: (-len(items[i][0]), i))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = len(items[i][0])
        for b in range(len(bins)) if pack else ():
            if free[b] >= n:
                bins[b].append(i)
                free[b] -= n
                break
        else:
            bins.append([i])
            free.append(seq_len - n)
    rows = len(bins)
    x = np.full((rows, seq_len), pad_id, dtype=np.int64)
    y = np.full((rows, seq_len), IGNORE, dtype=np.int64)
    pos = np.zeros((rows, seq_len), dtype=np.int64)
    seg = np.zeros((rows, seq_len), dtype=np.int64)
    for r, members in enumerate(bins):
        at = 0
        for s, i in enumerate(sorted(members)):
            xi, yi = items[i]
            n = len(xi)
            x[r, at:at + n] = xi
            y[r, at:at + n] = yi
            pos[r, at:at + n] = np.arange(n)
            seg[r, at:at + n] = s
            at += n
        seg[r, at:] = len(members)
        pos[r, at:] = np.arange(seq_len - at)
    return PackedRows(x, y, pos, seg, len(items), n_trunc, len(dropped), dropped[:5])


# ------------------------------------------------------------------------------ preferences
@dataclass
class PreferenceRows:
    """DPO sequences, one per row, right-padded: chosen rows then rejected rows per pair."""

    chosen: list[tuple[list[int], list[int]]]    # (inputs, targets) per pair
    rejected: list[tuple[list[int], list[int]]]
    seq_len: int
    pad_id: int
    n_dropped: int = 0

    def __len__(self) -> int:
        return len(self.chosen)

    def batch(self, pairs: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        """Rows [chosen of `pairs`..., rejected of `pairs`...], padded to the longest."""
        seqs = [self.chosen[i] for i in pairs] + [self.rejected[i] for i in pairs]
        width = max(len(s[0]) for s in seqs)
        x = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        y = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
        for r, (xi, yi) in enumerate(seqs):
            x[r, : len(xi)] = torch.tensor(xi)
            y[r, : len(yi)] = torch.tensor(yi)
        return {"x": x.to(device), "y": y.to(device)}


def tokenize_preferences(pairs: list[PreferencePair], renderer: TemplateRenderer, seq_len: int,
                         pad_id: int) -> PreferenceRows:
    """Render each pair as prompt+chosen and prompt+rejected with the answers learned."""
    chosen, rejected, dropped = [], [], 0
    for p in pairs:
        prompt = renderer.prompt_ids(p.prompt)
        seqs = []
        for answer in (p.chosen, p.rejected):
            r = renderer.response_ids(answer)
            ex = TokenizedExample(prompt + r, [False] * len(prompt) + [True] * len(r), p.source)
            seqs.append(example_inputs(ex, seq_len)[:2])
        if any(all(t == IGNORE for t in y) for _, y in seqs):
            dropped += 1
            continue
        chosen.append(seqs[0])
        rejected.append(seqs[1])
    if not chosen:
        raise InputError(f"no preference pair keeps an answer token within data.seq_len={seq_len}; "
                         "raise data.seq_len")
    return PreferenceRows(chosen, rejected, seq_len, pad_id, dropped)


# ---------------------------------------------------------------------------------- splits
def split_holdout(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, val): a deterministic `fraction` of items held out, chosen by a seeded hash.

    Hashing the source (file:line) rather than shuffling keeps an example on the same
    side of the split when other lines are added to the file.
    """
    if fraction <= 0 or len(items) < 2:
        return list(items), []
    threshold = int(fraction * 2**32)
    train, val = [], []
    for it in items:
        # the line, not the instance: all instances of a self-instruct task fall on one side
        key = it.source.split(":")[-1].split("#")[0]
        h = zlib.crc32(f"{seed}:{key}".encode())
        (val if h < threshold else train).append(it)
    if not val:
        val.append(train.pop())
    if not train:
        train.append(val.pop())
    return train, val
