"""Numerical science: preprocessing, detection post-processing, refinement, lattice, metrics.

Only numpy, scipy, scikit-image and pandas are used here: no napari, Qt, torch or onnxruntime.
"""
