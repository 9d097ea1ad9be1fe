"""Training augmentation presets (``pipeline.training.augment.AUGMENTS``), the blur-robust one above all."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from test_train import make_store  # tests/ is on sys.path (pytest's rootdir import mode)

from pipeline.cli import cli
from pipeline.training.augment import AUGMENT_KW, AUGMENTS, augment
from pipeline.training.fit import train
from workers.checkpoint import load_card

N, SIZE, STAR_SIGMA, PEAK = 256, 64, 1.5, 1e8


def _stars_and_noise(seed: int = 0) -> torch.Tensor:
    """``(N, 2, 64, 64)``: channel 0 a bright noiseless star (sigma 1.5 px, centred), 1 white noise."""
    yy, xx = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32),
                            torch.arange(SIZE, dtype=torch.float32), indexing="ij")
    c = SIZE / 2 - 0.5
    star = PEAK * torch.exp(-((xx - c) ** 2 + (yy - c) ** 2) / (2 * STAR_SIGMA ** 2))
    z = torch.empty(N, 2, SIZE, SIZE)
    z[:, 0] = star
    z[:, 1] = torch.randn(N, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    return z


def _radial_variance(img: torch.Tensor) -> torch.Tensor:
    """Flux-weighted ``(Mxx + Myy) / 2`` about the centroid, px^2, of ``(N, y, x)`` stamps."""
    _, h, w = img.shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                            torch.arange(w, dtype=torch.float64), indexing="ij")
    f = img.to(torch.float64)
    tot = f.sum(dim=(1, 2))
    cx = (f * xx).sum(dim=(1, 2)) / tot
    cy = (f * yy).sum(dim=(1, 2)) / tot
    mxx = (f * (xx - cx[:, None, None]) ** 2).sum(dim=(1, 2)) / tot
    myy = (f * (yy - cy[:, None, None]) ** 2).sum(dim=(1, 2)) / tot
    return (mxx + myy) / 2


def _added_sigma(preset: str, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-stamp added blur sigma (px, from the growth of the star's second moment) and noise std."""
    z = _stars_and_noise()
    out = augment(z, torch.Generator().manual_seed(seed), **AUGMENT_KW[preset])
    grown = _radial_variance(out[:, 0]) - STAR_SIGMA ** 2  # sigma^2 added per axis
    return grown.clamp_min(0).sqrt(), out[:, 1].std(dim=(1, 2))


def test_presets_are_named_and_full_is_unchanged():
    assert list(AUGMENTS)[:2] == ["full", "geometric"]
    assert set(AUGMENT_KW) == set(AUGMENTS)
    # `skysieve compare` results depend on "full": its definition stays as it was
    assert AUGMENTS["full"] == "dihedral8, shift<=2px, blur p=0.3 sigma 0.3-1.5px, dim p=0.5 a>=0.6"
    assert AUGMENT_KW["full"] == {} and AUGMENT_KW["geometric"] == {"p_blur": 0.0, "p_dim": 0.0}
    assert "robust" in AUGMENTS and "sigma 0.3-4px" in AUGMENTS["robust"]


def test_robust_blurs_40_percent_of_the_stamps_over_the_evaluation_range():
    sigma, _ = _added_sigma("robust")
    # flips and shifts keep a centred star's moments, dimming adds a little noise (< 0.07 px);
    # a sampled kernel of sigma 0.3 px widens less than 0.3 px (0.09 px), so 0.08 parts them
    blurred = sigma > 0.08
    share = blurred.float().mean().item()
    assert 0.3 < share < 0.5, share  # p_blur = 0.4
    s = sigma[blurred]
    assert s.max() < 4.1  # sigma uniform in [0.3, 4] px
    # widths reach +2 PSF FWHM of a typical 3.9 px PSF (sigma 3.3 px) and spread evenly
    assert s.max() > 3.6 and s.min() < 0.8
    assert 0.35 < (s > 2.15).float().mean().item() < 0.65  # median of U(0.3, 4)


def test_robust_blurs_wider_and_more_often_than_full():
    robust, _ = _added_sigma("robust")
    full, _ = _added_sigma("full")
    geometric, _ = _added_sigma("geometric")
    assert torch.all(geometric < 0.05)
    assert full.max() < 1.6 < robust.max()
    assert (robust > 0.08).sum() > (full > 0.08).sum()
    assert _radial_variance(torch.ones(1, 8, 8)).item() == pytest.approx(5.25)  # helper check


def test_robust_restores_unit_noise():
    sigma, std = _added_sigma("robust")
    blurred = sigma > 0.08
    # blurring alone would shrink the noise std to noise_std_factor(sigma) (0.07 at 4 px)
    assert torch.all((std > 0.9) & (std < 1.1)), std[(std <= 0.9) | (std >= 1.1)]
    assert std[blurred].mean().item() == pytest.approx(1.0, abs=0.02)
    assert std[sigma > 3].mean().item() == pytest.approx(1.0, abs=0.02)


def test_robust_is_deterministic_for_a_seed():
    z = _stars_and_noise()
    a = augment(z, torch.Generator().manual_seed(5), **AUGMENT_KW["robust"])
    b = augment(z, torch.Generator().manual_seed(5), **AUGMENT_KW["robust"])
    c = augment(z, torch.Generator().manual_seed(6), **AUGMENT_KW["robust"])
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_train_records_the_robust_preset(tmp_path):
    store = make_store(tmp_path / "train.zarr", n=120)
    card = train(store, arch="smallcnn", out=tmp_path / "r.pt", epochs=1, batch_size=64,
                 seed=0, augment="robust", progress=False)
    assert card.training["augment"] == "robust"
    assert card.training["augment_detail"] == AUGMENTS["robust"]
    assert load_card(tmp_path / "r.pt").training["augment"] == "robust"


def test_cli_train_accepts_every_preset(tmp_path):
    opt = next(p for p in cli.commands["train"].params if p.name == "augment")
    assert list(opt.type.choices) == list(AUGMENTS)  # the CLI lists them without importing torch
    store = make_store(tmp_path / "train.zarr", n=120)
    res = CliRunner().invoke(cli, ["train", str(store), "--out", str(tmp_path / "c.pt"),
                                   "--epochs", "1", "--batch-size", "64", "--augment", "robust"])
    assert res.exit_code == 0, res.output
    assert load_card(tmp_path / "c.pt").training["augment"] == "robust"


def test_photometric_dims_deeply_and_never_blurs():
    """Star/galaxy: dimming breaks a brightness confound, and a blur would turn stars to galaxies."""
    z = _stars_and_noise()
    out = augment(z, torch.Generator().manual_seed(7), **AUGMENT_KW["photometric"])
    sigma, std = _added_sigma("photometric", seed=7)
    assert torch.all(sigma < 0.05)  # the star's width is kept
    ratio = out[:, 0].sum(dim=(1, 2)) / z[:, 0].sum(dim=(1, 2))
    dimmed = ratio < 0.999
    assert 0.5 < dimmed.float().mean().item() < 0.7  # p_dim = 0.6
    assert ratio.min().item() >= 0.25 - 1e-3 and ratio.min().item() < 0.35  # down to a = 0.25
    assert torch.all((std > 0.9) & (std < 1.1))  # noise stays unit


def test_clipped_flattens_40_percent_of_the_stamps_between_preview_black_and_white_points():
    z = _stars_and_noise()
    out = augment(z, torch.Generator().manual_seed(4), **AUGMENT_KW["clipped"])
    peak = out[:, 0].amax(dim=(1, 2))
    clipped = peak < 100.0  # an unclipped star keeps a peak near 1e8 (dimmed to >= 0.6)
    share = clipped.float().mean().item()
    assert 0.3 < share < 0.5, share  # p_clip = 0.4
    assert torch.all((peak[clipped] >= 4.0) & (peak[clipped] <= 15.0))
    assert peak[clipped].min() < 6.0 and peak[clipped].max() > 13.0  # uniform over 4-15 sigma
    # the core is a flat top: many pixels at the white point, not one
    flat = (out[clipped, 0] == peak[clipped][:, None, None]).sum(dim=(1, 2))
    assert torch.all(flat > 20)
    low = out[:, 1].amin(dim=(1, 2))  # the noise channel is clipped at -2..-4 sigma
    assert torch.all(low[clipped] >= -4.0) and torch.all(low[clipped] <= -2.0)
    assert low[~clipped].max() < -2.0 and low[~clipped].min() < -4.0  # 4096 draws reach past -3


def test_clipped_is_robust_before_the_clip():
    z = _stars_and_noise()
    kw = dict(AUGMENT_KW["clipped"])
    assert kw.pop("p_clip") == 0.4 and kw == AUGMENT_KW["robust"]
    a = augment(z, torch.Generator().manual_seed(5), **AUGMENT_KW["clipped"])
    b = augment(z, torch.Generator().manual_seed(5), **AUGMENT_KW["robust"])
    same = (a == b).all(dim=(1, 2, 3))  # the clip draws come last: unclipped stamps match
    assert 0.5 < same.float().mean().item() < 0.7


def test_trail_elongates_stars_along_its_angle_and_keeps_unit_noise() -> None:
    from pipeline.training.augment import trail_blur

    z = _stars_and_noise()
    sigma = torch.full((N,), 2.0)
    angle = torch.zeros(N)  # along x
    out, kept = trail_blur(z, sigma, angle)
    star = out[:, 0].to(torch.float64)
    yy, xx = torch.meshgrid(torch.arange(SIZE, dtype=torch.float64),
                            torch.arange(SIZE, dtype=torch.float64), indexing="ij")
    c = SIZE / 2 - 0.5
    tot = star.sum(dim=(1, 2))
    var_x = (star * (xx - c) ** 2).sum(dim=(1, 2)) / tot
    var_y = (star * (yy - c) ** 2).sum(dim=(1, 2)) / tot
    # a Gaussian trail adds its variance along x only (and the kernel's 0.5 px across)
    assert torch.allclose(var_x, torch.full_like(var_x, STAR_SIGMA ** 2 + 4.0), rtol=0.03)
    assert torch.allclose(var_y, torch.full_like(var_y, STAR_SIGMA ** 2 + 0.25), rtol=0.05)
    assert torch.allclose(tot, torch.full_like(tot, float(z[0, 0].sum())), rtol=1e-4)  # flux kept
    noise = out[:, 1] / kept[:, None, None]
    assert abs(float(noise.std()) - 1.0) < 0.05  # kept is the factor the white noise shrank by
    turned, _ = trail_blur(z, sigma, torch.full((N,), torch.pi / 2))  # along y now
    t = turned[:, 0].to(torch.float64)
    assert float(((t * (yy - c) ** 2).sum(dim=(1, 2)) / t.sum(dim=(1, 2))).mean()) == \
        pytest.approx(float(var_x.mean()), rel=0.02)


def test_elongated_preset_trails_a_share_and_leaves_the_others_as_clipped() -> None:
    z = _stars_and_noise(seed=3)[:, :1] / PEAK * 50  # a 50-sigma star in unit noise
    z = z + torch.randn(z.shape, generator=torch.Generator().manual_seed(4))
    clipped = augment(z, torch.Generator().manual_seed(9), **AUGMENT_KW["clipped"])
    again = augment(z, torch.Generator().manual_seed(9), **{**AUGMENT_KW["clipped"], "p_trail": 0.0})
    assert torch.equal(clipped, again)  # no trail, no draw: the clipped preset is unchanged
    elong = augment(z, torch.Generator().manual_seed(9), **AUGMENT_KW["elongated"])
    assert "elongated" in AUGMENTS
    differs = (elong != clipped).flatten(1).any(dim=1).float().mean()
    assert 0.2 < float(differs) < 0.7  # about the 40% trailed (the draws after them move too)
