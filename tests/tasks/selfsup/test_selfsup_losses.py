"""The self-supervised objectives equal their references on the same tensors: lightly's
NTXentLoss and DINOLoss (values, gradients, the center's updates), facebookresearch/mae's
patchify, unpatchify, masking and loss formulas, DINO's schedules."""
from __future__ import annotations

import math

import pytest
import torch

from lightly_reference import lightly_losses
from mlscale.tasks.selfsup import losses

LIGHTLY = lightly_losses()


@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_nt_xent_equals_lightly_in_value_and_gradient(temperature):
    torch.manual_seed(0)
    a, b = torch.randn(16, 32, requires_grad=True), torch.randn(16, 32, requires_grad=True)
    ours = losses.nt_xent(a, b, temperature)
    ga, gb = torch.autograd.grad(ours, (a, b))
    ref = LIGHTLY.NTXentLoss(temperature=temperature)(a, b)
    ra, rb = torch.autograd.grad(ref, (a, b))
    assert abs(float(ours.detach()) - float(ref.detach())) < 1e-6
    torch.testing.assert_close(ga, ra, atol=1e-6, rtol=0)
    torch.testing.assert_close(gb, rb, atol=1e-6, rtol=0)


def test_nt_xent_learns_something_a_wrong_pairing_does_not():
    a = torch.randn(8, 16)
    right = losses.nt_xent(a, a + 0.01 * torch.randn(8, 16), 0.1)
    wrong = losses.nt_xent(a, a.roll(1, 0), 0.1)
    assert float(right) < 0.1 < float(wrong)


def test_dino_loss_and_center_equal_lightly_over_several_steps():
    torch.manual_seed(0)
    K, B, crops = 64, 8, 6
    ref = LIGHTLY.DINOLoss(output_dim=K, teacher_temp=0.07, warmup_teacher_temp=0.04,
                           warmup_teacher_temp_epochs=3, student_temp=0.1, center_momentum=0.9)
    center = torch.zeros(1, K)
    for epoch in range(4):
        teacher = torch.randn(2, B, K) * 3
        student = torch.randn(crops, B, K, requires_grad=True)
        t_temp = losses.teacher_temperature(epoch, 3, 0.04, 0.07)
        ours = losses.dino_loss(teacher, student, center, t_temp, 0.1)
        theirs = ref(list(teacher), list(student.unbind(0)), epoch=epoch)
        assert abs(float(ours.detach()) - float(theirs.detach())) < 1e-6
        g_ours, = torch.autograd.grad(ours, student)
        g_ref, = torch.autograd.grad(theirs, student)
        torch.testing.assert_close(g_ours, g_ref, atol=1e-7, rtol=0)
        center = losses.update_center(center, teacher, 0.9)
        torch.testing.assert_close(center, ref.center.view(1, K), atol=1e-7, rtol=0)


def _stats(teacher, student, K):
    entropy = losses.teacher_entropy(teacher, torch.zeros(1, K), 0.04)
    return entropy, losses.dino_loss(teacher, student, torch.zeros(1, K), 0.04, 0.1) - entropy


def test_dino_statistics_read_a_uniform_collapse():
    K = 32
    teacher = torch.zeros(2, 4, K)  # every image: the same flat output
    student = torch.zeros(4, 4, K)
    entropy, kl = _stats(teacher, student, K)
    assert float(entropy) == pytest.approx(math.log(K), abs=1e-5) and abs(float(kl)) < 1e-5
    sharp = torch.randn(2, 4, K) * 10
    entropy, kl = _stats(sharp, torch.randn(4, 4, K), K)
    assert float(kl) > 0.1


def test_teacher_momentum_rises_from_its_base_to_one_on_a_cosine():
    assert losses.teacher_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert losses.teacher_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert losses.teacher_momentum(100, 100, 0.996) == pytest.approx(1.0)


# facebookresearch/mae models_mae.py, written out: the formulas the tests hold ours to
def _mae_patchify(imgs, p):
    h = w = imgs.shape[2] // p
    x = imgs.reshape(shape=(imgs.shape[0], imgs.shape[1], h, p, w, p))
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(shape=(imgs.shape[0], h * w, p ** 2 * imgs.shape[1]))


def _mae_random_masking(x, mask_ratio, noise):
    N, L, D = x.shape
    len_keep = int(L * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
    mask = torch.ones([N, L])
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return x_masked, mask, ids_restore


def test_patchify_follows_mae_and_unpatchify_inverts_it():
    imgs = torch.randn(3, 3, 12, 12)
    patches = losses.patchify(imgs, 4)
    torch.testing.assert_close(patches, _mae_patchify(imgs, 4), atol=0, rtol=0)
    # patch 4 (row 1, column 1) holds pixels [4:8, 4:8] in (row, column, channel) order
    torch.testing.assert_close(patches[:, 4], imgs[:, :, 4:8, 4:8].permute(0, 2, 3, 1).reshape(3, -1))
    torch.testing.assert_close(losses.unpatchify(patches, 4, 3, 12, 12), imgs, atol=0, rtol=0)


def test_random_masking_follows_mae():
    x, noise = torch.randn(4, 49, 8), torch.rand(4, 49)
    keep, mask, restore = losses.random_masking(noise, 0.75)
    ref_x, ref_mask, ref_restore = _mae_random_masking(x, 0.75, noise)
    assert keep.shape == (4, 12) and mask.sum(1).tolist() == [37.0] * 4
    torch.testing.assert_close(torch.gather(x, 1, keep[..., None].expand(-1, -1, 8)), ref_x, atol=0, rtol=0)
    torch.testing.assert_close(mask, ref_mask, atol=0, rtol=0)
    assert torch.equal(restore, ref_restore)
    assert (noise.gather(1, keep).max(1).values <= noise.masked_fill(mask == 0, 2).min(1).values).all()


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_loss_counts_the_masked_patches_only(norm_pix):
    imgs, p = torch.randn(2, 1, 8, 8), 4
    target = _mae_patchify(imgs, p)
    if norm_pix:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    pred, mask = torch.randn(2, 4, 16), torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]])
    expected = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    torch.testing.assert_close(losses.mae_loss(imgs, pred, mask, p, norm_pix), expected)
    pred_visible_wrong = torch.where(mask[..., None].bool(), pred, pred + 100)
    torch.testing.assert_close(losses.mae_loss(imgs, pred_visible_wrong, mask, p, norm_pix), expected)
