"""Batched views: torchvision's rules for the crop parameters, exact identities for the
transforms at their neutral settings, and the same views whatever the rank split."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlscale.tasks.selfsup import views


def test_crop_boxes_keep_torchvision_s_bounds():
    rng = np.random.default_rng(0)
    boxes = views.crop_boxes(5000, 28, 28, (0.08, 1.0), rng)
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 28).all() and (left + w <= 28).all()
    area = h * w / 784
    assert area.min() > 0.05 and area.max() <= 1.0 and 0.45 < area.mean() < 0.62  # E[U(0.08, 1)] = 0.54
    assert ((w / h) > 0.6).all() and ((w / h) < 1.7).all()  # the 3/4..4/3 ratios, rounded to pixels


def test_impossible_crops_fall_back_to_the_centre():
    boxes = views.crop_boxes(100, 10, 40, (0.99, 1.0), np.random.default_rng(0))  # ratio 4:1 fits no try
    assert (boxes[:, 2] == 10).all() and (boxes[:, 3] == round(10 * 4 / 3)).all()
    assert (boxes[:, 1] == (40 - 13) // 2).all()


def test_the_whole_image_unflipped_is_the_image_and_flipped_its_mirror():
    x = torch.rand(3, 2, 8, 8)
    whole = np.array([[0, 0, 8, 8]] * 3, dtype=float)
    torch.testing.assert_close(views.crop_resize(x, whole, np.zeros(3, bool), 8), x)
    torch.testing.assert_close(views.crop_resize(x, whole, np.ones(3, bool), 8), x.flip(-1))


def test_a_crop_resized_to_its_own_size_is_the_slice():
    x = torch.rand(2, 1, 12, 12)
    box = np.array([[2, 3, 6, 6], [0, 5, 6, 6]], dtype=float)
    out = views.crop_resize(x, box, np.zeros(2, bool), 6)
    torch.testing.assert_close(out[0], x[0, :, 2:8, 3:9])
    torch.testing.assert_close(out[1], x[1, :, 0:6, 5:11])


def test_a_crop_upscaled_is_torch_s_bilinear_resize():
    x = torch.rand(1, 1, 12, 12)
    out = views.crop_resize(x, np.array([[2, 2, 6, 6]], dtype=float), np.zeros(1, bool), 12)
    ref = F.interpolate(x[:, :, 2:8, 2:8], size=12, mode="bilinear", align_corners=False)
    # the crop's border pixels differ by design: we sample the image's own neighbours where
    # crop-then-resize replicates the crop's edge
    torch.testing.assert_close(out[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-5, rtol=0)


def test_jitter_matches_torchvision_s_formulas():
    x = torch.rand(2, 3, 5, 5)
    assert torch.equal(views.jitter(x, np.ones((2, 3))), x)
    out = views.jitter(x, np.array([[1.2, 1.0, 1.0], [1.0, 0.5, 1.0]]))
    torch.testing.assert_close(out[0], (x[0] * 1.2).clamp(0, 1))
    g = (x[1] * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0).mean()
    torch.testing.assert_close(out[1], (g + 0.5 * (x[1] - g)).clamp(0, 1))
    grey = views.jitter(x, np.array([[1, 1, 0.0]] * 2))
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])


def test_blur_is_a_normalised_gaussian_and_leaves_unblurred_images_alone():
    x = torch.zeros(2, 1, 15, 15)
    x[:, :, 7, 7] = 1
    out = views.gaussian_blur(x, np.array([1.5, 0.0]))
    assert torch.equal(out[1], x[1])
    assert float(out[0].sum()) == pytest.approx(1.0, abs=1e-5)
    taps = torch.exp(-0.5 * (torch.arange(-2, 3.0) / 1.5) ** 2)
    ratio = float(out[0, 0, 7, 8] / out[0, 0, 7, 7])
    assert ratio == pytest.approx(float(taps[3] / taps[2]), rel=1e-4)


def test_views_of_a_global_batch_split_over_ranks_are_the_same_views():
    spec = views.ViewSpec(blur_prob=0.5, solarize_prob=0.3)
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 1), dtype=np.uint8)
    params = views.draw(spec, 8, 16, 16, np.random.default_rng([1, 2]))
    whole = views.render(images, params, spec, [0.5], [0.25])
    halves = [views.render(images[r], params.take(r), spec, [0.5], [0.25]) for r in (np.arange(4), np.arange(4, 8))]
    torch.testing.assert_close(torch.cat(halves), whole)
    assert whole.shape == (8, 1, 16, 16)
