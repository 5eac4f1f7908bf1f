"""Putting a finished temporary file in place without ever replacing an existing file."""
from __future__ import annotations

import os
from pathlib import Path


def publish_new(tmp: Path, dst: Path) -> None:
    """Make `tmp`'s content appear at `dst`; raise FileExistsError if `dst` exists.

    A hard link fails atomically when the target appeared since any earlier check (no race,
    no clobbering); on filesystems without hard links we check, then rename. The caller removes
    `tmp` afterwards if it is still there.
    """
    try:
        os.link(tmp, dst)
    except FileExistsError:
        raise
    except OSError:
        if Path(dst).exists():
            raise FileExistsError(dst) from None
        os.replace(tmp, dst)
