"""ELBO terms: closed-form KL against Monte Carlo, free bits, warm-up, the adversarial term, and
loss decrease on real MedNIST images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ignite.engine import Engine, Events

from medvae_monai.handlers import KLWarmup
from medvae_monai.losses import AdversarialTerm, ELBOLoss, gaussian_kl
from medvae_monai.networks import MedVAE

from .conftest import data_path


def test_kl_closed_form_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(6, generator=g) * 1.5
    sigma = torch.rand(6, generator=g) * 2 + 0.1
    z = mu + sigma * torch.randn(400_000, 6, generator=g)
    q = torch.distributions.Normal(mu, sigma)
    p = torch.distributions.Normal(0.0, 1.0)
    mc = (q.log_prob(z) - p.log_prob(z)).mean(0)
    closed = gaussian_kl(mu, sigma)
    # Monte-Carlo standard error here is below 0.01 nats for every element
    torch.testing.assert_close(closed, mc, atol=0.03, rtol=0.01)
    assert torch.allclose(gaussian_kl(torch.zeros(3), torch.ones(3)), torch.zeros(3))


def test_free_bits_floor_is_per_channel():
    mu = torch.zeros(4, 2, 3, 3)
    mu[:, 1] = 2.0  # channel 1 carries 2 nats per element, channel 0 none
    sigma = torch.ones_like(mu)
    loss = ELBOLoss(beta=1.0, free_bits=0.5)
    assert loss.kl_loss(mu, sigma).item() == pytest.approx((0.5 + 2.0) / 2)
    assert ELBOLoss(beta=1.0).kl_loss(mu, sigma).item() == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["l1", "l2", "bce"])
def test_elbo_terms(kind):
    x = torch.rand(2, 1, 8, 8)
    recon = torch.rand(2, 1, 8, 8)
    mu, sigma = torch.randn(2, 1, 2, 2), torch.rand(2, 1, 2, 2) + 0.5
    out = ELBOLoss(kind, beta=0.1)(recon, x, mu, sigma)
    assert out["loss"].item() == pytest.approx(out["recon_loss"].item() + 0.1 * out["kl"].item(), rel=1e-6)
    with pytest.raises(ValueError, match="differ"):
        ELBOLoss(kind)(recon[:, :, :4], x, mu, sigma)


def _kl_weights(schedule: KLWarmup, iterations: int) -> list[float]:
    """The engine-state KL weight each iteration of a real ignite engine sees, from the first on."""
    engine = Engine(lambda e, batch: e.state.kl_weight)
    seen: list[float] = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.output))
    schedule.attach(engine)
    engine.run(range(iterations), max_epochs=1)
    return seen


def test_kl_warmup_schedule():
    w = _kl_weights(KLWarmup(1e-3, warmup_steps=100), 1000)  # w[i - 1]: the weight of iteration i
    assert [KLWarmup(1e-3, 100).get_param(), w[49], w[99], w[999]] == pytest.approx([0.0, 5e-4, 1e-3, 1e-3])
    assert w[0] == pytest.approx(1e-5)  # step 0 is before the first iteration
    assert _kl_weights(KLWarmup(0.5), 1) == [0.5]
    with pytest.raises(ValueError):
        KLWarmup(-1.0)


def _mednist_batch(n_per_class: int = 6) -> torch.Tensor:
    root = data_path("MedNIST")
    files = [f for c in sorted(p for p in root.iterdir() if p.is_dir()) for f in sorted(c.glob("*.jpeg"))[:n_per_class]]
    arr = np.stack([np.asarray(Image.open(f).convert("L"), dtype=np.float32) / 255.0 for f in files])
    return torch.from_numpy(arr)[:, None]


def test_loss_decreases_on_real_mednist():
    torch.manual_seed(0)
    x = _mednist_batch()  # 36 real images, 6 classes
    net = MedVAE(2, 1, 1, (16, 32), 4)
    loss_fn = ELBOLoss("l1", beta=1e-4)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        recon, mu, sigma = net(x)
        loss = loss_fn(recon, x, mu, sigma)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses


def test_adversarial_term_trains_discriminator():
    torch.manual_seed(0)
    adv = AdversarialTerm(2, 1, channels=8, num_layers_d=2, weight=0.5)
    opt = torch.optim.Adam(adv.discriminator.parameters(), lr=1e-3)
    real = torch.rand(4, 1, 32, 32)
    fake = torch.zeros(4, 1, 32, 32)  # trivially distinguishable
    first = adv.discriminator_loss(fake, real).item()
    for _ in range(15):
        d = adv.discriminator_loss(fake, real)
        opt.zero_grad()
        d.backward()
        opt.step()
    assert adv.discriminator_loss(fake, real).item() < first
    g = adv.generator_loss(fake.requires_grad_())
    g.backward()
    assert g.item() > 0 and fake.grad is not None and fake.grad.abs().sum() > 0
