"""Diagnostic heads on VAE latents: shapes, training modes, uncertainty, metrics, errors, short real runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from medvae_monai.data import CheckedCacheDataset, ImageSource
from medvae_monai.engines import HeadTrainer
from medvae_monai.errors import InputError
from medvae_monai.handlers import classification_metrics
from medvae_monai.inferers import PosteriorSamplingInferer
from medvae_monai.latents import cache_latents
from medvae_monai.losses import ClassificationLoss, SegmentationLoss
from medvae_monai.networks import (
    LatentClassifier,
    LatentImageClassifier,
    LatentImageSegmenter,
    LatentSegmenter,
    MedVAE,
)
from tests.conftest import data_path


@pytest.mark.parametrize("spatial_dims,size", [(2, (30, 26)), (3, (20, 17, 12))])
@pytest.mark.parametrize("task,k", [("binary", 2), ("multiclass", 4), ("multilabel", 3)])
def test_classifier_shapes_and_probabilities(spatial_dims, size, task, k):
    vae = MedVAE(spatial_dims, 1, latent_channels=2, channels=(8, 16))
    net = LatentImageClassifier(vae, LatentClassifier(spatial_dims, 2, k, task, channels=(8, 16)))
    x = torch.rand(3, 1, *size)
    logits = net(x)
    assert logits.shape == (3, k)
    p = net.head.probabilities(logits)
    if task == "multilabel":
        assert ((p >= 0) & (p <= 1)).all()
    else:
        torch.testing.assert_close(p.sum(1), torch.ones(3))
    assert net.sample_logits(x, 5).shape == (5, 3, k)


@pytest.mark.parametrize("spatial_dims,size", [(2, (30, 26)), (3, (20, 17, 12))])
@pytest.mark.parametrize("skips", [False, True])
@pytest.mark.parametrize("context", [None, (8, 16, 16)])
def test_segmenter_full_resolution_output(spatial_dims, size, skips, context):
    vae = MedVAE(spatial_dims, 1, latent_channels=2, channels=(8, 16))
    skip_channels = vae.hparams["channels"] if skips else None
    head = LatentSegmenter(spatial_dims, 2, 3, 4, channels=(16, 8), skip_channels=skip_channels, context_channels=context)
    net = LatentImageSegmenter(vae, head, freeze_encoder=False)
    x = torch.rand(2, 1, *size)
    out = net(x)
    assert out.shape == (2, 3, *size)  # padded internally, cropped back to the input
    out.mean().backward()
    assert vae.encoder[0].weight.grad is not None  # fine-tuning reaches the encoder


def test_frozen_encoder_gets_no_gradient():
    vae = MedVAE(2, 1, latent_channels=2, channels=(8, 16))
    net = LatentImageSegmenter(vae, LatentSegmenter(2, 2, 2, 4, (8, 8), vae.hparams["channels"]), freeze_encoder=True)
    net(torch.rand(2, 1, 16, 16)).mean().backward()
    assert vae.encoder[0].weight.grad is None
    assert net.head.out.weight.grad is not None


def test_head_config_errors():
    vae = MedVAE(2, 1, latent_channels=2, channels=(8, 16))
    with pytest.raises(InputError, match="latent channel"):
        LatentImageClassifier(vae, LatentClassifier(2, 4, 3))
    with pytest.raises(InputError, match="num_classes=2"):
        LatentClassifier(2, 2, 3, task="binary")
    with pytest.raises(InputError, match="skip_channels"):
        LatentSegmenter(2, 2, 2, 4, (8, 8), skip_channels=(8,))
    with pytest.raises(InputError, match="context_channels"):
        LatentSegmenter(2, 2, 2, 4, (8, 8), context_channels=(8,))


def _write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def test_image_and_mask_shapes_must_match(tmp_path):
    _write_png(tmp_path / "benign" / "case1.png", np.full((32, 32), 100))
    _write_png(tmp_path / "benign" / "case1_mask.png", np.zeros((32, 24)))
    source = ImageSource(tmp_path)
    with pytest.raises(InputError, match="case1"):
        CheckedCacheDataset(source.items("all"), source.preprocessing(with_mask=True))


def test_classification_metrics_known_values():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    target = torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 1]), 2).float()
    m = classification_metrics(probs, target, ["neg", "pos"])
    assert m["auroc"] == pytest.approx(1.0)  # every positive ranks above every negative
    assert m["acc"] == pytest.approx(0.75)
    assert m["per_class"]["pos"]["sensitivity"] == pytest.approx(0.5)
    assert m["per_class"]["pos"]["specificity"] == pytest.approx(1.0)
    assert m["per_class"]["neg"]["n"] == 2


def test_posterior_uncertainty_reflects_sigma():
    torch.manual_seed(0)
    vae = MedVAE(2, 1, latent_channels=2, channels=(8, 16))
    net = LatentImageClassifier(vae, LatentClassifier(2, 2, 3, channels=(8, 16), dropout=0.0))
    x = torch.rand(4, 1, 16, 16)
    samples = PosteriorSamplingInferer(num_samples=32)(x, net)  # (B, samples, K)
    assert samples.shape == (4, 32, 3)
    mean, std = samples.mean(1), samples.std(1)
    torch.testing.assert_close(mean.sum(1), torch.ones(4))
    assert (std > 0).all()
    with torch.no_grad():  # a near-deterministic posterior: log-variance channels at their floor
        vae.to_moments.bias[2:] = -60.0
        vae.to_moments.weight[2:] = 0.0
    std_small = PosteriorSamplingInferer(num_samples=32)(x, net).std(1)
    assert std_small.max() < 1e-4 < std.max()
    with pytest.raises(InputError, match="--num_samples 1: give 2 or more"):
        PosteriorSamplingInferer(num_samples=1)


def test_cached_latents_train_frozen_head_only():
    vae = MedVAE(2, 1, latent_channels=2, channels=(8, 16))
    net = LatentImageClassifier(vae, LatentClassifier(2, 2, 2, channels=(8, 16)))
    data = [{"image": torch.rand(1, 16, 16), "label": i % 2} for i in range(16)]
    cached = cache_latents(net, data, batch_size=5)
    assert set(cached[0]) == {"mu", "sigma", "label"} and cached[0]["mu"].shape == (2, 4, 4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(net.head.parameters(), lr=0.1)
    HeadTrainer("cpu", 1, DataLoader(cached, batch_size=8), net, opt, ClassificationLoss()).run()
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("vae."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("head."))
    with pytest.raises(InputError, match="needs a fine-tuned encoder"):
        HeadTrainer("cpu", 1, DataLoader(data), net, opt, ClassificationLoss(), recon_weight=1.0)


def _val_auroc(net, items):
    x = torch.stack([d["image"] for d in items])
    with torch.no_grad():
        probs = net.head.probabilities(net(x))
    target = torch.nn.functional.one_hot(torch.tensor([d["label"] for d in items]), probs.shape[1]).float()
    return classification_metrics(probs, target, [str(i) for i in range(probs.shape[1])])


def _load(dataset_dir, split, n, with_mask=False, size=None):
    source = ImageSource(dataset_dir, spatial_size=size, max_items=n)
    ds = CheckedCacheDataset(source.items(split), source.preprocessing(with_mask=with_mask))
    out = []
    for d in ds:
        item = {"image": d["image"].as_tensor()}
        item.update({"label": d["label"]} if not with_mask else {"mask": d["mask"].as_tensor().float()})
        out.append(item)
    return out


@pytest.mark.slow
def test_short_real_classification_beats_chance():
    """MedNIST, 6 classes at 32x32: a frozen-encoder head on cached latents, 15 epochs on 240 images."""
    root = data_path("MedNIST")
    torch.manual_seed(0)
    train, val = _load(root, "train", 240, size=[32, 32]), _load(root, "val", 96, size=[32, 32])
    vae = MedVAE(2, 1, latent_channels=4, channels=(8, 16))  # untrained: the head alone must learn
    net = LatentImageClassifier(vae, LatentClassifier(2, 4, 6, channels=(16, 32)))
    opt = torch.optim.AdamW(net.head.parameters(), 3e-3)
    loader = DataLoader(cache_latents(net, train), batch_size=16, shuffle=True)
    HeadTrainer("cpu", 15, loader, net, opt, ClassificationLoss(), sample_latent=False).run()
    m = _val_auroc(net, val)
    assert m["auroc"] > 0.8 and m["acc"] > 0.4, m  # chance: AUROC 0.5, accuracy 1/6


@pytest.mark.slow
def test_short_real_segmentation_beats_chance():
    """BUSI lesions at 32x32, 5 epochs: fine-tuned small encoder + skip head; Dice must clearly beat an
    all-lesion mask (about 0.23 on these images; the run reaches about 0.5)."""
    from monai.metrics import DiceMetric

    root = data_path("BUSI")
    torch.manual_seed(0)
    train = [d for d in _load(root, "train", 200, with_mask=True, size=[32, 32]) if d["mask"].any()]
    val = [d for d in _load(root, "val", 64, with_mask=True, size=[32, 32]) if d["mask"].any()]
    vae = MedVAE(2, 1, latent_channels=4, channels=(8, 16))
    head = LatentSegmenter(2, 4, 2, 4, channels=(16, 16), skip_channels=vae.hparams["channels"])
    net = LatentImageSegmenter(vae, head, freeze_encoder=False)
    opt = torch.optim.AdamW(net.parameters(), 3e-3)
    HeadTrainer("cpu", 5, DataLoader(train, batch_size=8, shuffle=True), net, opt, SegmentationLoss(), target_key="mask").run()
    x, y = torch.stack([d["image"] for d in val]), torch.stack([d["mask"] for d in val])
    with torch.no_grad():
        pred = net(x).argmax(1, keepdim=True).float()
    dice = DiceMetric()(pred, y).mean().item()
    chance = DiceMetric()(torch.ones_like(y), y).mean().item()  # predict lesion everywhere
    assert dice > chance + 0.1, (dice, chance)


def test_freeze_encoder_must_be_a_bool():
    vae = MedVAE(2, 1, latent_channels=2, channels=(8, 16))
    with pytest.raises(InputError, match="--freeze_encoder False"):
        LatentImageClassifier(vae, LatentClassifier(2, 2, 2), freeze_encoder="false")


def test_segmentation_metrics_undefined_distance_is_null():
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    from medvae_monai.handlers import segmentation_metrics

    gt = torch.zeros(2, 2, 16, 16)
    gt[:, 1, 4:8, 4:8] = 1
    gt[:, 0] = 1 - gt[:, 1]
    empty = torch.zeros_like(gt)
    empty[:, 0] = 1  # nothing predicted
    dice = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="mean_batch")
    dice(empty, gt), hd(empty, gt)
    m = segmentation_metrics(dice, hd, ["lesion"])
    assert m["dice"] == 0.0 and m["hd95"] is None
    dice(gt, gt), hd(gt, gt)  # add two perfect predictions
    m = segmentation_metrics(dice, hd, ["lesion"])
    assert m["dice"] == pytest.approx(0.5) and m["per_label"]["lesion"]["hd95"] == pytest.approx(0.0)
