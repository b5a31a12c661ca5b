import torch

from mlscale.config import from_dict
from mlscale.model.llama import Llama, LlamaConfig
from mlscale.model.registry import get_family
from mlscale.train.config import TrainConfig
from mlscale.train.optimizer import build_optimizer, parameter_groups


def tiny(tie: bool) -> Llama:
    return get_family("llama").build(LlamaConfig(n_layer=2, n_head=2, d_model=32, seq_len=16, vocab_size=50, tie_embeddings=tie))


def test_matrices_decay_norm_gains_do_not():
    for tie in (True, False):
        model = tiny(tie)
        decay, no_decay = parameter_groups(model, 0.1)
        names = {id(p): n for n, p in model.named_parameters()}
        decayed = {names[id(p)] for p in decay["params"]}
        kept = {names[id(p)] for p in no_decay["params"]}
        assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
        assert all(n.endswith("norm.weight") for n in kept)
        assert len(kept) == 2 * 2 + 1  # two per block, the final norm
        assert "embed.weight" in decayed
        assert ("lm_head.weight" in decayed) == (not tie)  # a tied matrix appears once
        assert "blocks.0.attn.q_proj.weight" in decayed and "blocks.1.mlp.down_proj.weight" in decayed
        n = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
        assert n == model.num_params()


def test_build_optimizer_settings_and_decay_effect():
    model = tiny(True)
    cfg = from_dict(TrainConfig, {"lr": 1e-2, "beta1": 0.8, "beta2": 0.99, "weight_decay": 0.5,
                                  "warmup_steps": 0, "max_steps": 10})
    opt = build_optimizer(model, cfg)
    assert opt.defaults["betas"] == (0.8, 0.99)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]
    # with zero gradients only the decoupled decay moves weights: matrices shrink, gains do not
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before_q = model.blocks[0].attn.q_proj.weight.detach().clone()
    before_g = model.norm.weight.detach().clone()
    opt.step()
    assert torch.allclose(model.blocks[0].attn.q_proj.weight, before_q * (1 - 1e-2 * 0.5))
    assert torch.equal(model.norm.weight, before_g)


def test_weight_decay_schedule_reaches_its_end_and_moves_only_the_decayed_group():
    from mlscale.train.schedule import wd_at
    from mlscale.train.trainer import apply_update

    cfg = TrainConfig(weight_decay=0.04, weight_decay_end=0.4, max_steps=11)
    assert abs(wd_at(0, cfg) - 0.04) < 1e-12 and abs(wd_at(10, cfg) - 0.4) < 1e-12
    assert abs(wd_at(5, cfg) - 0.22) < 1e-12  # half way on the cosine
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, cfg)
    model(torch.randn(4, 3)).sum().backward()
    apply_update(model, opt, grad_norm=1.0, lr=1e-3, grad_clip=0.0, weight_decay=wd_at(10, cfg))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.4, 0.0]
