"""--precision: one choice of autocast dtype for training and inference, and what it costs in
agreement with fp32."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wsi_frgnet.engine import devices
from wsi_frgnet.engine.devices import autocast_dtype
from wsi_frgnet.engine.inference import load_model, predict_image
from wsi_frgnet.errors import InputError
from wsi_frgnet.eval.metrics import score_instances

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)


def test_explicit_choices_map_to_dtypes_on_cpu():
    assert autocast_dtype("fp32", CPU) is None
    assert autocast_dtype("bf16", CPU) is torch.bfloat16
    assert autocast_dtype("fp16", CPU) is torch.float16
    with pytest.raises(InputError, match="--precision fp64"):
        autocast_dtype("fp64", CPU)


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_cpu_follows_native_bf16(monkeypatch, native):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    assert autocast_dtype("auto", CPU) is (torch.bfloat16 if native else None)
    assert autocast_dtype("auto", CPU, training=True) is (torch.bfloat16 if native else None)


def test_cuda_capabilities_decide_auto_and_refuse_what_the_gpu_lacks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Old GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert autocast_dtype("auto", CUDA) is torch.float16
    assert autocast_dtype("auto", CUDA, training=True) is None  # fp16 training only when asked
    assert autocast_dtype("fp16", CUDA, training=True) is torch.float16
    with pytest.raises(InputError, match="--precision bf16: Old GPU has no native bf16"):
        autocast_dtype("bf16", CUDA)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (5, 0))
    with pytest.raises(InputError, match="--precision fp16"):
        autocast_dtype("fp16", CUDA)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert autocast_dtype("auto", CUDA) is torch.bfloat16
    assert autocast_dtype("auto", CUDA, training=True) is torch.bfloat16


def test_bf16_inference_agrees_with_fp32(overfitted_model):
    """Stated tolerance: on the overfitted tiny model's image, bf16 outlines match fp32 ones
    with PQ >= 0.95 between the two, and the detection probabilities differ by < 0.02."""
    run, image, _ = overfitted_model
    model = load_model(run.output)
    checkpoint = model.checkpoint
    fp32 = predict_image(model.network, image.rgb, model.postprocess, checkpoint.mean, checkpoint.std, None)
    bf16 = predict_image(model.network, image.rgb, model.postprocess, checkpoint.mean, checkpoint.std, torch.bfloat16)
    assert len(fp32.nuclei) > 20
    agreement = score_instances(fp32.label_map(), bf16.label_map())
    assert agreement.pq >= 0.95
    pairs = _matched_scores(fp32.nuclei, bf16.nuclei)
    assert len(pairs) >= 0.95 * len(fp32.nuclei)
    assert max(abs(a - b) for a, b in pairs) < 0.02


def _matched_scores(first, second) -> list[tuple[float, float]]:
    """Scores of nuclei paired by nearest centroid (within 2 px)."""
    centres = np.array([n.centroid for n in second])
    pairs = []
    for nucleus in first:
        distance = np.hypot(*(centres - np.array(nucleus.centroid)).T)
        if distance.min() < 2.0:
            pairs.append((nucleus.score, second[int(distance.argmin())].score))
    return pairs


def test_training_step_in_bf16_is_close_to_fp32(tmp_path):
    """The same first training epoch in bf16 autocast and in fp32: losses within 5 %."""
    from conftest import tiny_training_run

    from wsi_frgnet.model import FrgNet
    from wsi_frgnet.model.losses import frgnet_loss
    from wsi_frgnet.synthetic import synthetic_nuclei
    from wsi_frgnet.train.crops import LabelledArray, RandomCrops
    from wsi_frgnet.train.loop import optimise

    rgb, labels = synthetic_nuclei(128, 128, seed=5)
    losses = {}
    for precision in ("fp32", "bf16"):
        run = tiny_training_run(tmp_path / f"{precision}.pt", epochs=1, precision=precision, learning_rate=1e-4)
        torch.manual_seed(0)
        model = FrgNet(run.model_config)
        dataset = RandomCrops([LabelledArray("one", rgb, labels)] * 4, 128, run.model_config, run.targets, seed=0)
        optimise(run, model, dataset, [], frgnet_loss, trainable=None)
        rows = run.log_path.read_text().splitlines()
        losses[precision] = float(json.loads(rows[-1])["loss_total"])
    assert np.isfinite(losses["bf16"])
    assert abs(losses["bf16"] - losses["fp32"]) <= 0.05 * losses["fp32"]
