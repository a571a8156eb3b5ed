"""The training-free Fourier guide: nuclei light up without any model.

Run: python examples/fourier_guide.py [OUTPUT.png]
"""

import sys
from pathlib import Path

import numpy as np

from wsi_frgnet.io.images import write_png
from wsi_frgnet.model.guide import fourier_guide
from wsi_frgnet.synthetic import synthetic_nuclei

rgb, labels = synthetic_nuclei(256, 256, seed=1)
guide = fourier_guide(rgb)
inside, outside = guide[labels > 0].mean(), guide[labels == 0].mean()
print(f"mean guide inside nuclei {inside:.2f}, outside {outside:.2f}")
if len(sys.argv) > 1:
    write_png(Path(sys.argv[1]), np.round(guide * 255).astype(np.uint8))
    print(f"wrote {sys.argv[1]}")
