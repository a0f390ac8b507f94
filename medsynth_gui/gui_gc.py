"""While a job runs in a worker thread, Python's cyclic garbage collector runs on the GUI thread only.

Collected in a worker thread, a cycle that holds a Qt object destroys that object there: its destructor takes Qt's
lock on the object's connections and then waits for the GIL, while the GUI thread, holding the GIL, waits for that
lock to delete widgets. The app froze that way at the end of a training run (py-spy showed the two threads). So while
any job runs, automatic collection is off and a timer on the GUI thread collects, generation by generation as the
interpreter would; when the last job ends, collection is automatic again.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QCoreApplication, QTimer

INTERVAL_MS = 250

_jobs = 0
_timer: QTimer | None = None


def _collect_due() -> None:
    counts, thresholds = gc.get_count(), gc.get_threshold()
    due = -1
    for gen in range(3):
        if counts[gen] <= thresholds[gen]:
            break
        due = gen
    if due >= 0:
        gc.collect(due)


def job_started() -> None:
    """Call on the GUI thread before a worker thread starts."""
    global _jobs, _timer
    _jobs += 1
    if _jobs > 1:
        return
    if _timer is None:
        _timer = QTimer(QCoreApplication.instance())
        _timer.timeout.connect(_collect_due)
    gc.disable()
    _timer.start(INTERVAL_MS)


def job_ended() -> None:
    """Call on the GUI thread once a worker thread has finished."""
    global _jobs
    _jobs = max(0, _jobs - 1)
    if _jobs == 0:
        if _timer is not None:
            _timer.stop()
        gc.enable()
        gc.collect()


def collecting_on_gui_thread() -> bool:
    return _jobs > 0 and not gc.isenabled()
