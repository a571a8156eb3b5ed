"""frgnet-wsi: nucleus instance segmentation of H&E images with FrGNet."""

__version__ = "0.1.0"
