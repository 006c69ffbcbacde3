"""The exit-code convention every command line shares, and the two phases it comes from.

    0  success
    1  a failed check or job (a conversion problem, a parity stage above tolerance, a checkpoint that
       does not load, generation that fails)
    2  a usage error: a bad argument or a file it names, found before anything heavy runs
  130  interrupted (Ctrl-C, or SIGTERM, which is handled the same way)

`run(check, job)` calls `check()` (argument validation; nothing is loaded yet) then `job(checked)`, and maps
the errors of each phase to its code with one `error: ...` line on stderr. The job runs with JAX's persistent
compilation cache in ~/.cache/omni_jax/xla (unless JAX_COMPILATION_CACHE_DIR says where), so a second run of
a command skips the compilations that took more than a second.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

OK, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130
ERRORS = (ValueError, TypeError, OSError)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt (so `finally` / atomic writes clean up as for Ctrl-C)."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def fail(message: Any, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def use_compilation_cache() -> None:
    """Point JAX's persistent compilation cache at ~/.cache/omni_jax/xla unless the user set a directory."""
    import jax

    if not jax.config.jax_compilation_cache_dir and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        jax.config.update("jax_compilation_cache_dir", str(Path.home() / ".cache" / "omni_jax" / "xla"))


def check_visual_files(images: list[str], videos: list[str], *, sound: bool = False) -> None:
    """Usage errors for --image / --video files: each image decodes, each video's first frame does, and with
    `sound` (--use-audio-in-video) each video has a sound track."""
    from omni_jax.processing import vision

    for flag, paths in (("--image", images), ("--video", videos)):
        for path in paths:
            try:
                vision.load_image(path) if flag == "--image" else vision.check_video_file(path, audio=sound)
            except ERRORS as e:
                raise ValueError(f"{flag} {path}: {e}") from None


def run(check: Callable[[], Any], job: Callable[[Any], int | None]) -> int:
    """check() (errors -> USAGE), then job(its result) (errors -> FAILED; its own code otherwise)."""
    use_compilation_cache()
    with sigterm_as_interrupt():
        try:
            try:
                checked = check()
            except ERRORS as e:
                return fail(e, USAGE)
            try:
                code = job(checked)
            except ERRORS as e:
                return fail(e, FAILED)
        except KeyboardInterrupt:
            return fail("interrupted", INTERRUPTED)
    return OK if code is None else code
