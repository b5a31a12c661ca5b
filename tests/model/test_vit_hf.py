"""Hugging Face parity of the ViT family: transformers' ViTForImageClassification computes
our logits (within 1e-5 in fp32) from our export, we compute its logits from its own
checkpoints, its image processor turns a PIL image of the dataset into our input, and
`pipeline("image-classification")` runs on the export."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mlscale.errors import ArtifactError, InputError
from mlscale.model.registry import get_family
from mlscale.model.vit import ViT, ViTConfig
from mlscale.model.vit.hf import class_names, load_hf, save_hf

TINY = dict(image_size=28, patch_size=4, num_classes=4, d_model=32, n_layer=2, n_head=4, init_std=0.2)
NAMES = ["T-shirt", "Trouser", "Pullover", "Dress"]
MEAN, STD = [0.286], [0.353]


def make(seed: int = 0, **kw) -> ViT:
    torch.manual_seed(seed)
    model = get_family("vit").build(ViTConfig(**{**TINY, **kw})).eval()
    with torch.no_grad():  # tokens, biases and gains away from their init, so a misplaced one shows
        for name, p in model.named_parameters():
            if name.endswith(("cls_token", "bias")):
                p.normal_(0, 0.3)
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def grey_image(seed: int = 0):
    from PIL import Image

    pixels = np.random.RandomState(seed).randint(0, 256, (28, 28)).astype(np.uint8)
    return Image.fromarray(pixels, "L")


def our_input(image) -> torch.Tensor:
    """The tensor our training feeds: (x / 255 - mean) / std, [1, 1, H, W]."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32)) / 255
    return ((x - MEAN[0]) / STD[0])[None, None]


def hf_model(d):
    from transformers import ViTForImageClassification

    return ViTForImageClassification.from_pretrained(d).eval()


# --------------------------------------------------------------------------- export
@pytest.mark.parametrize("kw,rgb", [({}, True), ({}, False), ({"in_channels": 3}, None),
                                    ({"pos_embed": "sincos"}, True)],
                         ids=["grey-as-rgb", "grey", "rgb", "sincos"])
def test_transformers_reproduces_our_logits_from_the_export(tmp_path, kw, rgb):
    ours = make(**kw)
    files = save_hf(ours, tmp_path, NAMES, image_mean=MEAN * ours.cfg.in_channels,
                    image_std=STD * ours.cfg.in_channels, rgb=rgb)
    assert sorted(f.name for f in files) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    theirs = hf_model(tmp_path)
    assert theirs.config.id2label == dict(enumerate(NAMES)) and theirs.dtype == torch.float32
    C = ours.cfg.in_channels
    sizes = [28] if kw.get("pos_embed") == "sincos" else [28, 36, 20]  # sin-cos: HF resizes the table
    for size in sizes:
        x = torch.randn(3, C, size, size)
        x_hf = x.expand(-1, 3, -1, -1) if rgb else x  # a grey image made RGB: three equal channels
        with torch.no_grad():
            expected = theirs(pixel_values=x_hf, interpolate_pos_encoding=size != 28).logits
            torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kw,what", [({"registers": 4}, "register tokens"), ({"qk_norm": True}, "qk-norm"),
                                     ({"pool": "mean"}, "mean pooling"), ({"layer_scale": 0.1}, "layer scale"),
                                     ({"stem": "conv"}, "convolutional stem")])
def test_export_refuses_what_transformers_vit_lacks(tmp_path, kw, what):
    with pytest.raises(ArtifactError, match=what):
        save_hf(make(**kw), tmp_path / "out", NAMES)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ArtifactError, match="4 classes"):
        save_hf(make(), tmp_path / "out", NAMES[:3])
    with pytest.raises(ArtifactError, match="one per channel"):
        save_hf(make(), tmp_path / "out", NAMES, image_mean=[0.1, 0.2], image_std=[0.3, 0.4])


# ------------------------------------------------------------- processor and pipeline
def test_the_image_processor_turns_a_dataset_image_into_our_input(tmp_path):
    from transformers import AutoImageProcessor

    image = grey_image()
    save_hf(make(), tmp_path / "grey", NAMES, image_mean=MEAN, image_std=STD, rgb=False)
    one = AutoImageProcessor.from_pretrained(tmp_path / "grey")(image, return_tensors="pt")["pixel_values"]
    assert one.shape == (1, 1, 28, 28)
    torch.testing.assert_close(one, our_input(image), rtol=0, atol=1e-6)
    save_hf(make(), tmp_path / "rgb", NAMES, image_mean=MEAN, image_std=STD)  # the default for grey
    rgb = AutoImageProcessor.from_pretrained(tmp_path / "rgb")(image, return_tensors="pt")["pixel_values"]
    assert rgb.shape == (1, 3, 28, 28)
    for c in range(3):
        torch.testing.assert_close(rgb[:, c:c + 1], our_input(image), rtol=0, atol=1e-6)


def test_the_image_classification_pipeline_runs_on_the_export(tmp_path):
    from transformers import pipeline

    ours = make()
    save_hf(ours, tmp_path, NAMES, image_mean=MEAN, image_std=STD)
    classify = pipeline("image-classification", model=str(tmp_path), device="cpu")
    for seed in range(3):
        image = grey_image(seed)
        with torch.no_grad():
            probs = ours(our_input(image)).softmax(-1)[0]
        out = classify(image, top_k=4)
        assert out[0]["label"] == NAMES[int(probs.argmax())]
        for row in out:
            assert row["score"] == pytest.approx(float(probs[NAMES.index(row["label"])]), abs=1e-5)


# --------------------------------------------------------------------------- import
def _hf_checkpoint(d, num_channels: int = 3) -> None:
    """A transformers ViT of our tiny shape with random weights, saved by transformers."""
    from transformers import ViTConfig as HFViTConfig
    from transformers import ViTForImageClassification

    torch.manual_seed(3)
    cfg = HFViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80,
                      image_size=28, patch_size=4, num_channels=num_channels, layer_norm_eps=1e-12,
                      id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)})
    model = ViTForImageClassification(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.2)
            if "layernorm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
    model.save_pretrained(d)


def test_we_reproduce_a_transformers_checkpoints_logits(tmp_path):
    _hf_checkpoint(tmp_path)
    ours, cfg = load_hf(tmp_path)
    assert (cfg.in_channels, cfg.num_classes, cfg.mlp_hidden, cfg.norm_eps) == (3, 4, 80, 1e-12)
    assert class_names(tmp_path) == NAMES
    theirs = hf_model(tmp_path)
    for size in (28, 32):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            expected = theirs(pixel_values=x, interpolate_pos_encoding=size != 28).logits
            torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-5)


def test_our_grey_export_imports_back_as_a_grey_model(tmp_path):
    ours = make()
    save_hf(ours, tmp_path, NAMES, image_mean=MEAN, image_std=STD)
    back, cfg = load_hf(tmp_path, in_channels=1)  # the RGB kernel summed back to one channel
    assert cfg.in_channels == 1 and back.patch_embed.proj.weight.shape[1] == 1
    as_rgb, _ = load_hf(tmp_path)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(back(x), ours(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(as_rgb(x.expand(-1, 3, -1, -1)), ours(x), rtol=0, atol=1e-5)


def test_import_refuses_what_it_cannot_load(tmp_path):
    _hf_checkpoint(tmp_path)
    cfg_path = tmp_path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    with pytest.raises(InputError, match="one mean and one std"):
        load_hf(tmp_path, in_channels=1)  # no processor config says the channels are alike
    for key, value, what in [("model_type", "deit", "only transformers ViT"), ("qkv_bias", False, "qkv_bias"),
                             ("hidden_act", "gelu_new", "exact gelu"), ("image_size", [28, 32], "square")]:
        cfg_path.write_text(json.dumps({**cfg, key: value}))
        with pytest.raises(InputError, match=what):
            load_hf(tmp_path)
    cfg_path.write_text(json.dumps({**cfg, "hidden_size": 64, "intermediate_size": 160}))
    with pytest.raises(ArtifactError, match="shape"):
        load_hf(tmp_path)


def test_import_reads_transformers_5_names_too(tmp_path):
    from safetensors.torch import load_file, save_file

    from mlscale.model.vit.hf import hf_name

    ours = make()
    save_hf(ours, tmp_path, NAMES, image_mean=MEAN, image_std=STD, rgb=False)
    by_hub_name = {hf_name(k): k for k in ours.state_dict()}
    hub = load_file(tmp_path / "model.safetensors")
    assert set(hub) == set(by_hub_name) and "vit.encoder.layer.1.attention.attention.query.weight" in hub
    renamed = {hf_name(by_hub_name[k], v5=True): t for k, t in hub.items()}
    assert "vit.layers.1.attention.q_proj.weight" in renamed and "vit.layers.0.mlp.fc2.bias" in renamed
    save_file(renamed, tmp_path / "model.safetensors", metadata={"format": "pt"})
    back, _ = load_hf(tmp_path)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(back(x), ours(x), rtol=0, atol=0)
