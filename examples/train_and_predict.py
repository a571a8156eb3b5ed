"""Train a tiny FrGNet on synthetic images, save it, load it back and segment a new image.

Run: python examples/train_and_predict.py   (a minute or two on a laptop CPU)
"""

import tempfile
from pathlib import Path

from wsi_frgnet.config import ModelConfig, PostprocessConfig, TrainingConfig
from wsi_frgnet.engine.inference import load_model
from wsi_frgnet.eval.metrics import score_instances
from wsi_frgnet.io.images import write_label_map, write_png
from wsi_frgnet.synthetic import synthetic_nuclei
from wsi_frgnet.train.loop import TrainingRun, train_from_folder

with tempfile.TemporaryDirectory() as folder:
    data = Path(folder) / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    for seed in range(3):
        rgb, labels = synthetic_nuclei(192, 192, seed=seed)
        write_png(data / "images" / f"tile{seed}.png", rgb)
        write_label_map(data / "labels" / f"tile{seed}.png", labels)

    run = TrainingRun(
        output=Path(folder) / "model.pt",
        model_config=ModelConfig.tiny(),
        training=TrainingConfig(epochs=40, batch_size=4, crop_size=128, learning_rate=0.01, workers=0, validate_every=40),
        postprocess=PostprocessConfig(score_threshold=0.5),
        microns_per_pixel=0.25,
        quiet=True,
    )
    summary = train_from_folder(run, data, validation_fraction=0.34)
    print(f"trained in {summary['seconds']:.0f} s, validation PQ {summary['best_pq']:.2f}")

    model = load_model(run.output)
    rgb, truth = synthetic_nuclei(256, 256, seed=99)
    prediction = model.predict(rgb)
    scores = score_instances(truth, prediction.label_map())
    print(f"new image: {len(prediction.nuclei)} nuclei found, {int(truth.max())} true; PQ {scores.pq:.2f}, AJI {scores.aji:.2f}")
