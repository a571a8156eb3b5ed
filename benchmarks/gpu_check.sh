#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one run of at most 8 minutes; figures go to stdout and to
# $OUT (default gpu_check_out/). Run from the repository root on a machine with one GPU:
#
#     bash benchmarks/gpu_check.sh
#
# What it needs beside the repository: Python with a CUDA build of PyTorch; the project's other
# dependencies installed, or as wheels in .whl/ (installed into /tmp/site); optionally a few
# labelled validation images in gpu_data/val (images/, labels/) for the precision check, else a
# synthetic set is made. Each step has its own time limit, so one that hangs cannot eat the rest.
set -uo pipefail
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
started=$(date +%s)
step() { echo; echo "=== $1 ($(( $(date +%s) - started )) s in)"; }

step "set-up"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

step "1. CUDA tests (pytest -m cuda)"
timeout 100 python3 -m pytest -q -p no:cacheprovider -m cuda tests 2>&1 | tee "$OUT/cuda_tests.txt" | tail -15

step "2. segment throughput on a generated 40x slide, GPU utilisation sampled every 200 ms"
for layout in "1536 192 4" "1536 192 8" "512 64 32"; do
  set -- $layout
  name="tile$1_batch$3"
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 200 >"$OUT/util_$name.csv" &
  sampler=$!
  timeout 70 python3 benchmarks/segment_throughput.py --model wsi_frgnet/weights/default.pt --device cuda \
      --tissue 8192 --glass-factor 3 --tile-size "$1" --context "$2" --batch-size "$3" --repeats 1 2>&1 | tee "$OUT/segment_$name.txt" | tail -6
  kill "$sampler" 2>/dev/null
  python3 - "$OUT/util_$name.csv" <<'PY'
import sys
values = [float(v) for v in open(sys.argv[1]).read().split() if v.strip().replace(".", "").isdigit()]
busy = [v for v in values if v > 0]
print(f"GPU utilisation: mean {sum(values) / max(1, len(values)):.0f} % over {len(values)} samples, "
      f"{sum(busy) / max(1, len(busy)):.0f} % while busy")
PY
done

echo "segment --tta (mirror averaging: four network passes per tile), 1536/192 batch 4:"
timeout 60 python3 benchmarks/segment_throughput.py --model wsi_frgnet/weights/default.pt --device cuda \
    --tissue 4096 --glass-factor 3 --tile-size 1536 --context 192 --batch-size 4 --repeats 1 --tta 2>&1 | tee "$OUT/segment_tta.txt" | tail -4

step "3. bf16 / fp16 against fp32 on validation images"
data=gpu_data/val
if [ ! -d "$data/images" ]; then
  data=/tmp/gpu_check_val
  python3 - "$data" <<'PY'
import sys
from pathlib import Path
from PIL import Image
from wsi_frgnet.synthetic import synthetic_nuclei
root = Path(sys.argv[1])
for sub in ("images", "labels"):
    (root / sub).mkdir(parents=True, exist_ok=True)
for i in range(4):
    rgb, labels = synthetic_nuclei(512, 512, seed=i)
    Image.fromarray(rgb).save(root / "images" / f"s{i}.png")
    Image.fromarray(labels.astype("<u2")).save(root / "labels" / f"s{i}.png")
PY
fi
for precision in fp32 bf16 fp16; do
  echo "--precision $precision:"
  timeout 45 frgnet-wsi evaluate "$data" --device cuda --precision "$precision" --quiet 2>&1 | tee "$OUT/evaluate_$precision.txt" | grep -E "PQ|AJI"
done

step "4. training steps per second (default network, 256² crops)"
timeout 60 python3 benchmarks/train_throughput.py "$data" --device cuda --precision auto --batch-size 16 --batches 10 \
    --workers 4 2>&1 | tee "$OUT/train_throughput.txt" | tail -8

step "done"
