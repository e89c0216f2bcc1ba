"""napari-atomnet: deep-learning analysis of atomic-resolution (S)TEM and nanoparticle images.

The science lives in :mod:`napari_atomnet.core`, :mod:`napari_atomnet.synth`,
:mod:`napari_atomnet.io` and :mod:`napari_atomnet.models`; none of them imports napari, Qt or
torch, so they can be used from a notebook or a batch job.  The napari dock widgets live in
``napari_atomnet._widgets``.
"""

from ._version import __version__

__all__ = ["__version__"]
