"""Engines and inferers: MONAI's event protocol with AMP, the KL weight as engine state, VAE and
posterior-sampling inferers, encoder skip features, checkpoint files replaced without a gap."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.engines.utils import IterationEvents
from torch.utils.data import DataLoader

from medvae_monai.engines import HeadTrainer, VAETrainer
from medvae_monai.handlers import KLWarmup
from medvae_monai.handlers.checkpoint import ReplacingDiskSaver
from medvae_monai.inferers import VAEInferer
from medvae_monai.losses import ClassificationLoss, ELBOLoss
from medvae_monai.networks import LatentClassifier, LatentImageClassifier, MedVAE
from medvae_monai.utils import load_state_dict

PROTOCOL = [
    IterationEvents.FORWARD_COMPLETED,
    IterationEvents.LOSS_COMPLETED,
    IterationEvents.BACKWARD_COMPLETED,
    IterationEvents.MODEL_COMPLETED,
]


def _record(engine) -> list:
    seen: list = []
    for event in PROTOCOL:
        engine.add_event_handler(event, lambda e, ev=event: seen.append(ev))
    return seen


@pytest.mark.parametrize("amp", [False, True])
def test_vae_trainer_fires_monai_protocol_and_schedules_kl_weight(amp):
    torch.manual_seed(0)
    vae = MedVAE(2, 1, latent_channels=2, channels=(8, 16))
    data = DataLoader([{"image": torch.rand(1, 16, 16)} for _ in range(16)], batch_size=4)
    trainer = VAETrainer(
        "cpu", 1, data, vae, torch.optim.Adam(vae.parameters(), 1e-3), ELBOLoss(beta=1.0),
        train_handlers=[KLWarmup(1.0, warmup_steps=4)], amp=amp,
    )  # fmt: skip
    seen, betas = _record(trainer), []
    trainer.add_event_handler(IterationEvents.MODEL_COMPLETED, lambda e: betas.append(e.state.output[0]["beta"]))
    before = [p.clone() for p in vae.parameters()]
    trainer.run()
    assert seen == PROTOCOL * 4
    assert betas == pytest.approx([0.25, 0.5, 0.75, 1.0])  # engine state, not the loss's own beta
    assert trainer.loss_function.beta == 1.0
    assert any(not torch.equal(a, b) for a, b in zip(before, vae.parameters()))


def test_head_trainer_fires_monai_protocol():
    vae = MedVAE(2, 1, latent_channels=2, channels=(8, 16))
    net = LatentImageClassifier(vae, LatentClassifier(2, 2, 2, channels=(8, 16)), freeze_encoder=False)
    data = DataLoader([{"image": torch.rand(1, 16, 16), "label": i % 2} for i in range(8)], batch_size=4)
    trainer = HeadTrainer("cpu", 1, data, net, torch.optim.SGD(net.parameters(), 0.1), ClassificationLoss(), recon_weight=0.5)
    seen = _record(trainer)
    trainer.run()
    assert seen == PROTOCOL * 2


def test_vae_inferer_returns_latent_and_reconstruction():
    torch.manual_seed(0)
    vae = MedVAE(2, 1, latent_channels=2, channels=(8, 16)).eval()
    x = torch.rand(2, 1, 30, 26)
    out = VAEInferer("both")(x, vae)
    with torch.no_grad():
        mu = vae.encode(x)[0]
        recon = vae.decode(mu, spatial_size=[30, 26])
    torch.testing.assert_close(out["latent"], mu)
    torch.testing.assert_close(out["reconstruction"], recon)
    torch.testing.assert_close(VAEInferer()(x, vae), recon)
    # a tiling network works tile by tile; the results keep the input's metadata for SaveImaged
    img = MetaTensor(x, affine=torch.diag(torch.tensor([0.5, 0.5, 1.0, 1.0], dtype=torch.float64)))
    tiled = VAEInferer("both")(img, vae.enable_tiling(16, 8))
    assert tiled["latent"].shape == mu.shape and tiled["reconstruction"].shape == x.shape
    for t in tiled.values():
        assert isinstance(t, MetaTensor)
        torch.testing.assert_close(t.affine, img.affine)


def test_encode_features_are_the_encoder_levels():
    vae = MedVAE(2, 1, latent_channels=2, channels=(8, 16, 32), downsample_factor=8).eval()
    x = torch.rand(1, 1, 40, 40)
    with torch.no_grad():
        mu, sigma, features = vae.encode_features(x)
        ref_mu, ref_sigma = vae.encode(x)
    assert [tuple(f.shape[1:]) for f in features] == [(8, 20, 20), (16, 10, 10), (32, 5, 5)]
    torch.testing.assert_close(mu, ref_mu)
    torch.testing.assert_close(sigma, ref_sigma)


def test_checkpoint_file_is_replaced_in_one_step(tmp_path):
    saver = ReplacingDiskSaver(tmp_path)
    saver({"v": torch.tensor(1)}, "last.pt")
    saver({"v": torch.tensor(0)}, "old.pt")
    # ignite's Checkpoint asks to remove the file it supersedes before writing the new one
    saver.remove("last.pt")
    saver.remove("old.pt")
    assert (tmp_path / "last.pt").exists() and (tmp_path / "old.pt").exists()  # nothing removed yet
    saver({"v": torch.tensor(2)}, "last.pt")
    assert int(load_state_dict(tmp_path / "last.pt")["v"]) == 2
    assert not (tmp_path / "old.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
