"""The LSTM, GAN and autoencoder explanation paths run on the zoo's architectures."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import explain
import zoo
from explain import heatmaps


def _model(name: str) -> torch.nn.Module:
    """The trained zoo model, or (while its weights are still being trained) the untrained architecture."""
    try:
        return zoo.load(name)
    except zoo.SlimlensError:
        return zoo.build(name).eval()


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return zoo.dataset("mnist", "test").images[[0, 500]]


def test_lstm_rows_and_features_in_eval_mode_with_mode_restored(digits, tmp_path):
    model = _model("seed-lstm").train()  # left in training mode on purpose
    out = explain.lstm_attribution(model, digits, method="integrated_gradients", n_steps=16, baselines=0.0)
    assert out["per_pixel"].shape == (2, 28, 28) and out["per_step"].shape == (2, 28) and out["per_feature"].shape == (2, 28)
    assert torch.allclose(out["per_step"].sum(1), out["per_pixel"].sum((1, 2)), atol=1e-4)
    assert model.training and model.lstm.training  # explain ran in eval mode and put the mode back
    png = heatmaps.save_png(explain.row_heatmap(digits[0], out["per_pixel"][0], title="seed-lstm"), tmp_path / "rows.png")
    with Image.open(png) as img:
        assert img.size == (480, 300)


def test_gan_discriminator_on_real_and_generated_and_latent_attribution():
    generator, discriminator = _model("dcgan-g"), _model("dcgan-d")
    z = zoo.latents(3, seed=1)
    with torch.no_grad():
        fakes = generator(z)
    real = zoo.dataset("mnist", "test").images[:3]
    seen = explain.discriminator_saliency(discriminator, real, fakes)
    assert seen["real"].shape == real.shape and seen["generated"].shape == fakes.shape
    assert ((seen["real_probability"] >= 0) & (seen["real_probability"] <= 1)).all()
    latent = explain.latent_attribution(generator, z, discriminator, method="integrated_gradients", n_steps=16)
    assert latent.shape == (3, 64) and latent.abs().sum() > 0
    brightness = explain.latent_attribution(generator, z, method="saliency", region=(slice(10, 18), slice(10, 18)))
    assert brightness.shape == (3, 64)
    assert not generator.training and not discriminator.training


def test_autoencoder_code_units_to_pixels(digits):
    model = _model("seed-autoencoder")
    maps = explain.code_attribution(model, digits, units=[0, 5, 19], method="saliency")
    assert maps.shape == (2, 3, 1, 28, 28)
    full = explain.code_attribution(model, digits[:1], method="input_x_gradient")
    assert full.shape == (1, 20, 1, 28, 28)


def test_latent_occlusion_perturbs_one_unit_at_a_time():
    generator, discriminator = _model("dcgan-g"), _model("dcgan-d")
    z = zoo.latents(2, seed=3)
    options = explain.default_options("occlusion", tuple(z.shape[1:]))
    assert options["sliding_window_shapes"] == (1,) and options["strides"] == (1,)
    maps = explain.latent_attribution(generator, z, discriminator, method="occlusion", **options)
    with torch.no_grad():
        full = discriminator(generator(z))[:, 0]
        for unit in (0, 17, 63):
            blanked = z.clone()
            blanked[:, unit] = 0.0
            assert torch.allclose(maps[:, unit], full - discriminator(generator(blanked))[:, 0], atol=1e-4)


def test_generated_digits_are_drawn_as_images_not_attributions():
    images = _model("dcgan-g")(zoo.latents(3)).detach()
    fig = heatmaps.image_panel(images, labels=["a", "b", "c"], title="generated digits")
    bar = fig.axes[-1]
    assert "pixel value" in bar.get_xlabel() and "attribution" not in bar.get_xlabel().replace("not attributions", "")
