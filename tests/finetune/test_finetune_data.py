"""Instruction data: formats, the template, loss masks, packing and bad input."""
import json

import numpy as np
import pytest
import torch

from mlscale.config import from_dict
from mlscale.errors import ConfigError, InputError
from mlscale.finetune.config import FinetuneConfig, TemplateConfig
from mlscale.finetune.data import (IGNORE, Example, TemplateRenderer, pack_examples,
                                   read_examples, read_preferences, split_holdout, tokenize_preferences)
from mlscale.tokenize import load_tokenizer

from ft_helpers import write_char_tokenizer, write_jsonl


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    write_char_tokenizer(path)
    return load_tokenizer(path)


@pytest.fixture(scope="module")
def renderer(tok):
    return TemplateRenderer(TemplateConfig(), tok)


def learned_text(tok, ex) -> str:
    return tok.decode([i for i, keep in zip(ex.ids, ex.learn) if keep], skip_special_tokens=False)


def test_alpaca_records_render_with_prompt_masked_and_answer_learned(tmp_path, tok, renderer):
    path = write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "output": "hi"},
    ])
    examples = read_examples(path, "auto", TemplateConfig())
    assert [e.source for e in examples] == [f"{path}:1", f"{path}:2"]
    assert examples[0].turns == [("Add the numbers.\n\n### Input:\n2 and 3", "5")]
    assert examples[1].turns == [("Say hi.", "hi")]
    ex = renderer.render(examples[0])
    assert ex.ids[0] == tok.bos_id and ex.ids[-1] == tok.eos_id
    text = tok.decode(ex.ids[1:-1], skip_special_tokens=False)
    assert text == "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n5"
    # only the answer and the end token are learned
    assert learned_text(tok, ex) == "5<|eos|>"
    assert ex.n_learned == 2


def test_self_instruct_seed_tasks_give_one_example_per_instance(seed_tasks):
    tasks = [json.loads(line) for line in seed_tasks.read_text().splitlines()]
    examples = read_examples(seed_tasks, "auto", TemplateConfig())
    assert len(examples) == sum(len(t["instances"]) for t in tasks) >= 175
    first = tasks[0]
    assert examples[0].turns[0] == (first["instruction"], first["instances"][0]["output"])
    with_input = next(t for t in tasks if t["instances"][0]["input"])
    ex = next(e for e in examples if e.turns[0][0].startswith(with_input["instruction"]))
    assert ex.turns[0][0].endswith("### Input:\n" + with_input["instances"][0]["input"])


def test_chat_messages_learn_every_assistant_turn_only(tmp_path, tok, renderer):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye?"},
        {"role": "assistant", "content": "Bye."},
    ]}])
    (ex,) = read_examples(path, "auto", TemplateConfig())
    assert ex.turns == [("Be brief.\n\nHi?", "Hello."), ("Bye?", "Bye.")]
    rendered = renderer.render(ex)
    assert learned_text(tok, rendered) == "Hello.<|eos|>Bye.<|eos|>"
    assert rendered.ids.count(tok.bos_id) == 2  # one template instance per turn


def test_prompt_completion_and_preferences(tmp_path, tok, renderer):
    pc = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "Q", "completion": "A"}])
    assert read_examples(pc, "auto", TemplateConfig())[0].turns == [("Q", "A")]
    pref = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q", "chosen": "good", "rejected": "bad answer"}])
    pairs = read_preferences(pref)
    rows = tokenize_preferences(pairs, renderer, 64, tok.pad_id)
    batch = rows.batch(np.array([0]), torch.device("cpu"))
    assert batch["x"].shape[0] == 2  # chosen row, then rejected row
    learned = [tok.decode(batch["y"][r][batch["y"][r] != IGNORE].tolist(), skip_special_tokens=False)
               for r in range(2)]
    assert learned == ["good<|eos|>", "bad answer<|eos|>"]
    with pytest.raises(InputError, match="preference data"):
        read_examples(pref, "auto", TemplateConfig())


@pytest.mark.parametrize("records, message", [
    ([{"instruction": "x", "output": "y"}, {"instruction": "x"}], r"a\.jsonl:2: missing field 'output'"),
    ([{"instruction": "x", "output": "  "}], r"a\.jsonl:1: field 'output' is empty"),
    ([{"instruction": 3, "output": "y"}], r"a\.jsonl:1: field 'instruction' must be a string"),
    ([{"text": "no instruction"}], r"a\.jsonl:1: cannot tell the format from fields \['text'\]"),
    ([{"instruction": "x", "instances": []}], r"a\.jsonl:1: field 'instances'"),
    ([{"instruction": "x", "instances": [{"input": "i"}]}], r"a\.jsonl:1: instances\[0\]: missing field 'output'"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], r"a\.jsonl:1: field 'messages' has no assistant"),
    ([{"messages": [{"role": "bot", "content": "hi"}]}], r"a\.jsonl:1: messages\[0\]: field 'role'"),
    ([{"prompt": "p"}], r"a\.jsonl:1: missing field 'completion'"),
])
def test_bad_records_name_file_line_and_field(tmp_path, records, message):
    path = write_jsonl(tmp_path / "a.jsonl", records)
    with pytest.raises(InputError, match=message):
        read_examples(path, "auto", TemplateConfig())


def test_empty_file_bad_json_and_missing_preference_fields(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match=r"empty\.jsonl is empty"):
        read_examples(empty, "auto", TemplateConfig())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": "y"}\n{oops\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2: not valid JSON"):
        read_examples(bad, "auto", TemplateConfig())
    pref = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a"}])
    with pytest.raises(InputError, match=r"p\.jsonl:1: missing field 'rejected'"):
        read_preferences(pref)


def test_a_template_without_the_answer_slot_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"template\.text.*\{response\}.*answer"):
        from_dict(FinetuneConfig, {"template": {"text": "### Q: {prompt} ### A:"}})
    with pytest.raises(ConfigError, match=r"template\.text.*\{prompt\} must come before"):
        from_dict(FinetuneConfig, {"template": {"text": "{response} then {prompt}"}})
    with pytest.raises(ConfigError, match=r"template\.input"):
        from_dict(FinetuneConfig, {"template": {"input": "{instruction} only"}})


def _examples(renderer, n, seed=0):
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    out = []
    for i in range(n):
        p = " ".join(rng.choice(words, rng.integers(1, 4)))
        r = " ".join(rng.choice(words, rng.integers(1, 6)))
        out.append(renderer.render(Example([(p, r)], f"f:{i}")))
    return out


def test_packing_keeps_every_example_whole_and_apart(renderer, tok):
    examples = _examples(renderer, 30)
    rows = pack_examples(examples, 128, tok.pad_id)
    assert len(rows) < len(examples)  # several examples share a row
    assert rows.n_examples == 30 and rows.n_truncated == 0
    assert rows.target_tokens == sum(e.n_learned for e in examples)
    found = []
    for r in range(len(rows)):
        seg, pos = rows.segment_ids[r], rows.position_ids[r]
        for s in np.unique(seg):
            idx = np.nonzero(seg == s)[0]
            assert np.array_equal(idx, np.arange(idx[0], idx[-1] + 1))  # contiguous
            assert np.array_equal(pos[idx], np.arange(len(idx)))        # positions restart
            if (rows.y[r, idx] != IGNORE).any():
                found.append(tuple(rows.x[r, idx]))
    assert sorted(found) == sorted(tuple(e.ids[:-1]) for e in examples)


def test_packed_examples_do_not_see_each_other(renderer, tok):
    """The logits of an example inside a packed row equal those of the example alone."""
    from mlscale.model.llama import LlamaConfig
    from mlscale.model.registry import get_family

    torch.manual_seed(0)
    model = get_family("llama").build(LlamaConfig(n_layer=2, n_head=4, d_model=32, seq_len=128, vocab_size=tok.vocab_size)).eval()
    examples = _examples(renderer, 6, seed=1)
    rows = pack_examples(examples, 128, tok.pad_id)
    batch = rows.batch(np.arange(len(rows)), torch.device("cpu"))
    with torch.no_grad():
        packed, loss = model(batch["x"], batch["y"], position_ids=batch["position_ids"],
                             segment_ids=batch["segment_ids"])
        r, seg = 0, rows.segment_ids[0]
        for s in np.unique(seg)[:-1]:  # the last segment of a row is padding
            idx = np.nonzero(seg == s)[0]
            alone = model(torch.from_numpy(rows.x[r, idx])[None])[0][0]
            assert torch.allclose(packed[r, idx], alone, atol=1e-5)
    # the loss is the mean over answer tokens only
    logp = torch.log_softmax(packed, -1)
    y = batch["y"]
    mask = y != IGNORE
    manual = -logp.gather(-1, y.clamp_min(0)[..., None])[..., 0][mask].mean()
    assert torch.allclose(loss, manual, atol=1e-5)


def test_truncation_keeps_examples_with_an_answer_and_drops_the_rest(renderer, tok):
    long_prompt = renderer.render(Example([("p" * 100, "answer")], "f:1"))
    long_answer = renderer.render(Example([("q", "a" * 100)], "f:2"))
    rows = pack_examples([long_prompt, long_answer], 60, tok.pad_id)
    assert rows.n_examples == 1 and rows.n_dropped == 1 and rows.sources_dropped == ["f:1"]
    assert rows.n_truncated == 2
    with pytest.raises(InputError, match="raise data.seq_len"):
        pack_examples([long_prompt], 60, tok.pad_id)


def test_unpacked_rows_hold_one_example_each(renderer, tok):
    rows = pack_examples(_examples(renderer, 5), 128, tok.pad_id, pack=False)
    assert len(rows) == 5


def test_holdout_is_deterministic_disjoint_and_keeps_a_task_together(seed_tasks):
    examples = read_examples(seed_tasks, "auto", TemplateConfig())
    train, val = split_holdout(examples, 0.1, seed=3)
    train2, val2 = split_holdout(examples, 0.1, seed=3)
    assert [e.source for e in val] == [e.source for e in val2]
    assert len(train) + len(val) == len(examples) and 0.03 < len(val) / len(examples) < 0.2
    task = lambda e: e.source.split("#")[0]  # noqa: E731
    assert not {task(e) for e in train} & {task(e) for e in val}
