"""napari dock widgets: thin front ends over :mod:`napari_atomnet.pipeline` and friends."""

from ._detect import DetectAtomsWidget

__all__ = ["DetectAtomsWidget"]
