"""napari dock widgets: thin front ends over :mod:`napari_atomnet.pipeline` and friends."""

from ._curate import CurateAtomsWidget
from ._detect import DetectAtomsWidget
from ._lattice import LatticeWidget

__all__ = ["CurateAtomsWidget", "DetectAtomsWidget", "LatticeWidget"]
