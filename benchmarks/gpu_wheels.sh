#!/usr/bin/env bash
# Wheels of the dependencies a GPU machine's Python 3.12 image lacks (shapely, orjson, OpenSlide,
# imagecodecs), downloaded into .whl/ (ignored by git) for benchmarks/gpu_check.sh to install
# there without a network. Run where pip reaches PyPI, from the repository root.
set -euo pipefail
mkdir -p .whl
for package in shapely==2.2.0 orjson==3.13.0 openslide-python==1.4.7 openslide-bin==4.0.1.2 imagecodecs==2026.3.6; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$package"
done
ls -l .whl
