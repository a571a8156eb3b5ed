"""Unlabelled-domain adaptation: only the guide head moves; the result is a normal model."""

import numpy as np
import tifffile
import pytest
import torch
from click.testing import CliRunner
from slide_factory import write_pyramidal_tiff
from wsi_frgnet.cli.main import main

from wsi_frgnet.config import SegmentConfig
from wsi_frgnet.engine.inference import load_model
from wsi_frgnet.engine.pipeline import segment_slide
from wsi_frgnet.model.model_file import file_sha256, load_checkpoint
from wsi_frgnet.synthetic import synthetic_nuclei

FAST = ["--tiles-per-slide", "4", "--tile-size", "128", "--epochs", "2", "--batch-size", "2", "--learning-rate", "0.05", "--quiet"]


@pytest.fixture(scope="module")
def other_lab_slide(tmp_path_factory):
    """A slide from another "lab": bluer stain, slightly blurred."""
    rgb, _ = synthetic_nuclei(384, 384, seed=21)
    shifted = np.clip(rgb.astype(np.float32) * np.array([0.85, 0.95, 1.1]) + np.array([0, 10, 0]), 0, 255).astype(np.uint8)
    return write_pyramidal_tiff(tmp_path_factory.mktemp("lab") / "lab.tiff", shifted, mpp=0.25, levels=2)


def test_only_the_guide_head_changes(tmp_path, overfitted_model, other_lab_slide):
    run, _, _ = overfitted_model
    output = tmp_path / "tuned.pt"
    result = CliRunner().invoke(main, ["finetune", "--model", str(run.output), str(other_lab_slide), "-o", str(output), *FAST])
    assert result.exit_code == 0, result.output + result.stderr
    parent, tuned = load_checkpoint(run.output), load_checkpoint(output)
    changed = [name for name in parent.state_dict if not torch.equal(parent.state_dict[name], tuned.state_dict[name])]
    assert changed and all(name.startswith("guide_head.") for name in changed)
    assert any(name.endswith("weight") for name in changed)
    frozen_buffers = [n for n in parent.state_dict if "running_" in n and not n.startswith("guide_head.")]
    assert frozen_buffers and all(torch.equal(parent.state_dict[n], tuned.state_dict[n]) for n in frozen_buffers)
    assert tuned.provenance["parent_sha256"] == file_sha256(run.output)
    assert tuned.provenance["trainable"] == "guide"
    assert list(tuned.provenance["finetune_inputs"].values()) == [4]
    assert tuned.model_config == parent.model_config and tuned.microns_per_pixel == parent.microns_per_pixel
    # It loads and segments like any other model.
    summary = segment_slide(other_lab_slide, load_model(output), SegmentConfig(tile_size=128, context=32),
                            tmp_path / "n.geojson", quiet=True)
    assert summary.nuclei > 0


def test_input_statistics_meet_the_training_colours(tmp_path, overfitted_model, other_lab_slide):
    from wsi_frgnet.engine.tissue import tissue_rgb_mean

    run, _, _ = overfitted_model
    parent = load_checkpoint(run.output)
    assert parent.data_mean is not None  # train records it
    output = tmp_path / "tuned.pt"
    result = CliRunner().invoke(main, ["finetune", "--model", str(run.output), str(other_lab_slide), "-o", str(output), *FAST])
    assert result.exit_code == 0, result.output + result.stderr
    tuned = load_checkpoint(output)
    record = tuned.provenance["input_statistics"]
    tiles_mean = np.array(record["data_mean"])
    assert np.allclose(tuned.data_mean, tiles_mean)
    # The bluer lab: its tiles' mean differs, and the normalisation moved by exactly that difference.
    shift = tiles_mean - np.array(parent.data_mean)
    assert np.abs(shift).max() > 0.02
    assert np.allclose(np.array(tuned.mean) - np.array(parent.mean), shift)
    assert tuned.std == parent.std
    # The tiles' mean is that of the tiles it read (their tissue), within sampling.
    sample_mean = tissue_rgb_mean([tifffile.imread(other_lab_slide)[..., :3]])
    assert np.allclose(tiles_mean, sample_mean, atol=0.03)

    plain = tmp_path / "plain.pt"
    result = CliRunner().invoke(main, ["finetune", "--model", str(run.output), str(other_lab_slide), "-o", str(plain), *FAST,
                                       "--no-input-statistics"])
    assert result.exit_code == 0, result.stderr
    kept = load_checkpoint(plain)
    assert kept.mean == parent.mean and "input_statistics" not in kept.provenance and kept.data_mean == parent.data_mean


def test_input_statistics_need_the_training_colours(tmp_path, overfitted_model, other_lab_slide):
    from dataclasses import replace

    from wsi_frgnet.model.model_file import save_checkpoint

    run, _, _ = overfitted_model
    old = tmp_path / "old.pt"
    save_checkpoint(old, replace(load_checkpoint(run.output), data_mean=None))
    result = CliRunner().invoke(main, ["finetune", "--model", str(old), str(other_lab_slide), "-o", str(tmp_path / "t.pt"), *FAST])
    assert result.exit_code == 2 and "--no-input-statistics" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "t.pt").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--freeze-all-but", "encoder"], "--freeze-all-but"),
        (["--freeze-all-but", "heads"], "needs annotated inputs"),
        (["--freeze-all-but", "none"], "needs annotated inputs"),
        (["--mpp", "0"], "--mpp"),
    ],
)
def test_bad_options(tmp_path, overfitted_model, other_lab_slide, extra, message):
    run, _, _ = overfitted_model
    result = CliRunner().invoke(main, ["finetune", "--model", str(run.output), str(other_lab_slide), "-o",
                                       str(tmp_path / "t.pt"), *FAST, *extra])
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "t.pt").exists()


def test_bad_inputs(tmp_path, overfitted_model, other_lab_slide):
    run, _, _ = overfitted_model
    glass = write_pyramidal_tiff(tmp_path / "glass.tiff", np.full((256, 256, 3), 248, np.uint8), mpp=0.25, levels=1)
    not_ours = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, not_ours)
    cases = [
        (["--model", str(tmp_path / "missing.pt"), str(other_lab_slide)], "missing.pt: no such file"),
        (["--model", str(not_ours), str(other_lab_slide)], "other.pt: not a frgnet-wsi file"),
        (["--model", str(run.output), str(glass)], "no tissue found"),
        (["--model", str(run.output), str(tmp_path / "nothing")], "nothing: no such file"),
    ]
    for arguments, message in cases:
        result = CliRunner().invoke(main, ["finetune", *arguments, "-o", str(tmp_path / "t.pt"), *FAST])
        assert result.exit_code == 2, (arguments, result.output, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr


def test_resume_from_another_parent_is_refused(tmp_path, overfitted_model, other_lab_slide):
    import shutil

    run, _, _ = overfitted_model
    other_parent = tmp_path / "other_parent.pt"
    shutil.copy(run.output, other_parent)
    with other_parent.open("ab") as handle:  # same weights, another file: another hash
        handle.write(b"\0")
    output = tmp_path / "tuned.pt"
    first = CliRunner().invoke(main, ["finetune", "--model", str(run.output), str(other_lab_slide), "-o", str(output), *FAST])
    assert first.exit_code == 0, first.stderr
    resumed = CliRunner().invoke(
        main, ["finetune", "--model", str(other_parent), str(other_lab_slide), "-o", str(output), *FAST, "--resume", "--epochs", "3"]
    )
    assert resumed.exit_code == 2 and "parent_sha256" in resumed.stderr and "Traceback" not in resumed.stderr


def test_finetuning_teaches_the_guide_the_parent_was_trained_on(overfitted_model):
    from dataclasses import replace

    from wsi_frgnet.config import TargetConfig
    from wsi_frgnet.train.finetune import parent_targets

    run, _, _ = overfitted_model
    model = load_model(run.output)
    assert parent_targets(model, TargetConfig(guide_source="haematoxylin")) == TargetConfig(**{
        **vars(TargetConfig()), **{k: tuple(v) if isinstance(v, list) else v for k, v in model.checkpoint.provenance["targets"].items()}})
    model.checkpoint = replace(model.checkpoint, provenance={"targets": {**model.checkpoint.provenance["targets"], "guide_source": "haematoxylin"}})
    assert parent_targets(model, TargetConfig()).guide_source == "haematoxylin"
    model.checkpoint = replace(model.checkpoint, provenance={"targets": {"from_the_future": 1}})
    assert parent_targets(model, TargetConfig(partial_rule="haematoxylin")).partial_rule == "haematoxylin"
    model.checkpoint = replace(model.checkpoint, provenance={})
    assert parent_targets(model, TargetConfig()) == TargetConfig()


def test_finetuning_keeps_the_parents_resolution_range(tmp_path, overfitted_model, other_lab_slide):
    from dataclasses import replace

    from wsi_frgnet.model.model_file import save_checkpoint

    run, _, _ = overfitted_model
    ranged = tmp_path / "ranged.pt"
    save_checkpoint(ranged, replace(load_checkpoint(run.output), coarsest_microns_per_pixel=0.4))
    result = CliRunner().invoke(main, ["finetune", "--model", str(ranged), str(other_lab_slide), "-o", str(tmp_path / "t.pt"), *FAST])
    assert result.exit_code == 0, result.output + result.stderr
    assert load_checkpoint(tmp_path / "t.pt").coarsest_microns_per_pixel == 0.4
