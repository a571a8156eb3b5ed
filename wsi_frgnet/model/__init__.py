"""The FrGNet network and its differentiable contour math."""

from wsi_frgnet.model.frgnet import FrgNet, NetworkOutput

__all__ = ["FrgNet", "NetworkOutput"]
