"""Run Atomap's 2D Gaussian refinement (in Atomap's own venv) on an image + start positions.

Usage: python _atomap_refine.py IMAGE.npy STARTS.npy OUT.npy
STARTS are (y, x) rows; OUT gets the refined (y, x) rows; prints the refinement time in seconds.
"""

import sys
import time

import atomap.api as am  # noqa: F401  (atomap wants its api imported first)
import numpy as np
from atomap.sublattice import Sublattice

image = np.load(sys.argv[1])
starts = np.load(sys.argv[2])
sub = Sublattice(starts[:, ::-1].copy(), image=image)  # Atomap uses (x, y)
sub.find_nearest_neighbors()
t0 = time.perf_counter()
sub.refine_atom_positions_using_2d_gaussian()
seconds = time.perf_counter() - t0
np.save(sys.argv[3], np.asarray(sub.atom_positions)[:, ::-1])
print(f"{seconds:.3f}")
