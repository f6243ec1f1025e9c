"""Downloads of dataset files: md5-verified, written atomically, with a network timeout."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.request
from pathlib import Path

from filterprune.errors import FilterpruneError

__all__ = ["fetch"]

_log = logging.getLogger(__name__)

_DOWNLOAD_TIMEOUT_S = 60
_CHUNK_BYTES = 1 << 20


def fetch(url: str, target: Path, md5: str) -> None:
    """Download ``url`` to ``target`` via a temporary file in the same dir, checking its md5.

    Raises:
        FilterpruneError: The download fails or its md5 differs from ``md5``; no file is left.
    """
    _log.info("downloading %s", url)
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".part", dir=target.parent
        )
    except OSError as e:
        raise FilterpruneError(f"cannot write to data directory {target.parent}: {e}") from e
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response,
        ):
            while chunk := response.read(_CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise FilterpruneError(
                f"checksum mismatch for {target.name} downloaded from {url}: "
                f"expected md5 {md5}, got {digest.hexdigest()}"
            )
        os.replace(tmp, target)
    except (OSError, http.client.HTTPException) as e:
        raise FilterpruneError(f"cannot download {url} to {target.parent}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)
