"""Training of napari-atomnet's models (torch; install the ``[train]`` extra).

Only this subpackage imports torch, and only inside the modules that need it: importing
``napari_atomnet.training`` (or :mod:`~napari_atomnet.training.data`, which simulates training
images with numpy) works without torch; :mod:`~napari_atomnet.training.nets`,
:mod:`~napari_atomnet.training.export` and :mod:`~napari_atomnet.training.train_detector` need
``pip install napari-atomnet[train]`` (torch, onnx).

Modules
-------
nets
    :class:`~napari_atomnet.training.nets.AtomDetector`, the centre-heatmap U-Net.
data
    Simulated training images and targets (synth only), held-out validation images.
train_detector
    ``python -m napari_atomnet.training.train_detector --out DIR --seed 0``.
export
    :func:`~napari_atomnet.training.export.export_detector`: ONNX + model card.
finetune
    :func:`~napari_atomnet.training.finetune.fine_tune_detector`: continue training a detector
    on exported, corrected labels (``atomnet train``, the Fine-tune widget).

The particle-segmentation counterparts are the ``seg_*`` modules and ``train_segmenter``.
"""
