"""Checks that need a CUDA GPU (marker ``cuda``; skipped without one). benchmarks/gpu_check.sh
runs them on a GPU machine together with the throughput measurements."""

from __future__ import annotations

import pytest
import torch

from wsi_frgnet.config import SegmentConfig
from wsi_frgnet.engine.devices import autocast_dtype
from wsi_frgnet.engine.inference import load_model
from wsi_frgnet.engine.pipeline import segment_slide
from wsi_frgnet.eval.metrics import score_instances
from wsi_frgnet.geometry.raster import polygons_to_label_map
from wsi_frgnet.io.geojson import read_features
from wsi_frgnet.synthetic import synthetic_nuclei

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _labels(path, shape):
    return polygons_to_label_map([f["geometry"]["coordinates"][0] for f in read_features(path)], shape)


def test_auto_precision_on_this_gpu():
    dtype = autocast_dtype("auto", torch.device("cuda"))
    assert dtype in (torch.bfloat16, torch.float16)
    if torch.cuda.is_bf16_supported(including_emulation=False):
        assert dtype is torch.bfloat16 and autocast_dtype("auto", torch.device("cuda"), training=True) is torch.bfloat16


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_segment_on_cuda_agrees_with_cpu(tmp_path, overfitted_model, precision):
    """The same slide on CUDA (each precision) and on CPU in fp32: PQ between the outputs >= 0.95."""
    from slide_factory import write_pyramidal_tiff

    run, _, _ = overfitted_model
    rgb, _ = synthetic_nuclei(384, 512, seed=11)
    slide = write_pyramidal_tiff(tmp_path / "slide.tiff", rgb, mpp=0.25, levels=2)
    config = SegmentConfig(tile_size=128, context=32, batch_size=8, precision=precision)
    segment_slide(slide, load_model(run.output, "cpu"), SegmentConfig(tile_size=128, context=32, precision="fp32"),
                  tmp_path / "cpu.geojson", quiet=True)
    segment_slide(slide, load_model(run.output, "cuda"), config, tmp_path / "cuda.geojson", quiet=True, qc=True)
    agreement = score_instances(_labels(tmp_path / "cpu.geojson", rgb.shape[:2]), _labels(tmp_path / "cuda.geojson", rgb.shape[:2]))
    assert agreement.pq >= 0.95, agreement


def test_a_training_step_on_cuda(tmp_path):
    from conftest import tiny_training_run

    from wsi_frgnet.model import FrgNet
    from wsi_frgnet.model.losses import frgnet_loss
    from wsi_frgnet.train.crops import LabelledArray, RandomCrops
    from wsi_frgnet.train.loop import optimise

    rgb, labels = synthetic_nuclei(128, 128, seed=5)
    run = tiny_training_run(tmp_path / "m.pt", epochs=1, precision="auto")
    run.device = torch.device("cuda")
    model = FrgNet(run.model_config)
    dataset = RandomCrops([LabelledArray("one", rgb, labels)] * 8, 128, run.model_config, run.targets, seed=0)
    optimise(run, model, dataset, [], frgnet_loss, trainable=None)
    assert (tmp_path / "m.pt").is_file()
