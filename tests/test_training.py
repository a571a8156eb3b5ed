"""Training end to end on a synthetic image: it learns, it saves, it loads, it resumes."""

import json

import numpy as np
import pytest
import torch
from scipy import ndimage
from conftest import tiny_training_run as _run

from wsi_frgnet.config import ModelConfig, PostprocessConfig, TargetConfig
from wsi_frgnet.engine.inference import load_model, predict_image
from wsi_frgnet.errors import InputError
from wsi_frgnet.eval.metrics import score_instances
from wsi_frgnet.model import FrgNet
from wsi_frgnet.model.losses import frgnet_loss
from wsi_frgnet.model.model_file import load_checkpoint
from wsi_frgnet.synthetic import synthetic_nuclei
from wsi_frgnet.train import loop as training_module
from wsi_frgnet.train.crops import LabelledArray, RandomCrops
from wsi_frgnet.train.loop import learning_rate_factor, optimise, train


def test_tiny_model_overfits_one_image(overfitted_model):
    run, image, summary = overfitted_model
    assert summary["best_pq"] >= 0.8
    model = load_model(run.output)
    scores = score_instances(image.labels, model.segment(image.rgb))
    assert scores.pq >= 0.8
    assert scores.aji >= 0.8


def test_saved_model_is_the_trained_model(tmp_path):
    """The file written at the end of training rebuilds the very network that was trained: same
    weights, same BatchNorm statistics, same outputs, and inference settings as configured."""
    rgb, labels = synthetic_nuclei(128, 128, seed=2)
    run = _run(tmp_path / "model.pt", epochs=2)
    trained = FrgNet(run.model_config)
    dataset = RandomCrops([LabelledArray("one", rgb, labels)], 128, run.model_config, run.targets, seed=0)
    optimise(run, trained, dataset, [], frgnet_loss, trainable=None)  # no validation: the last epoch is written
    checkpoint = load_checkpoint(run.output)
    assert checkpoint.microns_per_pixel == 0.25
    assert checkpoint.postprocess == PostprocessConfig(score_threshold=0.5)
    assert checkpoint.model_config == run.model_config
    for name, value in trained.state_dict().items():
        assert torch.equal(checkpoint.state_dict[name], value), name
    loaded = load_model(run.output)
    inputs = torch.rand(2, 3, 64, 64)
    trained.eval()
    with torch.no_grad():
        expected, actual = trained(inputs), loaded.network(inputs)
    for field in ("score_logits", "location", "fourier", "refinement", "guide_logits"):
        torch.testing.assert_close(getattr(actual, field), getattr(expected, field), rtol=1e-5, atol=1e-5)
    prediction = predict_image(trained, rgb, run.postprocess, run.mean, run.std)
    assert np.array_equal(prediction.label_map(), loaded.segment(rgb))


def test_training_log_has_one_row_per_epoch(overfitted_model):
    run, _, _ = overfitted_model
    rows = [json.loads(line) for line in run.log_path.read_text().splitlines()]
    assert [row["epoch"] for row in rows] == list(range(1, 61))
    assert rows[-1]["loss_total"] < rows[0]["loss_total"]
    assert "val_pq" in rows[-1]


@pytest.mark.parametrize("weight_average", [0.0, 0.9])
def test_resume_continues_where_it_stopped(tmp_path, monkeypatch, weight_average):
    rgb, labels = synthetic_nuclei(128, 128, seed=3)
    image = LabelledArray("a", rgb, labels)

    def run(name):
        configured = _run(tmp_path / name, epochs=4, validate_every=1)
        configured.training = type(configured.training)(**{**vars(configured.training), "weight_average": weight_average})
        return configured

    straight = run("straight.pt")
    train(straight, [image], [])

    original_save_state = training_module._save_state

    def interrupt_after_second_epoch(*args):
        original_save_state(*args)
        if args[5] == 2:  # epochs done
            raise KeyboardInterrupt

    monkeypatch.setattr(training_module, "_save_state", interrupt_after_second_epoch)
    interrupted = run("split.pt")
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, [image], [])
    monkeypatch.undo()
    resumed = run("split.pt")
    resumed.resume = True
    train(resumed, [image], [])
    rows = [json.loads(line) for line in resumed.log_path.read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    # Same seed, same data: the resumed run ends with the same weights (and average) as the straight one.
    a = load_checkpoint(straight.output).state_dict
    b = load_checkpoint(resumed.output).state_dict
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), atol=1e-5), name


def test_resume_refuses_a_state_of_other_settings(tmp_path):
    image = LabelledArray("a", *synthetic_nuclei(64, 64))
    train(_run(tmp_path / "m.pt", epochs=1), [image], [])
    other = _run(tmp_path / "m.pt", epochs=2, batch_size=2)
    other.resume = True
    with pytest.raises(InputError, match="m.resume.pt: belongs to a run with other settings \\(training\\)"):
        train(other, [image], [])


def test_resume_refuses_auto_precision_resolved_otherwise(tmp_path, monkeypatch):
    # "auto" picked fp32 where the run started; where it resumes, it would pick bf16.
    image = LabelledArray("a", *synthetic_nuclei(64, 64))
    first = _run(tmp_path / "m.pt", epochs=1)
    first.training = type(first.training)(**{**vars(first.training), "precision": "auto"})
    monkeypatch.setattr(training_module, "autocast_dtype", lambda *args, **kwargs: None)
    train(first, [image], [])
    monkeypatch.setattr(training_module, "autocast_dtype", lambda *args, **kwargs: torch.bfloat16)
    again = _run(tmp_path / "m.pt", epochs=2)
    again.training = type(again.training)(**{**vars(again.training), "precision": "auto", "epochs": 2})
    again.resume = True
    with pytest.raises(InputError, match="precision_used"):
        train(again, [image], [])


def test_resume_without_state_is_a_clear_error(tmp_path):
    run = _run(tmp_path / "never.pt", epochs=1)
    run.resume = True
    with pytest.raises(InputError, match="never.resume.pt: no such file"):
        train(run, [LabelledArray("a", *synthetic_nuclei(64, 64))], [])


def test_learning_rate_warms_up_then_decays():
    factors = [learning_rate_factor(step, 10, 100) for step in range(100)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[9] == pytest.approx(1.0)
    assert all(later <= earlier for earlier, later in zip(factors[9:], factors[10:]))
    assert factors[-1] == pytest.approx(0.01, abs=0.002)


def test_crops_are_reproducible_and_cover_the_image_area():
    rgb, labels = synthetic_nuclei(300, 200, seed=5)
    dataset = RandomCrops([LabelledArray("a", rgb, labels)], 64, ModelConfig.tiny(), TargetConfig(), seed=7)
    assert len(dataset) == int(np.ceil(300 * 200 / 64**2))
    first, again = dataset[3], dataset[3]
    assert np.array_equal(first[0], again[0])
    dataset.set_epoch(1)
    assert not np.array_equal(first[0], dataset[3][0])


def test_scanner_augmentation_changes_pixels_not_outlines():
    from wsi_frgnet.train.augment import (
        blur,
        jpeg_round_trip,
        resolution_round_trip,
        scanner_jitter,
    )

    rgb, labels = synthetic_nuclei(128, 128, seed=7)
    assert jpeg_round_trip(rgb, 60).shape == rgb.shape and not np.array_equal(jpeg_round_trip(rgb, 60), rgb)
    detail = lambda image: np.abs(np.diff(image.astype(float), axis=1)).mean()  # noqa: E731
    assert detail(resolution_round_trip(rgb, 0.5)) < 0.8 * detail(rgb) and detail(blur(rgb, 1.0)) < 0.8 * detail(rgb)
    changed = [not np.array_equal(scanner_jitter(rgb, np.random.default_rng(seed)), rgb) for seed in range(8)]
    assert sum(changed) >= 6
    config = ModelConfig.tiny()
    plain = RandomCrops([LabelledArray("a", rgb, labels)], 128, config, TargetConfig(), seed=3)
    scanned = RandomCrops([LabelledArray("a", rgb, labels)], 128, config, TargetConfig(), seed=3, scanner=True)
    (image_a, a), (image_b, b) = plain[0], scanned[0]
    assert not np.array_equal(image_a, image_b)
    assert np.array_equal(a.score, b.score) and np.array_equal(a.contours, b.contours)


def test_fibre_artefacts_darken_background_only_and_keep_targets():
    from wsi_frgnet.train.augment import fibre_artefacts

    rgb, labels = synthetic_nuclei(128, 128, seed=7)
    drawn = [fibre_artefacts(rgb, labels, np.random.default_rng(seed)) for seed in range(6)]
    near_nuclei = ndimage.binary_dilation(labels > 0, iterations=2)
    for image in drawn:
        assert image.shape == rgb.shape and image.dtype == np.uint8
        assert np.array_equal(image[near_nuclei], rgb[near_nuclei])  # nuclei untouched
        assert np.all(image.astype(int) <= rgb.astype(int) + 1)  # fibres only add stain
    changed = [(image.astype(int).sum(axis=2) < rgb.astype(int).sum(axis=2) - 150) for image in drawn]
    assert sum(mask.any() for mask in changed) >= 5  # dark strokes in (almost) every draw
    config = ModelConfig.tiny()
    plain = RandomCrops([LabelledArray("a", rgb, labels)], 128, config, TargetConfig(), seed=3)
    fibred = RandomCrops([LabelledArray("a", rgb, labels)], 128, config, TargetConfig(), seed=3, fibres=True)
    differs = 0
    for epoch in range(6):  # one crop per epoch
        plain.set_epoch(epoch), fibred.set_epoch(epoch)
        (image_a, a), (image_b, b) = plain[0], fibred[0]
        differs += not np.array_equal(image_a, image_b)
        assert np.array_equal(a.score, b.score) and np.array_equal(a.contours, b.contours) and np.array_equal(a.centres, b.centres)
    assert differs >= 2


def test_resize_crop_keeps_labels_on_their_pixels():
    from wsi_frgnet.train.crops import resize_crop

    rgb, labels = synthetic_nuclei(96, 96, seed=4)
    rgb = np.repeat(np.where(labels[..., None] > 0, 0, 255).astype(np.uint8), 3, axis=2)  # black nuclei on white
    image, resized, unknown = resize_crop(rgb, labels, labels > 0, 64)
    assert image.shape == (64, 64, 3) and resized.shape == unknown.shape == (64, 64)
    assert np.array_equal(unknown, resized > 0)
    assert image[resized > 0].mean() < 80 and image[resized == 0].mean() > 175  # image and labels stay registered
    # every nucleus that fills whole 2x2 blocks survives, at about (64 / 96)² of its area
    kept = [i for i in np.unique(labels)[1:] if (labels == i).sum() > 40]
    ratios = [(resized == i).sum() / (labels == i).sum() for i in kept]
    assert kept and np.allclose(ratios, (64 / 96) ** 2, rtol=0.3)


def test_scale_jitter_zooms_crops_and_keeps_their_nuclei():
    rgb, labels = synthetic_nuclei(320, 320, seed=8)
    config = ModelConfig.tiny()
    plain = RandomCrops([LabelledArray("a", rgb, labels)], 128, config, TargetConfig(), seed=3)
    zoomed = RandomCrops([LabelledArray("a", rgb, labels)], 128, config, TargetConfig(), seed=3, scale_jitter=0.3)
    zooms = [zoomed._crop(zoomed.images[0], np.random.default_rng(seed))[3] for seed in range(40)]
    assert 0.7 <= min(zooms) < 0.85 and 1.15 < max(zooms) <= 1.3
    assert all(plain._crop(plain.images[0], np.random.default_rng(seed))[3] == 1.0 for seed in range(5))
    # the whole-image area rule scales with the zoom, so shrunk nuclei are still taught
    taught = [len(zoomed[i][1].centres) for i in range(len(zoomed))]
    untouched = [len(plain[i][1].centres) for i in range(len(plain))]
    assert sum(taught) >= 0.8 * sum(untouched)
    sample = zoomed[0][0]
    assert sample.shape == (128, 128, 3)


def test_training_with_scale_jitter_records_the_coarsest_working_resolution(tmp_path):
    rgb, labels = synthetic_nuclei(128, 128, seed=2)
    run = _run(tmp_path / "m.pt", epochs=1, scale_jitter=0.3)
    train(run, [LabelledArray("a", rgb, labels)], [])
    assert load_checkpoint(run.output).coarsest_microns_per_pixel == pytest.approx(run.microns_per_pixel / 0.7, rel=1e-3)
    plain = _run(tmp_path / "p.pt", epochs=1)
    train(plain, [LabelledArray("a", rgb, labels)], [])
    assert load_checkpoint(plain.output).coarsest_microns_per_pixel is None


def test_weight_average_is_what_is_saved(tmp_path):
    rgb, labels = synthetic_nuclei(128, 128, seed=2)
    run = _run(tmp_path / "model.pt", epochs=2)
    run.training = type(run.training)(**{**vars(run.training), "weight_average": 0.5})
    trained = FrgNet(run.model_config)
    dataset = RandomCrops([LabelledArray("one", rgb, labels)], 128, run.model_config, run.targets, seed=0)
    optimise(run, trained, dataset, [], frgnet_loss, trainable=None)
    saved = load_checkpoint(run.output).state_dict
    weights = {name: value for name, value in trained.state_dict().items() if value.is_floating_point()}
    assert set(saved) == set(trained.state_dict())
    assert any(not torch.equal(saved[name], value) for name, value in weights.items())  # the average, not the last step
    assert load_model(run.output).segment(rgb).shape == labels.shape
