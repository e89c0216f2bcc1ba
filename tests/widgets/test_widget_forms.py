"""What every dock's form offers a user: a tooltip on each control (run under Xvfb)."""

from __future__ import annotations

import pytest
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    PushButton,
    SpinBox,
)

from napari_atomnet._widgets import CurateAtomsWidget, DetectAtomsWidget, LatticeWidget
from napari_atomnet._widgets._finetune import FineTuneWidget
from napari_atomnet._widgets._segment import SegmentParticlesWidget
from napari_atomnet._widgets._sequence import SequenceWidget

pytestmark = pytest.mark.gui

CONTROLS = (CheckBox, ComboBox, FileEdit, FloatSpinBox, LineEdit, PushButton, SpinBox)


def _controls(container):
    for widget in container:
        if isinstance(widget, Container):
            yield from _controls(widget)
        elif isinstance(widget, CONTROLS):
            yield widget


@pytest.mark.parametrize(
    "widget_class",
    [
        DetectAtomsWidget,
        LatticeWidget,
        CurateAtomsWidget,
        SegmentParticlesWidget,
        SequenceWidget,
        FineTuneWidget,
    ],
)
def test_every_control_explains_itself(make_napari_viewer, widget_class):
    widget = widget_class(make_napari_viewer())
    controls = list(_controls(widget))
    assert len(controls) >= 5
    silent = [c.label or getattr(c, "text", "") for c in controls if not c.tooltip]
    assert silent == []
