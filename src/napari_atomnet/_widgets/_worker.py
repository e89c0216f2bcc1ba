"""Running long work off the GUI thread with a napari progress bar and a Cancel button.

Core functions report progress through a ``progress(done, total)`` callback and poll a
``cancelled()`` callable.  :func:`progress_generator` turns such a call into a generator of
``(done, total)`` for napari's ``thread_worker``; nothing in the worker touches the viewer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from typing import Any

_DONE = object()


def progress_generator(
    fn: Callable[..., Any],
    *args: Any,
    cancel: threading.Event | None = None,
    **kwargs: Any,
) -> Generator[tuple[int, int], None, Any]:
    """Run ``fn(*args, progress=..., cancelled=..., **kwargs)`` and yield its progress.

    ``fn`` runs in a helper thread; this generator yields each ``(done, total)`` it reports and
    returns its result (or re-raises its exception).  ``fn`` may pass more values after
    ``done, total`` (e.g. a stage name and a loss); they are yielded as ``(done, total, *extra)``.
    Setting ``cancel``, or closing the generator, makes ``cancelled()`` return True, so ``fn``
    stops at its next check.  The thread is not a daemon: a job still running when the program
    ends is finished (or stops at its next check) before the interpreter shuts down, instead of
    being killed inside native code (a crash at exit).
    """
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    def cancelled() -> bool:
        return stop.is_set() or (cancel is not None and cancel.is_set())

    def target() -> None:
        try:
            outcome["value"] = fn(
                *args,
                progress=lambda done, total, *extra: events.put((int(done), int(total), *extra)),
                cancelled=cancelled,
                **kwargs,
            )
        except BaseException as err:  # re-raised in the worker thread below
            outcome["error"] = err
        finally:
            events.put(_DONE)

    thread = threading.Thread(target=target, name="napari-atomnet-job", daemon=False)
    thread.start()
    try:
        while (item := events.get()) is not _DONE:
            yield item
    finally:
        # also on cancel (GeneratorExit): wait for the job to notice, so no thread outlives it
        stop.set()
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def start_job(
    owner: Any,
    job: Callable[[], Generator[tuple[int, int], None, Any]],
    *,
    description: str,
    on_result: Callable[[Any], None],
    on_error: Callable[[BaseException], None],
    on_finished: Callable[[], None],
    on_progress: Callable[[tuple], None] | None = None,
    activity: bool = True,
) -> Any:
    """Start ``job`` (a generator function yielding ``(done, total)``) in a napari worker.

    A napari progress bar follows the yielded progress (unless ``activity`` is False);
    ``on_result`` gets the returned value on the GUI thread, ``on_error`` any exception, and
    ``on_finished`` runs last in every case. ``on_progress``, if given, gets every yielded tuple
    (``(done, total, *extra)``) on the GUI thread.

    While a napari progress bar is open, napari animates a spinner in its status bar; where the
    window is drawn in software (no GPU, remote desktops, Xvfb) that costs about a third of a
    CPU core for as long as the bar is open. Jobs of minutes that show their own progress in
    their dock pass ``activity=False`` so the CPU goes to the job.

    Returns
    -------
    napari.qt.threading.GeneratorWorker
        Call ``.quit()`` to cancel.
    """
    from napari.qt.threading import thread_worker
    from napari.utils import progress

    bar = progress(total=0, desc=description) if activity else None
    # errors go to on_error only (not re-raised in the Qt event loop as well)
    worker = thread_worker(job, start_thread=False, ignore_errors=True)()

    def on_yield(item: tuple) -> None:
        if bar is not None:
            done, total = item[:2]
            if bar.total != total:
                bar.total = total
            bar.n = done
            bar.refresh()
        if on_progress is not None:
            on_progress(item)

    def finished() -> None:
        if bar is not None:
            bar.close()
        on_finished()

    worker.yielded.connect(on_yield)
    worker.returned.connect(on_result)
    worker.errored.connect(on_error)
    worker.finished.connect(finished)
    owner._worker = worker
    worker.start()
    return worker
