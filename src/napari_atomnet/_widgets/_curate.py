"""The "Curate atoms" dock widget: fix what the model missed, fast.

- Points added to the Atoms layer by hand snap to the nearby intensity peak by a local Gaussian
  fit (toggle), and are marked ``source = "manual"``; moved points are re-snapped too.
- Undo (button, or Control-Z) restores the layer before the last add / move / delete.
- The Boxes layer follows the atoms.
- "Suggest missing atoms" predicts lattice sites without an atom that show contrast and lists them
  in a ``Suggestions (<image>)`` layer; **K** keeps (accepts) the current suggestion and **J**
  junks (rejects) it, each moving on to the next; both keys are bound with overwrite while the
  widget is open and unbound when it, or its dock, is closed.
- Counts of hand edits (added / deleted / moved / accepted) go into the layer's provenance, and so
  into every export.
- "Export labels" writes the image and the curated atoms as a folder for retraining (YOLO,
  Pascal VOC for labelImg, CSV, optional tiles, provenance; see
  :func:`napari_atomnet.io.labels.export_labels`): written whole or not at all, never over an
  existing export.  "Import labels" reads such a folder (or a labelImg / YOLO folder) back into
  an image and its Atoms and Boxes layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
)
from psygnal import Signal

from .._provenance import METADATA_KEY
from ..core.image import InvalidImageError, as_analysis_image
from . import _layers
from ._common import (
    current_frame,
    follow_atoms_layer,
    image_picker,
    notify_info,
    pixel_size_of,
    refuse,
    when_undocked,
)
from ._lattice import points_layers

if TYPE_CHECKING:
    import napari

ACCEPT_KEY = "K"
REJECT_KEY = "J"
UNDO_KEY = "Control-Z"
HISTORY = 50
FIT_COLUMNS = ("amplitude", "sigma_y", "sigma_x", "theta", "background", "fit_ok", "fit_status")


class CurateAtomsWidget(Container):
    """Hand curation of an Atoms layer, with snapping, undo and suggested missing atoms."""

    #: Emitted after every curation edit has been applied (for tests and other widgets).
    edited = Signal()

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._layer: Any = None
        self._history: list[tuple[np.ndarray, pd.DataFrame]] = []
        self._last: tuple[np.ndarray, pd.DataFrame] | None = None
        self._busy = False
        self._current = 0
        self._image = image_picker(viewer, "being curated (snapping fits on it)")
        self._atoms = ComboBox(
            label="Atoms",
            choices=lambda _w: points_layers(viewer),
            tooltip="The Points layer you edit (Detect atoms' result for the image)",
        )
        self._snap = CheckBox(
            text="Snap added / moved atoms to the peak",
            value=True,
            tooltip="A point you add or move is fitted by a 2D Gaussian and put on the peak "
            "nearby, unless that peak has an atom already",
        )
        self._undo = PushButton(
            text=f"Undo ({UNDO_KEY})",
            tooltip=f"Restore the Atoms layer as it was before the last edit ({HISTORY} steps)",
        )
        self._suggest = PushButton(
            text="Suggest missing atoms",
            tooltip="Lattice sites without an atom that show contrast, to review one by one "
            f"({ACCEPT_KEY} keep, {REJECT_KEY} junk)",
        )
        self._accept_all = PushButton(
            text="Accept all", tooltip="Add every remaining suggestion to the atoms"
        )
        self._reject_all = PushButton(text="Reject all", tooltip="Drop every remaining suggestion")
        self._status = Label(value="")
        self._status.native.setWordWrap(True)
        help_text = Label(
            value=f"Suggestions: {ACCEPT_KEY} keep, {REJECT_KEY} junk (each moves on to the next)."
        )
        help_text.native.setWordWrap(True)
        self._export_dir = FileEdit(
            label="Export to",
            mode="d",
            tooltip="Folder in which the export folder is made (for fine-tuning)",
        )
        self._export_name = LineEdit(
            label="Export name",
            tooltip="Name of the export folder (never written over an existing one)",
        )
        self._tiles = CheckBox(
            text="Also cut tiles",
            value=False,
            tooltip="Also write the image and labels cut into tiles (for training tools that "
            "want fixed-size images)",
        )
        self._tile_size = SpinBox(
            label="Tile size (px)",
            min=32,
            max=8192,
            step=32,
            value=416,
            tooltip="Side of the square tiles",
        )
        self._export = PushButton(
            text="Export labels",
            tooltip="Write the image and the curated atoms as YOLO, Pascal VOC (labelImg) and "
            "CSV labels, with their provenance",
        )
        self._import_path = FileEdit(
            label="Import from",
            mode="d",
            tooltip="An export folder, a labelImg (VOC) or a YOLO label folder",
        )
        self._import = PushButton(
            text="Import labels",
            tooltip="Open the folder's image with its atoms and boxes as layers",
        )
        self.extend(
            [
                self._image,
                self._atoms,
                self._snap,
                Container(widgets=[self._undo, self._suggest], layout="horizontal", labels=False),
                Container(
                    widgets=[self._accept_all, self._reject_all], layout="horizontal", labels=False
                ),
                help_text,
                self._export_dir,
                self._export_name,
                Container(widgets=[self._tiles, self._tile_size], layout="horizontal"),
                self._export,
                self._import_path,
                self._import,
                self._status,
            ]
        )
        self._export.changed.connect(self.export_labels)
        self._import.changed.connect(self.import_labels)
        self._undo.changed.connect(self.undo)
        self._suggest.changed.connect(self.suggest)
        self._accept_all.changed.connect(lambda *_: self._resolve_all(accept=True))
        self._reject_all.changed.connect(lambda *_: self._resolve_all(accept=False))
        self._atoms.changed.connect(self._attach)
        self._image.changed.connect(self._name_export)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._image.reset_choices)
            event.connect(self._atoms.reset_choices)
        self._unhooked = False
        viewer.bind_key(ACCEPT_KEY, lambda _v: self.resolve_current(accept=True), overwrite=True)
        viewer.bind_key(REJECT_KEY, lambda _v: self.resolve_current(accept=False), overwrite=True)
        viewer.bind_key(UNDO_KEY, lambda _v: self.undo(), overwrite=True)
        follow_atoms_layer(viewer, self._image, self._atoms)
        self._name_export()
        self._attach()
        # a closed dock must stop snapping the points and answering K, J and Control-Z
        when_undocked(self, self._unhook)

    # -- life cycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Unbind the keys and disconnect from the layer."""
        self._unhook()
        super().close()

    def _unhook(self) -> None:
        if self._unhooked:
            return
        self._unhooked = True
        for key in (ACCEPT_KEY, REJECT_KEY, UNDO_KEY):
            self._viewer.bind_key(key, None, overwrite=True)
        self._atoms.changed.disconnect(self._attach)
        self._detach()

    def _name_export(self, *_: Any) -> None:
        if self._image.value is not None:
            self._export_name.value = self._image.value.name

    def _attach(self, *_: Any) -> None:
        layer = self._atoms.value
        if layer is self._layer:
            return
        self._detach()
        self._layer = layer
        self._history.clear()
        if layer is not None:
            self._last = _snapshot(layer)
            layer.events.data.connect(self._on_data)

    def _detach(self) -> None:
        if self._layer is not None:
            self._layer.events.data.disconnect(self._on_data)
        self._layer = None

    # -- edits --------------------------------------------------------------------------------
    def _on_data(self, event: Any) -> None:
        if self._busy:
            return
        action = str(event.action)
        if action not in ("added", "removed", "changed"):
            return
        layer = self._layer
        if self._last is not None:
            self._history.append(self._last)
            del self._history[:-HISTORY]
        indices = [int(i) if int(i) >= 0 else len(layer.data) - 1 for i in event.data_indices]
        if action == "added":
            self._count("added", len(indices))
            self._mark_manual(indices)
            if self._snap.value:
                self._snap_points(indices)
        elif action == "changed":
            self._count("moved", len(indices))
            self._mark_manual(indices)
            if self._snap.value:
                self._snap_points(indices)
        else:
            self._count("deleted", len(indices))
        self._last = _snapshot(layer)
        self._sync_boxes()
        self.edited.emit()

    def _mark_manual(self, indices: list[int]) -> None:
        layer = self._layer
        feats = layer.features.copy()
        if "source" in feats:
            feats.loc[indices, "source"] = "manual"
        self._set(layer, layer.data, feats)

    def _snap_points(self, indices: list[int]) -> None:
        from ..core.detect import atom_polarity
        from ..core.refine import fit_gaussian_at

        image = self._analysis_image()
        if image is None or not self._aligned("snap"):
            return
        layer = self._layer
        data = layer.data.copy()
        feats = layer.features.copy()
        # the contrast the detection used (the Atom contrast option), else judged at the points
        contrast = layer.metadata.get(METADATA_KEY, {}).get("params", {}).get("polarity")
        if contrast not in ("bright", "dark"):
            contrast = atom_polarity(image, data[:, -2:])
        signal = image if contrast == "bright" else -image
        spacing = _spacing(data[:, -2:])
        window = max(2, round(0.5 * spacing)) if spacing else None
        search = max(2.0, 0.35 * spacing) if spacing else 3.0
        # a peak closer than this to another atom is that atom's column (the match radius)
        same_column = max(1.0, 0.25 * spacing) if spacing else 1.0
        refused = []
        for i in indices:
            y, x = data[i, -2], data[i, -1]
            fit = fit_gaussian_at(signal, y, x, window=window, search_radius=search).copy()
            snapped = np.array([float(fit["y"]), float(fit["x"])])
            others = np.delete(data[:, -2:], i, axis=0)
            if not bool(fit.get("fit_ok", False)):
                pass  # the point stays where it was put
            elif np.hypot(*(snapped - (y, x))) > search:
                fit["fit_ok"], fit["fit_status"] = False, "too_far"  # the fit wandered off
            elif len(others) and np.hypot(*(others - snapped).T).min() < same_column:
                # that peak has its atom already: a second one there would be a duplicate
                fit["fit_ok"], fit["fit_status"] = False, "peak_has_atom"
                refused.append((y, x))
            else:
                data[i, -2], data[i, -1] = snapped
            for column in FIT_COLUMNS:
                if column in feats and column in fit:
                    feats.loc[i, column] = fit[column]
            for column, value in (
                ("y", data[i, -2]),
                ("x", data[i, -1]),
                ("y_init", y),
                ("x_init", x),
            ):
                if column in feats:
                    feats.loc[i, column] = value
        if refused:
            y, x = refused[-1]
            self._status.value = (
                f"The peak nearest to ({y:.1f}, {x:.1f}) has an atom already; the new point "
                "stays where you put it (delete it, or Undo, if it was a slip)."
            )
        self._set(layer, data, feats)

    def undo(self, *_: Any) -> None:
        """Restore the Atoms layer as it was before the last edit."""
        if not self._history or self._layer is None:
            self._status.value = "Nothing to undo."
            return
        data, feats = self._history.pop()
        self._set(self._layer, data, feats)
        self._last = _snapshot(self._layer)
        self._count("undone", 1)
        self._sync_boxes()
        self._status.value = f"Undone ({len(self._history)} more step(s) can be undone)."
        self.edited.emit()

    def _set(self, layer: Any, data: np.ndarray, feats: pd.DataFrame) -> None:
        self._busy = True
        try:
            layer.data = data
            layer.features = feats.reset_index(drop=True)
            layer.face_color = _layers.atom_colours(layer.features)
        finally:
            self._busy = False

    def _count(self, kind: str, n: int) -> None:
        meta = dict(self._layer.metadata)
        prov = dict(meta.get(METADATA_KEY, {}))
        edits = dict(prov.get("edits", {}))
        edits[kind] = edits.get(kind, 0) + n
        prov["edits"] = edits
        meta[METADATA_KEY] = prov
        self._layer.metadata = meta

    def _sync_boxes(self) -> None:
        """Make the Boxes layer follow the atoms (same order, box size kept)."""
        image = self._image.value
        if image is None or self._layer is None:
            return
        name = _layers.layer_name("Boxes", image.name)
        feats = self._layer.features
        if name not in self._viewer.layers or not {"y0", "x0", "y1", "x1"} <= set(feats):
            return
        data = self._layer.data[:, -2:]
        half_h = ((feats["y1"] - feats["y0"]) / 2).to_numpy(float)
        half_w = ((feats["x1"] - feats["x0"]) / 2).to_numpy(float)
        fallback = float(np.nanmedian(half_h)) if np.isfinite(half_h).any() else 4.0
        half_h = np.where(np.isfinite(half_h), half_h, fallback)
        half_w = np.where(np.isfinite(half_w), half_w, fallback)
        feats = feats.assign(
            y0=data[:, 0] - half_h,
            y1=data[:, 0] + half_h,
            x0=data[:, 1] - half_w,
            x1=data[:, 1] + half_w,
        )
        self._busy = True
        try:
            self._layer.features = feats
        finally:
            self._busy = False
        boxes = _layers.boxes_shapes(feats, image, self._layer.metadata.get(METADATA_KEY, {}))
        if boxes is not None:
            _layers.replace_layer(self._viewer, boxes)
            self._viewer.layers.selection.active = self._layer

    # -- suggestions --------------------------------------------------------------------------
    def suggest(self, *_: Any) -> None:
        """Put lattice sites that show contrast but have no atom into a Suggestions layer."""
        from ..core.lattice import suggest_missing_sites

        image = self._analysis_image()
        if image is None or self._layer is None:
            self._refuse("Curate: choose an image and its Atoms layer first")
            return
        if not self._aligned("suggest atoms"):
            return
        atoms = _layers.atoms_table(self._layer)
        try:
            found = suggest_missing_sites(image, atoms)
        except ValueError as err:
            self._refuse(f"Suggest missing atoms: {err}")
            return
        name = _layers.layer_name("Suggestions", self._image.value.name)
        if len(found) == 0:
            _layers.remove_layer(self._viewer, name)
            self._status.value = "No missing atoms found."
            return
        from napari.layers import Points

        layer = Points(
            found[["y", "x"]].to_numpy(float),
            name=name,
            features=found,
            symbol="diamond",
            face_color="transparent",
            border_color="yellow",
            border_width=0.2,
            size=float(np.median(self._layer.size)) * 1.6 if len(self._layer.size) else 8.0,
            **_layers.geometry(self._image.value),
        )
        _layers.replace_layer(self._viewer, layer)
        self._viewer.layers.selection.active = self._layer
        self._current = 0
        self._focus_current()

    def _suggestions(self) -> Any:
        image = self._image.value
        if image is None:
            return None
        name = _layers.layer_name("Suggestions", image.name)
        return self._viewer.layers[name] if name in self._viewer.layers else None

    def resolve_current(self, *, accept: bool) -> None:
        """Accept (add to the atoms) or reject the current suggestion, then show the next."""
        sugg = self._suggestions()
        if sugg is None or len(sugg.data) == 0 or self._layer is None:
            self._status.value = "No suggestions left."
            return
        i = min(self._current, len(sugg.data) - 1)
        if accept:
            self._add_atoms(sugg.features.iloc[[i]])
        sugg.selected_data = {i}
        sugg.remove_selected()
        self._focus_current()

    def _resolve_all(self, *, accept: bool) -> None:
        sugg = self._suggestions()
        if sugg is None or len(sugg.data) == 0:
            self._status.value = "No suggestions to resolve (Suggest missing atoms first)."
            return
        if accept:
            self._add_atoms(sugg.features)
        self._viewer.layers.remove(sugg)
        self._status.value = "All suggestions " + ("accepted." if accept else "rejected.")

    def _add_atoms(self, rows: pd.DataFrame) -> None:
        layer = self._layer
        if self._last is not None:
            self._history.append(self._last)
        feats = layer.features
        new = pd.DataFrame(
            {
                c: [layer.feature_defaults[c].iloc[0]] * len(rows)
                if c in layer.feature_defaults
                else [np.nan] * len(rows)
                for c in feats.columns
            }
        )
        for column in ("y", "x", "class", "amplitude"):
            if column in new and column in rows:
                new[column] = rows[column].to_numpy()
        if "source" in new:
            new["source"] = "manual"
        if "fit_ok" in new:
            new["fit_ok"] = False  # not fitted (yet): snapping fits them below
        if "fit_status" in new:
            new["fit_status"] = "suggested"
        before = len(layer.data)
        data = np.concatenate([layer.data, rows[["y", "x"]].to_numpy(float)])
        self._set(
            layer,
            data,
            pd.concat(
                [feats, new.astype(feats.dtypes.to_dict(), errors="ignore")], ignore_index=True
            ),
        )
        if self._snap.value:  # accepted sites are fitted like atoms added by hand
            self._snap_points(list(range(before, len(data))))
        self._count("accepted", len(rows))
        self._last = _snapshot(layer)
        self._sync_boxes()
        self.edited.emit()

    def _focus_current(self) -> None:
        sugg = self._suggestions()
        if sugg is None or len(sugg.data) == 0:
            if sugg is not None:
                self._viewer.layers.remove(sugg)
            self._status.value = "All suggestions resolved."
            return
        self._current = min(self._current, len(sugg.data) - 1)
        i = self._current
        sugg.selected_data = {i}
        # the current one stands out (selection is drawn only on the active layer)
        current = np.arange(len(sugg.data)) == i
        magenta, yellow = [[1.0, 0.2, 0.8, 1.0]], [[1.0, 1.0, 0.0, 1.0]]
        sugg.border_color = np.where(current[:, None], magenta, yellow)
        sugg.border_width = np.where(current, 0.35, 0.2)
        world = sugg.data_to_world(sugg.data[i])
        self._viewer.camera.center = tuple(world)
        rel = sugg.features["relative_amplitude"].iloc[i]
        self._status.value = (
            f"Suggestion {i + 1} of {len(sugg.data)} (contrast {rel:.2f} × "
            f"median): {ACCEPT_KEY} keep, {REJECT_KEY} junk."
        )

    # -- helpers ------------------------------------------------------------------------------
    def _refuse(self, message: str) -> None:
        refuse(self._status, message)

    def _aligned(self, what: str) -> bool:
        """Tell whether the Atoms layer lies on the image's pixels; say so when it does not."""
        image = self._image.value
        if image is None or self._layer is None or _layers.same_geometry(self._layer, image):
            return True
        self._status.value = (
            f"Cannot {what}: '{self._layer.name}' has another scale or offset than "
            f"'{image.name}' (give it the image's scale and translate)."
        )
        return False

    def _analysis_image(self) -> np.ndarray | None:
        layer = self._image.value
        if layer is None:
            return None
        try:
            frame, _ = current_frame(self._viewer, layer)
            return as_analysis_image(frame, rgb=layer.rgb).astype(np.float64)
        except InvalidImageError as err:
            notify_info(f"Curate: cannot snap on {layer.name}: {err}")
            return None

    # -- export / import for retraining ------------------------------------------------------
    def export_labels(self, *_: Any) -> Any:
        """Write the image and the curated atoms as an export folder; returns its path."""
        from ..io.labels import export_labels

        image, layer = self._image.value, self._layer
        folder = str(self._export_dir.value or "").strip()
        name = str(self._export_name.value or "").strip()
        try:
            if image is None or layer is None:
                raise ValueError("choose an image and its Atoms layer")
            if not folder or folder == ".":
                raise ValueError("choose a folder to export to")
            if not name:
                raise ValueError("enter a name for the export")
            frame, _ = current_frame(self._viewer, image)
            prov = dict(layer.metadata.get(METADATA_KEY, {}))
            path = export_labels(
                as_analysis_image(frame, rgb=image.rgb),
                _layers.atoms_table(layer, image),
                folder,
                name=name,
                tiles=int(self._tile_size.value) if self._tiles.value else None,
                provenance=prov,
                edits=prov.get("edits"),
                pixel_size_nm=pixel_size_of(image),
                source=image.name,
            )
        except (ValueError, OSError) as err:  # ExportExistsError is an OSError
            self._refuse(f"Export labels: {err}")
            return None
        self._status.value = f"Exported {len(layer.data)} atoms to {path}"
        notify_info(f"Labels exported to {path}")
        return path

    def import_labels(self, *_: Any) -> Any:
        """Read an export (or a labelImg / YOLO folder) into image, Atoms and Boxes layers."""
        from napari.layers import Image

        from ..io.labels import import_labels

        path = str(self._import_path.value or "").strip()
        try:
            if not path or path == ".":
                raise ValueError("choose a folder to import")
            image, atoms, info = import_labels(path)
            if image is None:
                raise ValueError(f"{path}: no image found beside the labels")
        except (ValueError, OSError) as err:
            self._refuse(f"Import labels: {err}")
            return None
        prov = dict(info.get("provenance") or {})
        name = Path(info.get("image_path") or path).stem
        px = prov.get("pixel_size_nm") or 1.0
        image_layer = _layers.replace_layer(
            self._viewer, Image(image, name=name, scale=(px, px), metadata={"source": path})
        )
        record = dict(prov.get("analysis") or prov)
        _layers.replace_layer(self._viewer, _layers.atoms_points(atoms, image_layer, record))
        boxes = _layers.boxes_shapes(atoms, image_layer, record)
        if boxes is not None:
            _layers.replace_layer(self._viewer, boxes)
        self._image.value = image_layer  # which picks its Atoms layer too
        self._status.value = f"Imported {len(atoms)} atoms ({info['format']}) from {path}"
        return image_layer


def _snapshot(layer: Any) -> tuple[np.ndarray, pd.DataFrame]:
    return layer.data.copy(), layer.features.copy()


def _spacing(points: np.ndarray) -> float | None:
    """Median nearest-neighbour distance of the atoms (None with fewer than 2)."""
    if len(points) < 2:
        return None
    from scipy.spatial import cKDTree

    return float(np.median(cKDTree(points).query(points, k=2)[0][:, 1]))
