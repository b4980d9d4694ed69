"""A learned image codec for the entropy-coded latent store (``--codec entropy``).

The VAE's latent (16x fewer elements than pixels, stored as floats) caps quality near the VAE's
own reconstruction (about 26-28 dB on MedNIST) and is not coded with an entropy model. This
codec is trained for rate and distortion together, after Ballé et al., "Variational image
compression with a scale hyperprior" (ICLR 2018), the *factorized-prior* model of its section 2
and appendix 6.1: an analysis transform ``g_a`` (three strided 5x5 convolutions with GDN, 8x
downsampling), uniform scalar quantisation, a learned per-channel density for the integer
latent, and a synthesis transform ``g_s``. One model serves several rate points: each rate point
(``level``) has its own latent gain and inverse gain (Cui et al., "Asymmetric gained deep image
compression", CVPR 2021) and its own density, trained with its own Lagrange multiplier.

Training uses additive uniform noise for the rate term and straight-through rounding for the
distortion term (Minnen & Singh, "Channel-wise autoregressive entropy models", ICIP 2020, sec. 3.3).

The densities are turned into integer frequency tables (:meth:`EntropyCodec.integer_tables`)
when a checkpoint is saved; coding (:mod:`~medvae_monai.latents.coding`) uses only those tables, so
bitstreams decode bit-exactly in any process. Written here rather than taken from CompressAI
because CompressAI's ``EntropyBottleneck`` comes with its own range coder and a torchvision
dependency that would pin this environment's torch; only the density model is needed.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .coding import table_bounds

__all__ = ["CODEC_FORMAT", "EntropyCodec", "FactorizedDensity", "GDN", "load_codec", "save_codec"]

CODEC_FORMAT = "medvae-entropy-codec/1"
PRECISION = 24  # constriction's default models quantise probabilities to 24 bits
TAIL_MASS = 1e-9  # probability left outside each channel's table (its symbols are clamped)
MAX_RADIUS = 255  # largest table half-width evaluated


class GDN(nn.Module):
    """Generalised divisive normalisation (Ballé et al., ICLR 2016): ``x / sqrt(beta + gamma @ x^2)``.

    ``inverse=True`` multiplies instead (IGDN, used in the synthesis transform). Parameters are
    kept non-negative by squaring a reparameterised value, as in the paper's appendix.
    """

    def __init__(self, channels: int, inverse: bool = False) -> None:
        super().__init__()
        self.inverse = inverse
        self.beta = nn.Parameter(torch.ones(channels))
        self.gamma = nn.Parameter(0.1 * torch.eye(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        beta = self.beta.pow(2) + 1e-6
        gamma = self.gamma.pow(2).view(c, c, 1, 1)
        norm = torch.sqrt(F.conv2d(x * x, gamma, beta))
        return x * norm if self.inverse else x / norm


class FactorizedDensity(nn.Module):
    """Ballé et al. (ICLR 2018, appendix 6.1) non-parametric density, one per channel.

    A monotone cumulative ``c(x)`` is a chain of per-channel affine maps with softplus-positive
    matrices and ``x + a * tanh(x)`` nonlinearities; ``p(y) = c(y + 1/2) - c(y - 1/2)`` is the
    probability of the integer ``y`` (or the density of ``y + u``, ``u ~ U(-1/2, 1/2)``).

    Args:
        channels: number of latent channels.
        filters: hidden widths of the chain (the paper's (3, 3, 3)).
        init_scale: initial width of the density.
    """

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0) -> None:
        super().__init__()
        dims = (1, *filters, 1)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices, self.biases, self.factors = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def logits_cdf(self, x: torch.Tensor) -> torch.Tensor:
        """Logit of ``c(x)`` for ``x`` of shape ``(channels, 1, n)``."""
        for i, (m, b) in enumerate(zip(self.matrices, self.biases)):
            x = torch.matmul(F.softplus(m), x) + b
            if i < len(self.factors):
                x = x + torch.tanh(self.factors[i]) * torch.tanh(x)
        return x

    def likelihood(self, y: torch.Tensor) -> torch.Tensor:
        """``P(y)`` for ``y`` of shape ``(B, channels, *S)`` (real or integer values), same shape."""
        shape = y.shape
        v = y.transpose(0, 1).reshape(shape[1], 1, -1)
        lower, upper = self.logits_cdf(v - 0.5), self.logits_cdf(v + 0.5)
        sign = -torch.sign(lower + upper).detach()  # evaluate in the tail with better precision
        p = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        perm = (1, 0, *range(2, len(shape)))
        return p.reshape(shape[1], shape[0], *shape[2:]).permute(perm).clamp_min(1e-9)


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 5, stride=2, padding=2)


def _deconv(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1)


class EntropyCodec(nn.Module):
    """Variable-rate factorized-prior image codec (see the module docstring). 2D, one channel.

    Args:
        channels: width of the hidden layers (``N`` in Ballé et al.).
        latent_channels: channels of the latent (``M``).
        lambdas: Lagrange multipliers, one per rate point, in the loss
            ``bits per pixel + lambda * 255^2 * MSE`` (intensities in [0, 1]), lowest rate first.

    Shapes: images ``(B, 1, H, W)`` in [0, 1] with ``H, W`` multiples of 8; latents
    ``(B, latent_channels, H/8, W/8)``.
    """

    factor = 8

    def __init__(self, channels: int = 64, latent_channels: int = 32, lambdas: tuple[float, ...] = (0.002, 0.01)) -> None:
        super().__init__()
        self.hparams = {"channels": channels, "latent_channels": latent_channels, "lambdas": [float(v) for v in lambdas]}
        n, m = channels, latent_channels
        self.g_a = nn.Sequential(_conv(1, n), GDN(n), _conv(n, n), GDN(n), _conv(n, m))
        self.g_s = nn.Sequential(_deconv(m, n), GDN(n, True), _deconv(n, n), GDN(n, True), _deconv(n, 1))
        ref = math.sqrt(lambdas[len(lambdas) // 2])
        log_gain = torch.tensor([[math.log(math.sqrt(v) / ref)] * m for v in lambdas])
        self.log_gain = nn.Parameter(log_gain)
        self.log_inverse_gain = nn.Parameter(-log_gain.clone())
        self.densities = nn.ModuleList(FactorizedDensity(m) for _ in lambdas)
        self.tables: dict[str, torch.Tensor] | None = None
        self.default_level = len(lambdas) // 2

    @property
    def num_levels(self) -> int:
        return len(self.hparams["lambdas"])

    @property
    def tables_sha256(self) -> str:
        """SHA-256 of the integer tables the coder uses (recorded by stores coded with them)."""
        h = hashlib.sha256()
        for k in sorted(self.tables):
            h.update(k.encode() + self.tables[k].to(torch.int64).numpy().tobytes())
        return h.hexdigest()

    def analysis(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Unquantised, gain-scaled latent ``(B, M, H/8, W/8)`` of images in [0, 1]."""
        return self.g_a(x - 0.5) * self.log_gain[level].exp().view(1, -1, 1, 1)

    def dequantise(self, y_hat: torch.Tensor, level: int) -> torch.Tensor:
        """The synthesis input for an integer latent: ``y_hat`` times the level's inverse gain."""
        return y_hat * self.log_inverse_gain[level].exp().view(1, -1, 1, 1)

    def synthesis(self, y_hat: torch.Tensor, level: int) -> torch.Tensor:
        """Images ``(B, 1, H, W)`` from an integer latent (values not clamped to [0, 1])."""
        return self.g_s(self.dequantise(y_hat, level)) + 0.5

    def forward(self, x: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass: ``(reconstruction, bits per image)``; noise for the rate, straight-through
        rounding for the reconstruction."""
        y = self.analysis(x, level)
        bits = -torch.log2(self.densities[level].likelihood(y + torch.empty_like(y).uniform_(-0.5, 0.5)))
        y_st = y + (torch.round(y) - y).detach()
        return self.synthesis(y_st, level), bits.flatten(1).sum(1)

    @torch.no_grad()
    def quantise(self, x: torch.Tensor, level: int, rdoq_iterations: int = 0) -> torch.Tensor:
        """Integer latents (int32) of images ``(B, 1, H, W)`` or volumes ``(B, 1, X, Y, Z)`` in [0, 1].

        Sides are padded (edge values) to multiples of 8; volumes are coded slice by slice along
        the last axis, giving ``(B, M, ceil(X/8), ceil(Y/8), Z)``. With ``rdoq_iterations`` the
        rounded latent is then improved by :meth:`rdoq` (the decoder is unchanged).
        """
        if x.shape[1] != 1:
            raise ValueError(f"the entropy codec codes one-channel images, got {x.shape[1]} channels")
        volume = x.ndim == 5
        if volume:
            b, z = x.shape[0], x.shape[-1]
            x = x.permute(0, 4, 1, 2, 3).reshape(b * z, 1, *x.shape[2:4])
        f = self.factor
        pad = (0, -x.shape[3] % f, 0, -x.shape[2] % f)
        y = torch.round(self.analysis(F.pad(x, pad, mode="replicate"), level))
        if rdoq_iterations > 0:
            y = self.rdoq(x, y, level, rdoq_iterations)
        y = y.to(torch.int32)
        if volume:
            y = y.reshape(b, z, *y.shape[1:]).permute(0, 2, 3, 4, 1)
        return y.contiguous()

    def rdoq(self, x: torch.Tensor, y: torch.Tensor, level: int, iterations: int) -> torch.Tensor:
        """Rate-distortion optimised quantisation of a rounded latent, image by image.

        Each iteration takes the gradient of the training Lagrangian ``bits per pixel + lambda *
        255^2 * MSE`` (on the unpadded image) with respect to the integer latent, moves the
        elements with the largest gradient one step against it (the top 0.2% to 5%: five
        candidates), and keeps, for each image, the candidate with the lowest true Lagrangian, or
        the current latent if none is lower. So the cost never rises, every image is searched on its
        own (batch composition does not change the result), and the decoder is unchanged.

        Method: rate-distortion optimised quantisation as in video encoders (Karczewicz et al.,
        "Rate distortion optimized quantization", ITU-T VCEG-AH21, 2008), with the candidates
        chosen by the gradient of the learned codec, in the spirit of encoder-side latent
        optimisation (Campos et al., "Content adaptive optimization for neural image
        compression", CVPR Workshops 2019). Measured in ``benchmarks/rate_distortion.py``.

        Args:
            x: images ``(B, 1, H, W)`` in [0, 1] (unpadded).
            y: their rounded latents ``(B, M, ceil(H/8), ceil(W/8))`` at ``level`` (float).
            iterations: search iterations (each: one gradient and five trial decodes).

        Returns:
            The improved latent, same shape, integer-valued floats within the coder's tables.
        """
        h, w = x.shape[2:]
        lam = self.hparams["lambdas"][level] * 255**2
        density = self.densities[level]
        lo = hi = None
        if self.tables is not None:
            lo, hi = (b.to(y).view(1, -1, 1, 1) for b in table_bounds(self.tables, level))
            y = y.clamp(lo, hi)

        def cost(q: torch.Tensor) -> torch.Tensor:
            bits = -torch.log2(density.likelihood(q)).flatten(1).sum(1)
            mse = (self.synthesis(q, level)[..., :h, :w] - x).square().flatten(1).mean(1)
            return bits / (h * w) + lam * mse

        for _ in range(iterations):
            with torch.enable_grad():
                q = y.detach().requires_grad_(True)
                current_cost = cost(q)
                (grad,) = torch.autograd.grad(current_cost.sum(), q)
            best = current_cost.detach()  # the gradient pass's forward is the current latent's cost
            score = grad.abs().flatten(1)
            step = torch.sign(grad)
            current = y
            for frac in (0.002, 0.005, 0.01, 0.02, 0.05):
                k = max(1, int(frac * score.shape[1]))
                moved = (score >= score.topk(k, 1).values[:, -1:]).view_as(y)
                trial = current - step * moved
                if lo is not None:
                    trial = trial.clamp(lo, hi)
                c = cost(trial)
                better = c < best
                y = torch.where(better.view(-1, 1, 1, 1), trial, y)
                best = torch.where(better, c, best)
        return y

    @torch.no_grad()
    def reconstruct(self, y: torch.Tensor, level: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Images ``(B, 1, *shape)`` in [0, 1] from integer latents of :meth:`quantise`."""
        volume = y.ndim == 5
        if volume:
            b, z = y.shape[0], y.shape[-1]
            y = y.permute(0, 4, 1, 2, 3).reshape(b * z, *y.shape[1:4])
        x = self.synthesis(y.float(), level)[..., : shape[0], : shape[1]].clamp(0, 1)
        if volume:
            x = x.reshape(b, z, 1, *shape[:2]).permute(0, 2, 3, 4, 1)
        return x

    @torch.no_grad()
    def integer_tables(self) -> dict[str, torch.Tensor]:
        """Integer frequency tables of every level's density, for bit-exact entropy coding.

        For each level ``k`` and channel ``c`` the symbols ``lo[k, c] .. lo[k, c] + len[k, c] - 1``
        get frequencies (int64, each >= 1) summing to ``2**PRECISION``; their bounds cut
        ``TAIL_MASS`` of probability from each side (symbols beyond are clamped at encoding).

        Returns:
            ``{"lo": (K, M), "length": (K, M), "offset": (K, M), "freq": (total,)}`` int64.
        """
        m = self.hparams["latent_channels"]
        grid = torch.arange(-MAX_RADIUS, MAX_RADIUS + 1, dtype=torch.float32)
        los, lens, offs, freqs = [], [], [], []
        total = 0
        for density in self.densities:
            p = density.likelihood(grid.view(1, 1, -1).expand(1, m, -1).contiguous())[0].double().numpy()
            for c in range(m):
                cdf = np.cumsum(p[c])
                lo = int(np.searchsorted(cdf, TAIL_MASS))
                hi = int(np.searchsorted(cdf, cdf[-1] - TAIL_MASS))
                q = p[c, lo : hi + 1] / p[c, lo : hi + 1].sum()
                f = np.maximum(1, np.floor(q * (2**PRECISION - len(q))).astype(np.int64))
                f[np.argmax(f)] += 2**PRECISION - f.sum()  # exact normalisation on the mode
                los.append(lo - MAX_RADIUS)
                lens.append(len(f))
                offs.append(total)
                freqs.append(f)
                total += len(f)
        k = self.num_levels
        return {
            "lo": torch.tensor(los).view(k, m),
            "length": torch.tensor(lens).view(k, m),
            "offset": torch.tensor(offs).view(k, m),
            "freq": torch.from_numpy(np.concatenate(freqs)),
        }


def save_codec(codec: EntropyCodec, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
    """Atomically save weights, hyper-parameters and integer tables (loadable with ``weights_only``)."""
    from ..utils import atomic_torch_save

    payload = {
        "format": CODEC_FORMAT,
        "hparams": codec.hparams,
        "state_dict": {k: v.detach().cpu() for k, v in codec.state_dict().items()},
        "tables": codec.integer_tables(),
        "default_level": codec.default_level,
        **(extra or {}),
    }
    atomic_torch_save(payload, path)


def load_codec(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> EntropyCodec:
    """Load a checkpoint written by :func:`save_codec` (safely, ``torch.load(weights_only=True)``).

    Raises:
        InputError: the file is missing, corrupt or not a codec checkpoint.
    """
    from ..errors import InputError
    from ..utils import load_state_dict

    payload = load_state_dict(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != CODEC_FORMAT:
        raise InputError(
            f"{path}: not an entropy-codec checkpoint ({CODEC_FORMAT}); pass the codec file with --codec_path."
        )
    hp = payload["hparams"]
    codec = EntropyCodec(hp["channels"], hp["latent_channels"], tuple(hp["lambdas"]))
    codec.load_state_dict(payload["state_dict"])
    codec.tables = {k: v.to(torch.int64) for k, v in payload["tables"].items()}
    codec.default_level = int(payload.get("default_level", codec.default_level))
    return codec.eval()
