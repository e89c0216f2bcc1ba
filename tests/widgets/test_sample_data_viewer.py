"""The sample-data contributions open in a real napari viewer (run under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_atomnet._samples import SAMPLES

pytestmark = pytest.mark.gui


@pytest.mark.parametrize("key", list(SAMPLES))
def test_sample_opens_with_truth_layers(make_napari_viewer, key):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-atomnet", key)
    names = [layer.name for layer in layers]
    assert names == [key, f"Truth ({key})"]
    image, truth = viewer.layers[key], viewer.layers[f"Truth ({key})"]
    assert image.data.ndim == 2
    np.testing.assert_allclose(truth.scale, image.scale)
    if SAMPLES[key].kind == "atoms":
        assert {"y", "x", "class"} <= set(truth.features.columns)
        assert len(truth.features) == len(truth.data) > 50
    else:
        assert truth.data.max() == len(truth.features)


def test_screenshot_shows_the_image_not_black(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-atomnet", "perovskite_haadf")
    viewer.layers["Truth (perovskite_haadf)"].visible = True
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot.shape[2] == 4
    rgb = shot[..., :3].astype(float)
    # the image fills much of the canvas and has real contrast (a black or blank canvas fails)
    assert rgb.mean() > 30, rgb.mean()
    assert rgb.std() > 20, rgb.std()
    # the truth points are drawn in colour on the grey image
    colourful = (np.ptp(rgb, axis=2) > 60).mean()
    assert colourful > 0.002, colourful
