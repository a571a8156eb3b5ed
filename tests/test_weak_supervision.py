"""Partial annotations (METHOD_NOTES.md §4): kept share, targets that never teach unlabelled nuclei as background."""

import numpy as np
import pytest
import torch

from wsi_frgnet.config import ModelConfig, TargetConfig
from wsi_frgnet.model.losses import score_loss
from wsi_frgnet.synthetic import synthetic_nuclei
from wsi_frgnet.train.crops import LabelledArray, RandomCrops, kept_instances
from wsi_frgnet.train.targets import build_targets


def test_kept_instances_are_seeded_and_keep_the_requested_share():
    labels = np.arange(100, dtype=np.int32).reshape(10, 10)  # ids 1..99 and background 0
    kept = kept_instances(labels, 0.3, seed=1, image_index=0)
    assert len(kept) == round(0.3 * 99) and set(kept) <= set(range(1, 100))
    assert np.array_equal(kept, kept_instances(labels, 0.3, seed=1, image_index=0))
    assert not np.array_equal(kept, kept_instances(labels, 0.3, seed=2, image_index=0))
    assert not np.array_equal(kept, kept_instances(labels, 0.3, seed=1, image_index=1))
    assert len(kept_instances(labels, 1.0, seed=1, image_index=0)) == 99


def test_unlabelled_nuclei_are_ignored_not_background():
    config = ModelConfig.tiny(guide="hard")
    rgb, labels = synthetic_nuclei(128, 128, seed=2)
    dropped = np.unique(labels)[1::2]  # every other nucleus loses its annotation
    partial_labels = np.where(np.isin(labels, dropped), 0, labels)
    full = build_targets(rgb, partial_labels, config, TargetConfig())
    partial = build_targets(rgb, partial_labels, config, TargetConfig(), partial=True)
    stride = config.head_stride
    centres = [np.argwhere(labels == i).mean(axis=0) // stride for i in dropped]
    cells = tuple(np.array(centres, dtype=int).T)
    # Without the rule the dropped nuclei are taught as background; with it they are ignored.
    assert (full.score_weight[cells] == 1).all() and (full.score[cells] == 0).all()
    assert (partial.score_weight[cells] == 0).all()
    # Kept nuclei are still taught, and clear background is still background.
    assert partial.score.sum() == full.score.sum() > 0
    assert partial.score_weight[0, 0] == 1 or labels[:stride, :stride].any()
    assert set(np.unique(partial.guide)) <= {0.0, 1.0}


def test_score_loss_is_blind_to_unlabelled_nuclei():
    config = ModelConfig.tiny(guide="hard")
    rgb, labels = synthetic_nuclei(128, 128, seed=3)
    dropped = np.unique(labels)[1::3]
    targets = build_targets(rgb, np.where(np.isin(labels, dropped), 0, labels), config, TargetConfig(), partial=True)
    target, weight = torch.from_numpy(targets.score), torch.from_numpy(targets.score_weight)
    logits = torch.zeros_like(target)
    before = score_loss(logits, target, weight)
    ignored_background = (weight == 0) & (target == 0)
    assert ignored_background.any()
    logits[ignored_background] = 10.0  # confident "nucleus" where an unlabelled nucleus lies
    assert torch.equal(score_loss(logits, target, weight), before)


def test_crops_with_keep_fraction_use_only_kept_instances():
    rgb, labels = synthetic_nuclei(128, 128, seed=4)
    dataset = RandomCrops([LabelledArray("a", rgb, labels)], 128, ModelConfig.tiny(guide="hard"), TargetConfig(), seed=0,
                          augment=False, keep_fraction=0.5)
    _, targets = dataset[0]
    assert len(targets.centres) == round(0.5 * labels.max())


def _coverage(rgb: np.ndarray, labels: np.ndarray, fraction: float, rule: str = "haematoxylin") -> tuple[float, float, np.ndarray, object, object]:
    """(share of unlabelled nuclei's score cells taught as background, share of true-background
    cells ignored, kept ids, partial targets, full targets) with ``fraction`` of the nuclei kept."""
    config = ModelConfig.tiny(guide="hard")
    kept = kept_instances(labels, fraction, seed=0, image_index=0)
    partial = build_targets(rgb, np.where(np.isin(labels, kept), labels, 0), config, TargetConfig(partial_rule=rule), partial=True)
    full = build_targets(rgb, labels, config, TargetConfig())
    stride = config.head_stride
    height, width = labels.shape
    unlabelled_cells = (full.score == 1) & (partial.score == 0)
    any_nucleus = (labels > 0).reshape(height // stride, stride, width // stride, stride).any(axis=(1, 3))
    taught = (unlabelled_cells & (partial.score_weight == 1)).sum() / max(1, unlabelled_cells.sum())
    ignored = (~any_nucleus & (partial.score_weight == 0)).sum() / max(1, (~any_nucleus).sum())
    return float(taught), float(ignored), kept, partial, full


def test_partial_rule_on_real_he_keeps_labelled_nuclei_and_most_background(he_crops):
    for name, rgb, labels in he_crops:
        _, ignored, kept, partial, full = _coverage(rgb, labels, 0.3)
        owners = np.unique(labels[labels > 0])
        assert len(kept) == round(0.3 * len(owners))
        # Every kept nucleus is still taught where it was under full labels.
        kept_cells = partial.score == 1
        assert kept_cells.sum() > 0 and (partial.score_weight[kept_cells] == 1).all(), name
        assert ignored <= 0.15, name


@pytest.mark.parametrize(("rule", "taught_at_most", "ignored_at_most"), [("haematoxylin", 0.10, 0.15), ("guide", 1.0, 0.15)])
def test_partial_rule_on_real_he_does_not_teach_unlabelled_nuclei_as_background(he_crops, rule, taught_at_most, ignored_at_most):
    """The haematoxylin rule keeps its promise on real stains (at most 10 % of the unlabelled nuclei's
    score cells taught as background, 15 % of the true background ignored, over the crops); the
    paper's guide rule, the default for its better PQ, does not (53-99 % taught as background here)."""
    taught, ignored = zip(*(_coverage(rgb, labels, 0.3, rule)[:2] for _, rgb, labels in he_crops))
    assert np.mean(taught) <= taught_at_most and np.mean(ignored) <= ignored_at_most, (taught, ignored)
    if rule == "guide":
        assert np.mean(taught) > 0.5  # what docs/RESULTS.md measures against its accuracy


def test_models_trained_on_partial_labels_are_saved_without_the_guide_filter(tmp_path):
    from conftest import tiny_training_run

    from wsi_frgnet.model.model_file import load_checkpoint
    from wsi_frgnet.train.loop import train

    rgb, labels = synthetic_nuclei(128, 128, seed=5)
    images = [LabelledArray("a", rgb, labels)]
    for keep_fraction, expected in ((0.5, 0.0), (1.0, 0.5)):
        run = tiny_training_run(tmp_path / f"keep{keep_fraction}.pt", 1, keep_fraction=keep_fraction)
        assert run.postprocess.guide_threshold == 0.5
        train(run, images, [])
        assert load_checkpoint(run.output).postprocess.guide_threshold == expected
    partial = tiny_training_run(tmp_path / "partial.pt", 1)
    train(partial, [LabelledArray("a", rgb, labels, partial=True)], [])
    assert load_checkpoint(partial.output).postprocess.guide_threshold == 0.0
