"""Where a job writes: is the destination writable and roomy enough, the write itself made atomic, and one
writer at a time.

Every writing command goes through here so that a full disk, a read-only file system or a missing permission
is one line naming the destination (an `InputError`, exit 2), never a traceback, a segmentation fault or a
half-written file at the name the user asked for.

- `check_writable(path, need_bytes)` before long work: the folder exists or can be made, a file can be created
  in it, and (roughly) `need_bytes` are free. It leaves nothing behind.
- `os_error(path, exc)` / `translating(path)`: ENOSPC, EDQUOT, EROFS, EACCES and EPERM as an InputError naming
  the destination; any other OSError is left alone (it is a bug to see, not a user's fault).
- `replacing(target)`: a temporary path beside the target (same folder, so the same file system, so the rename
  is atomic); renamed onto the target on success, removed on failure. Readers of the target see the old file,
  whole, until the rename, then the new one, whole.
- `writer_lock(target)` (`check_unlocked` to ask early): an advisory lock on a lock file beside the target
  (`.NAME.lock`, there while held), so a second MedSynth writer of the same target is refused with one line
  while the first runs. POSIX: `fcntl.flock`, released by the kernel when the holder dies (a kill -9 leaves
  the empty file, never a held lock). Windows (no fcntl): `msvcrt.locking` on the same lock file, also
  released when the holder dies. Where neither exists the lock is a no-op: nothing is refused. Advisory: it
  keeps MedSynth runs apart, not other programs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from engine.errors import InputError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
try:
    import msvcrt
except ImportError:  # POSIX
    msvcrt = None  # type: ignore[assignment]

# What a full disk leaves for metadata, the HDF5 superblock and the file system's own rounding: asking for
# this much beyond the estimate keeps "roughly large enough" on the safe side.
MARGIN_BYTES = 1 << 20

_FAULTS = {
    errno.ENOSPC: "the disk is full",
    errno.EROFS: "is on a read-only file system",
    errno.EACCES: "is not writable (permission denied)",
    errno.EPERM: "is not writable (operation not permitted)",
}
if hasattr(errno, "EDQUOT"):
    _FAULTS[errno.EDQUOT] = "the disk quota is used up"


def _gib(n: float) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def os_error(path: str | Path, exc: BaseException) -> InputError | None:
    """The one-line InputError for a destination's disk or permission fault, or None for any other error.

    HDF5 wraps the C errno in its own message ("errno = 28, error message = 'No space left on device'"), so
    the errno is looked for in the text too.
    """
    code = getattr(exc, "errno", None)
    if code not in _FAULTS:
        text = str(exc)
        code = next((c for c in _FAULTS if f"errno = {c}," in text or os.strerror(c) in text), None)
    if code is None:
        return None
    fault = _FAULTS[code]
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        fault = f"cannot be written: {fault}; free some space or choose another destination"
    else:
        fault = f"cannot be written: it {fault}; choose another destination"
    return InputError(path, fault)


@contextlib.contextmanager
def translating(path: str | Path) -> Iterator[None]:
    """Turn a disk or permission OSError raised inside the block into an InputError naming `path`."""
    try:
        yield
    except OSError as exc:
        err = os_error(path, exc)
        if err is None:
            raise
        raise err from None


def free_bytes(folder: str | Path) -> int | None:
    """Bytes free to this user under `folder` (the nearest existing ancestor), or None when unknown."""
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def check_writable(path: str | Path, need_bytes: int = 0, *, folder: bool = False) -> None:
    """Refuse, with one line naming `path`, a destination that cannot be written or has clearly too little room.

    `path` is a file to be written (its folder is checked), or with `folder=True` a folder to write into.
    Missing folders are checked where they would be made (the nearest existing one); nothing is made. The
    check creates and removes one empty file: the only test that is true of ACLs, read-only mounts and root
    squash alike.
    """
    path = Path(path)
    where = (path if folder else path.parent).absolute()
    if path.exists() and not folder and not os.access(path, os.W_OK):
        raise InputError(path, "is not writable (permission denied); choose another destination")
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise InputError(path, f"cannot be written: {where} is a file, not a folder")
    with translating(path):
        probe = where / f".medsynth-write-test-{os.getpid()}"
        try:
            probe.touch()
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
    check_room(path, need_bytes, folder=folder)


def check_room(path: str | Path, need_bytes: int, *, folder: bool = False) -> None:
    """Refuse, with one line naming `path`, a write of about `need_bytes` where clearly less is free."""
    free = free_bytes(Path(path) if folder else Path(path).parent)
    if need_bytes > 0 and free is not None and free < need_bytes + MARGIN_BYTES:
        raise InputError(path, f"cannot be written: it needs about {_gib(need_bytes)} and only {_gib(free)} "
                               "is free there; free some space or choose another destination")


TEMP_SUFFIX = ".partial"


def temp_beside(target: str | Path, *, hidden: bool = False) -> Path:
    """The temporary name beside `target` that its writer uses until the rename: `NAME.partial`
    (`.NAME.partial` when `hidden`, for folders other programs scan by name, like nnU-Net's DatasetNNN_*).

    The suffix is not the target's, so nothing that looks for `*.h5` (or `*.nii.gz`, `*.png`) picks up a
    half-written file; the name is fixed (not random) so that the writer lock covers it too and a crashed
    run's leftover is found and named, never piled up.
    """
    target = Path(target)
    return target.with_name(("." if hidden else "") + target.name + TEMP_SUFFIX)


def is_temp(path: str | Path) -> bool:
    """Whether `path` is a writer's temporary file (see `temp_beside`): gone, renamed, once the writer is done."""
    return Path(path).name.endswith(TEMP_SUFFIX)


def remove_quietly(path: str | Path) -> None:
    """Remove a file or folder we wrote, ignoring what is already gone: cleanup must not mask the real fault."""
    p = Path(path)
    with contextlib.suppress(OSError):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def commit(temp: str | Path, target: str | Path) -> None:
    """Rename the finished `temp` onto `target` atomically (replacing an old target), and make it durable.

    A replaced target's permissions carry over, as an editor's save keeps them: a file the user (or the app's
    private cache) made readable by its owner alone stays so."""
    with translating(target):
        with contextlib.suppress(OSError):
            os.chmod(temp, stat.S_IMODE(os.stat(target).st_mode))
        os.replace(temp, target)
        with contextlib.suppress(OSError):  # not every platform can open a folder; the rename itself is done
            fd = os.open(Path(target).parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


@contextlib.contextmanager
def replacing(target: str | Path, *, keep_on_error: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on a normal exit rename it onto `target`, else remove it.

    The old target (if any) stays untouched until the rename. `keep_on_error` keeps the temporary file
    when the block fails (a writer whose partial output is worth keeping decides that itself).
    Disk and permission faults come out as an InputError naming `target`.
    """
    target = Path(target)
    temp = temp_beside(target)
    try:
        with translating(target):
            yield temp
    except BaseException:
        if not keep_on_error:
            remove_quietly(temp)
        raise
    commit(temp, target)


def lock_path(target: str | Path) -> Path:
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def writer_lock(target: str | Path) -> Iterator[None]:
    """Hold the advisory lock on `target` for the block, or refuse at once (one line) while another holds it.

    The lock file `.NAME.lock` beside the target is removed on release, and folders made for it are removed
    again when nothing else went into them, so a refused or failed run leaves nothing. A lock file that its
    holder removed between our open and our lock is not the lock any more: opened again.
    """
    target = Path(target)
    path = lock_path(target)
    made = _missing_folders(path.parent)
    with translating(target):
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = _acquire(target, path)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()  # while still held: a waiting opener finds its file gone and opens a new one
            os.close(fd)  # closing releases the lock (flock and msvcrt alike)
    finally:
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: what the job wrote stays


def _missing_folders(folder: Path) -> list[Path]:
    """The folders that do not exist yet on the way to `folder`, deepest first."""
    missing = []
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _acquire(target: Path, path: Path) -> int:
    while True:
        with translating(target):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            elif msvcrt is not None:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, getattr(errno, "EWOULDBLOCK", errno.EAGAIN),
                             getattr(errno, "EDEADLOCK", errno.EAGAIN)):
                raise InputError(target, "is being written by another MedSynth run; wait for it to finish or "
                                         "choose another name") from None
            raise
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def check_unlocked(target: str | Path) -> None:
    """Refuse now, before any long work, a target that another MedSynth run is writing (the lock is let go)."""
    if lock_path(target).exists():
        with writer_lock(target):
            pass
