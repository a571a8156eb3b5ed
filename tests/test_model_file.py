"""Model files: what they hold, and that every format ever written keeps loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wsi_frgnet.config import ModelConfig, PostprocessConfig
from wsi_frgnet.engine.inference import load_model
from wsi_frgnet.errors import InputError
from wsi_frgnet.model.model_file import (
    FORMAT_VERSION,
    ModelCheckpoint,
    load_checkpoint,
    read_payload,
    save_checkpoint,
)

FIXTURES = Path(__file__).parent / "data"
VERSION_1 = FIXTURES / "model_v1_tiny.pt"  # written by frgnet-wsi 0.1.0 (format 1): a tiny, untrained network


def test_a_version_1_file_still_loads_with_its_settings():
    checkpoint = load_checkpoint(VERSION_1)
    assert checkpoint.model_config == ModelConfig.tiny()
    assert checkpoint.microns_per_pixel == 0.25
    assert checkpoint.mean == (0.7, 0.5, 0.7) and checkpoint.std == (0.15, 0.2, 0.15)
    assert checkpoint.postprocess == PostprocessConfig(score_threshold=0.8, nms_threshold=0.25, guide_threshold=0.4)
    assert checkpoint.provenance["epochs"] == 0
    raw = torch.load(VERSION_1, weights_only=True)
    assert raw["format_version"] == 1 and "normalisation" in raw  # the fixture really is format 1
    network = checkpoint.build_model()
    for name, value in raw["state_dict"].items():
        assert torch.equal(network.state_dict()[name], value), name


def test_a_version_1_file_migrates_to_the_current_format(tmp_path):
    payload = read_payload(VERSION_1, "model")
    assert payload["format_version"] == FORMAT_VERSION
    assert payload["input"] == {"microns_per_pixel": 0.25, "mean": [0.7, 0.5, 0.7], "std": [0.15, 0.2, 0.15]}
    assert "normalisation" not in payload and "microns_per_pixel" not in payload
    # Saved again, it is a current file with the same contents.
    again = tmp_path / "again.pt"
    save_checkpoint(again, load_checkpoint(VERSION_1))
    raw = torch.load(again, weights_only=True)
    assert raw["format_version"] == FORMAT_VERSION and raw["written_by"].startswith("frgnet-wsi ")
    assert load_checkpoint(again).postprocess == load_checkpoint(VERSION_1).postprocess
    model = load_model(again)
    assert model.checkpoint.microns_per_pixel == 0.25


def _rewritten(tmp_path: Path, change) -> Path:
    payload = read_payload(VERSION_1, "model")
    change(payload)
    path = tmp_path / "changed.pt"
    torch.save(payload, path)
    return path


def test_a_newer_format_is_refused_clearly(tmp_path):
    path = _rewritten(tmp_path, lambda payload: payload.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(InputError, match="newer frgnet-wsi"):
        load_checkpoint(path)


def test_unknown_fields_are_refused_clearly(tmp_path):
    path = _rewritten(tmp_path, lambda payload: payload.update(calibration={"temperature": 1.3}))
    with pytest.raises(InputError, match=r"does not know \(calibration\).*newer"):
        load_checkpoint(path)
    path = _rewritten(tmp_path, lambda payload: payload["model_config"].update(attention_heads=4))
    with pytest.raises(InputError, match="unknown ModelConfig fields: attention_heads.*newer"):
        load_checkpoint(path)


def test_a_damaged_version_1_file_is_a_clear_error(tmp_path):
    payload = torch.load(VERSION_1, weights_only=True)
    del payload["normalisation"]
    path = tmp_path / "damaged.pt"
    torch.save(payload, path)
    with pytest.raises(InputError, match="damaged"):
        load_checkpoint(path)


def test_round_trip_keeps_every_field(tmp_path):
    torch.manual_seed(1)
    from wsi_frgnet.model import FrgNet

    network = FrgNet(ModelConfig.tiny(guide="hard"))
    original = ModelCheckpoint(ModelConfig.tiny(guide="hard"), network.state_dict(), 0.5, PostprocessConfig(0.7, 0.4, 0.0),
                               (0.6, 0.5, 0.6), (0.2, 0.2, 0.2), {"data": "lab"}, data_mean=(0.65, 0.44, 0.6),
                               coarsest_microns_per_pixel=0.7)
    save_checkpoint(tmp_path / "m.pt", original)
    loaded = load_checkpoint(tmp_path / "m.pt")
    fields = ("model_config", "microns_per_pixel", "postprocess", "mean", "std", "provenance", "data_mean",
              "coarsest_microns_per_pixel")
    assert [getattr(loaded, f) for f in fields] == [getattr(original, f) for f in fields]


def test_the_shipped_model_records_its_training_colours():
    from wsi_frgnet.engine.inference import default_model_path

    shipped = load_checkpoint(default_model_path())
    assert shipped.data_mean is not None and all(0.3 < value < 0.8 for value in shipped.data_mean)


@pytest.mark.parametrize(
    ("model_mpp", "coarsest", "image_mpp", "working"),
    [
        (0.25, 0.357, 0.5, 0.357),  # a 20x slide: as coarse as the model was trained for
        (0.25, 0.357, 0.3, 0.3),  # inside the range: the image as it is
        (0.25, 0.357, 0.125, 0.25),  # finer than the model: down to the model's
        (0.25, None, 0.5, 0.25),  # no range: always the model's own
        (None, None, 0.5, 0.5),  # a model without µm/px takes images as they are
        (0.25, 0.357, None, 0.25),
    ],
)
def test_working_resolution(model_mpp, coarsest, image_mpp, working):
    checkpoint = ModelCheckpoint(ModelConfig.tiny(), {}, model_mpp, coarsest_microns_per_pixel=coarsest)
    assert checkpoint.working_microns_per_pixel(image_mpp) == working


def test_the_shipped_model_reads_20x_slides_at_its_coarsest_trained_resolution():
    from wsi_frgnet.engine.inference import default_model_path

    shipped = load_checkpoint(default_model_path())
    assert shipped.coarsest_microns_per_pixel is not None
    assert shipped.microns_per_pixel < shipped.coarsest_microns_per_pixel < 0.5
    assert shipped.working_microns_per_pixel(0.5) == shipped.coarsest_microns_per_pixel  # a 20x slide
    assert shipped.working_microns_per_pixel(0.25) == shipped.microns_per_pixel  # a 40x slide
