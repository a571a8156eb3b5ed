"""``frgnet-wsi guide IMAGE -o guide.png``."""

from __future__ import annotations

from pathlib import Path

import click
from wsi_frgnet.cli.common import handles_user_errors

from wsi_frgnet.config import TargetConfig


@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="Guide mask to write (.png, 8-bit grey).")
@click.option("--radius", type=click.IntRange(min=0), default=TargetConfig.guide_radius, show_default=True, help="High-pass radius R in the centred spectrum.")
@handles_user_errors
def guide(image: Path, output: Path, radius: int) -> None:
    """Write the training-free Fourier guide of IMAGE: bright where nuclei are.

    Luminance → FFT → frequencies within RADIUS of the centre removed → inverse FFT →
    magnitude, scaled to 0-255. No model needed.
    """
    import numpy as np

    from wsi_frgnet.io.images import read_rgb, write_png
    from wsi_frgnet.model.guide import fourier_guide

    values = fourier_guide(read_rgb(image), radius)
    write_png(output, np.round(values * 255).astype(np.uint8))
    click.echo(f"Wrote {output}")
