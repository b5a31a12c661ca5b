"""DPO: our loss equals TRL's on fixed log-probabilities; sequence log-probs; the reference cache."""
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlscale.finetune.dpo import dpo_loss, load_or_compute_ref, sequence_logps
from mlscale.finetune.data import IGNORE

# fixed summed log-probabilities of 6 pairs (policy / reference, chosen / rejected)
PC = torch.tensor([-12.0, -30.5, -8.25, -40.0, -5.0, -22.0])
PR = torch.tensor([-14.0, -29.0, -9.00, -45.5, -4.0, -22.0])
RC = torch.tensor([-13.0, -30.0, -8.00, -41.0, -5.5, -21.0])
RR = torch.tensor([-13.5, -29.5, -8.50, -44.0, -4.5, -21.0])


def trl_compute_loss(beta: float):
    """Run TRL's own DPOTrainer._compute_loss on the fixed log-probabilities.

    The method only needs a handful of trainer attributes and a model output carrying
    per-token log-probs; a stand-in trainer and model provide exactly those, so TRL's code
    (trl/trainer/dpo_trainer.py, loss_type "sigmoid") computes the loss and the reward
    metrics itself.
    """
    from trl import DPOTrainer

    n = PC.numel()
    T = 4
    per_token = torch.zeros(2 * n, T - 1)
    per_token[:, 0] = torch.cat([PC, PR])  # the sum over the sequence is the fixed value

    class FakeModel:
        training = True

        def __call__(self, **kwargs):
            return SimpleNamespace(log_probs=per_token, entropy=torch.zeros(2 * n, T - 1),
                                   mean_logits=torch.zeros(2 * n, T - 1),
                                   is_top1=torch.zeros(2 * n, T - 1, dtype=torch.bool))

    identity = lambda t: t  # noqa: E731
    trainer = SimpleNamespace(
        model=FakeModel(), accelerator=SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=identity,
                                                       gather=identity),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=["sigmoid"], loss_weights=[1.0], beta=beta, label_smoothing=0.0, use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )
    inputs = {"input_ids": torch.ones(2 * n, T, dtype=torch.long),
              "attention_mask": torch.ones(2 * n, T, dtype=torch.long),
              "completion_mask": torch.ones(2 * n, T, dtype=torch.long),
              "ref_chosen_logps": RC, "ref_rejected_logps": RR}
    loss = DPOTrainer._compute_loss(trainer, trainer.model, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_equals_trl(beta):
    ours, stats = dpo_loss(PC, PR, RC, RR, beta)
    theirs, metrics = trl_compute_loss(beta)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert stats["reward_margin"] == pytest.approx(metrics["rewards/margins"], abs=1e-6)
    assert stats["reward_accuracy"] == pytest.approx(metrics["rewards/accuracies"], abs=1e-6)
    assert stats["rewards_chosen"] == pytest.approx(metrics["rewards/chosen"], abs=1e-6)
    assert stats["rewards_rejected"] == pytest.approx(metrics["rewards/rejected"], abs=1e-6)


def test_dpo_loss_is_the_sigmoid_formula_and_pushes_the_margin():
    beta = 0.1
    logits = (PC - RC) - (PR - RR)
    expected = -F.logsigmoid(beta * logits).mean()
    loss, stats = dpo_loss(PC, PR, RC, RR, beta)
    assert torch.allclose(loss, expected)
    # one pair has equal log-ratios (margin 0): loss log 2, and it is not counted as correct
    assert stats["reward_accuracy"] == pytest.approx(np.mean((logits > 0).numpy()))
    pc = PC.clone().requires_grad_(True)
    pr = PR.clone().requires_grad_(True)
    dpo_loss(pc, pr, RC, RR, beta)[0].backward()
    assert torch.all(pc.grad < 0) and torch.all(pr.grad > 0)  # raise chosen, lower rejected


def test_sequence_logps_sums_the_learned_tokens_only():
    torch.manual_seed(0)
    vocab = 7
    logits = torch.randn(2, 5, vocab)

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits, None

    y = torch.tensor([[IGNORE, IGNORE, 3, 4, 1], [IGNORE, 2, 2, IGNORE, IGNORE]])
    got = sequence_logps(Fixed(), torch.zeros(2, 5, dtype=torch.long), y)
    lp = torch.log_softmax(logits, -1)
    expected = torch.stack([lp[0, 2, 3] + lp[0, 3, 4] + lp[0, 4, 1], lp[1, 1, 2] + lp[1, 2, 2]])
    assert torch.allclose(got, expected)


def test_reference_cache_is_computed_once_and_refreshed_when_inputs_change(tmp_path):
    path = tmp_path / "ref.safetensors"
    calls = []

    def compute():
        calls.append(1)
        return torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])

    a = load_or_compute_ref(path, "train", "fp1", compute)
    b = load_or_compute_ref(path, "train", "fp1", compute)
    assert len(calls) == 1 and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    load_or_compute_ref(path, "val", "fp1", compute)  # another split: computed and added
    load_or_compute_ref(path, "train", "fp1", compute)
    assert len(calls) == 2
    load_or_compute_ref(path, "train", "fp2", compute)  # other data or base: recomputed
    assert len(calls) == 3
