"""A dock-widget base for one long job at a time: Run / Cancel, progress, status, errors."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from psygnal import Signal

from ._common import notify_error, refuse
from ._worker import progress_generator, start_job


class JobWidget(Container):
    """A form whose Run button starts one job off the GUI thread, with progress and Cancel.

    Subclasses build their controls, call :meth:`_add_job_controls` to append the Run / Cancel
    buttons and the status line, and start work with :meth:`_start_job`.  ``run_finished`` is
    emitted on the GUI thread whenever a job ends (done, failed or cancelled).  Short jobs show
    their progress in napari's activity bar; long ones in a bar of their own dock
    (``_add_job_controls(..., job_bar=True)``), and then napari's bar is not opened.
    """

    #: Emitted on the GUI thread when a job ends.
    run_finished = Signal()

    #: Shown in notifications and the progress bar.
    job_name = "Job"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._worker: Any = None
        self._stop = threading.Event()
        self._job_bar: ProgressBar | None = None

    def _add_job_controls(self, run_text: str, *extra: Any, job_bar: bool = False) -> None:
        """Append Run / Cancel, the dock's own progress bar (``job_bar``), ``extra``, status."""
        self._run = PushButton(
            text=run_text,
            tooltip="Runs in the background: the viewer stays usable, the progress shows in "
            "napari's activity bar (or below)",
        )
        self._cancel = PushButton(
            text="Cancel", enabled=False, tooltip="Stop the run; the layers stay as they were"
        )
        self._status = Label(value="")
        self._status.native.setWordWrap(True)
        buttons = Container(widgets=[self._run, self._cancel], layout="horizontal", labels=False)
        if job_bar:
            self._job_bar = ProgressBar(min=0, max=1, value=0, label="Progress")
            extra = (self._job_bar, *extra)  # _start_job then reports there, not to napari
        self.extend([buttons, *extra, self._status])
        self._run.changed.connect(self._on_run)
        self._cancel.changed.connect(self._on_cancel)

    def _refuse(self, message: str) -> None:
        """Refuse to run: notify, and say why in the status line."""
        refuse(self._status, message)

    def _show_job_progress(self, item: tuple) -> None:
        """Show a progress report ``(done, total, ...)`` in the dock's own bar."""
        done, total = int(item[0]), max(int(item[1]), 1)
        self._job_bar.max = total
        self._job_bar.value = min(done, total)

    def _on_run(self, *_: Any) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _start_job(
        self,
        compute: Callable[..., Any],
        on_result: Callable[[Any], None],
        *,
        status: str,
        on_progress: Callable[[tuple], None] | None = None,
        activity: bool = True,
        needs: Any = None,
    ) -> None:
        """Run ``compute(progress=..., cancelled=...)`` in a worker; ``on_result`` on the GUI.

        ``needs`` is the layer the results belong to (the image analysed): when it was removed
        from the viewer while the job ran, the results are dropped instead of added as orphans.

        ``on_progress`` gets every progress report ``(done, total, *extra)`` on the GUI thread.
        The progress goes to the dock's own bar when it has one, else to napari's activity bar
        unless ``activity`` is False (a long job whose dock shows its progress itself; see
        :func:`start_job` for why).
        Cancel is cooperative: ``cancelled()`` turns True, the job stops at its next check (or
        finishes), and only then does the worker end; a result that arrives after Cancel is
        dropped, so a cancelled job never changes the layers.
        """
        self._set_running(True)
        if self._job_bar is not None:
            self._job_bar.max, self._job_bar.value = 1, 0
            activity = False
            on_progress = _both(self._show_job_progress, on_progress)
        self._status.value = status
        stop = self._stop = threading.Event()

        def deliver(result: Any) -> None:
            if stop.is_set():
                self._on_error(InterruptedError("cancelled"))
            elif needs is not None and needs not in self._viewer.layers:
                self._status.value = f"'{needs.name}' was closed while running; nothing added."
            else:
                on_result(result)

        start_job(
            self,
            lambda: (yield from progress_generator(compute, cancel=stop)),
            description=self.job_name,
            on_result=deliver,
            on_error=self._on_error,
            on_finished=self._on_finished,
            on_progress=on_progress,
            activity=activity,
        )

    def _on_error(self, err: BaseException) -> None:
        if isinstance(err, InterruptedError):
            self._status.value = "Cancelled; layers unchanged."
            return
        self._status.value = f"Failed: {err}"
        notify_error(f"{self.job_name} failed: {err}")

    def _on_cancel(self, *_: Any) -> None:
        if self._worker is not None:
            self._stop.set()
            self._cancel.enabled = False
            self._status.value = "Cancelling…"

    def _on_finished(self) -> None:
        self._set_running(False)
        self._worker = None
        self.run_finished.emit()

    def _set_running(self, running: bool) -> None:
        self._run.enabled = not running
        self._cancel.enabled = running


def _both(
    first: Callable[[tuple], None], then: Callable[[tuple], None] | None
) -> Callable[[tuple], None]:
    """Return a progress callback that calls ``first`` and then ``then`` (if any)."""
    if then is None:
        return first

    def call(item: tuple) -> None:
        first(item)
        then(item)

    return call
