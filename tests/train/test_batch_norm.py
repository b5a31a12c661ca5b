"""GlobalBatchNorm's arithmetic against BatchNorm's on the same batch: outputs, gradients
and running statistics (a process group of one rank; the 2-rank case is the classify
task's DDP test), and the conversion of a model in place."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

from mlscale.train.batch_norm import GlobalBatchNorm2d, sync_batch_norm


@pytest.fixture
def one_rank_group(tmp_path):
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()


@pytest.mark.parametrize("momentum", [0.1, None])
def test_global_batch_norm_computes_what_batch_norm_does(one_rank_group, momentum):
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=momentum), nn.ReLU())
    with torch.no_grad():
        ref[1].weight.uniform_(0.5, 1.5)
        ref[1].bias.normal_()
    ours = copy.deepcopy(ref)
    assert sync_batch_norm(ours, one_rank_group) == 1 and type(ours[1]) is GlobalBatchNorm2d
    assert ours.state_dict().keys() == ref.state_dict().keys()
    for step in range(3):
        x = torch.randn(6, 3, 9, 7) * (step + 1) + step
        a, b = ref(x), ours(x)
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
        (a * torch.arange(a.numel()).view_as(a).sin()).sum().backward()
        (b * torch.arange(b.numel()).view_as(b).sin()).sum().backward()
    for (name, p), q in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours[1], name), getattr(ref[1], name), rtol=1e-5, atol=1e-6)
    ref.eval(), ours.eval()
    x = torch.randn(2, 3, 9, 7)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5)  # evaluation: running statistics
