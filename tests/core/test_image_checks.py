import numpy as np
import pytest

from napari_atomnet.core.image import InvalidImageError, as_analysis_image


def test_accepts_any_real_dtype():
    for dtype in (np.uint8, np.uint16, np.int32, np.float64, np.float32):
        img = as_analysis_image(np.arange(100, dtype=dtype).reshape(10, 10))
        assert img.dtype == np.float32 and img.shape == (10, 10)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.zeros((16, 16, 3)), "RGB"),
        (np.zeros((5, 16, 16)), "stack of 5 frames"),
        (np.zeros((0, 10)), "empty"),
        (np.zeros(100), "2D"),
        (np.full((16, 16), 3.0), "constant"),
        (np.where(np.eye(16) > 0, np.nan, 1.0), "16 NaN"),
        (np.ones((16, 16)) * (1 + 1j), "non-real"),
    ],
)
def test_rejects_bad_images_with_a_clear_message(data, message):
    with pytest.raises(InvalidImageError, match=message):
        as_analysis_image(data)


def test_napari_rgb_flag_wins():
    with pytest.raises(InvalidImageError, match="RGB"):
        as_analysis_image(np.random.default_rng(0).random((16, 16)), rgb=True)
