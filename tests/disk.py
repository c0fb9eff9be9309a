"""A full disk for a child process, without root: RLIMIT_FSIZE caps every file it writes.

Python ignores SIGXFSZ, so a write past the cap fails with EFBIG ("File too large"), as a
write to a full disk fails with ENOSPC: the same OSError path, the same cleanup.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.servers import child_environ

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]


def file_size_cap(max_bytes: int) -> Callable[[], None]:
    if resource is None:
        pytest.skip("no RLIMIT_FSIZE here")

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return cap


def mailblast_capped(
    cwd: Path,
    max_bytes: int,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 90,
) -> subprocess.CompletedProcess[str]:
    """``python -m mailblast ARGS`` in ``cwd``, unable to write any file past ``max_bytes``."""
    return subprocess.run(
        [sys.executable, "-m", "mailblast", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**child_environ(), **(env or {})},
        stdin=subprocess.DEVNULL,
        preexec_fn=file_size_cap(max_bytes),
    )
