"""Batched augmentations equal their one-image-at-a-time definitions."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlscale.tasks import augment


def test_to_float_normalises_per_channel_in_chw_layout():
    images = np.random.default_rng(0).integers(0, 256, (3, 5, 4, 2), dtype=np.uint8)
    x = augment.to_float(images, [0.5, 0.25], [0.2, 0.1])
    assert x.shape == (3, 2, 5, 4)
    ref = (torch.from_numpy(images).float() / 255 - torch.tensor([0.5, 0.25])) / torch.tensor([0.2, 0.1])
    torch.testing.assert_close(x, ref.permute(0, 3, 1, 2))


def test_random_crop_is_a_zero_padded_crop_per_image():
    x = torch.randn(4, 3, 6, 6)
    offsets = np.array([[0, 0], [2, 2], [4, 1], [3, 4]])
    out = augment.random_crop(x, 2, offsets)
    padded = F.pad(x, (2, 2, 2, 2))
    for b, (r, c) in enumerate(offsets):
        torch.testing.assert_close(out[b], padded[b, :, r:r + 6, c:c + 6])
    torch.testing.assert_close(out[1], x[1])  # the centred crop is the image itself
    assert torch.equal(augment.random_crop(x, 0, offsets), x)


def test_random_flip_mirrors_only_the_chosen_images():
    x = torch.randn(3, 1, 4, 5)
    out = augment.random_flip(x, np.array([True, False, True]))
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1]) and torch.equal(out[2], x[2].flip(-1))


def test_cutmix_pastes_the_box_and_weights_labels_by_the_area_left():
    rng = np.random.default_rng(3)
    x, partner = torch.zeros(2, 1, 10, 10), torch.ones(2, 1, 10, 10)
    box = augment.cutmix_box(10, 10, 0.75, rng)
    top, bottom, left, right = box
    assert 0 <= top <= bottom <= 10 and 0 <= left <= right <= 10
    mixed, lam = augment.cutmix(x, partner, box)
    assert lam == pytest.approx(1 - float(mixed[0].mean()))  # the pasted share is 1 - lam
    assert (bottom - top) <= 5 and (right - left) <= 5  # a box of side sqrt(1 - 0.75) = 0.5


def test_mixup_mixes_images_and_soft_targets_linearly():
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(augment.mixup(a, b, 0.3), 0.3 * a + 0.7 * b)
    y = augment.mixup(augment.one_hot(torch.tensor([0, 2]), 3), augment.one_hot(torch.tensor([1, 2]), 3), 0.3)
    torch.testing.assert_close(y, torch.tensor([[0.3, 0.7, 0.0], [0.0, 0.0, 1.0]]))
