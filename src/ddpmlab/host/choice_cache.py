"""Choices measured on this machine, kept between runs in the user's cache folder.

``$DDPMLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/ddpmlab``, else ``~/.cache/ddpmlab``: outside the project,
so clearing it, or moving to another machine, never makes DVC rerun a stage. One JSON file of entries by
key, rewritten whole and atomically; an unreadable file or entry is ignored with a warning and replaced.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

CACHE_FILE = "execution.json"
CACHE_VERSION = 1


def default_folder() -> Path:
    explicit = os.environ.get("DDPMLAB_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ddpmlab"


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class ChoiceCache:
    """Entries (JSON objects) by key in ``folder``/execution.json; ``get`` and ``put`` never raise for the file's sake."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder or default_folder()
        self.path = self.folder / CACHE_FILE

    def get(self, key: str) -> dict[str, Any] | None:
        return self._entries().get(key)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Add one entry (two writers at once: the last one's file wins, and the other's choice is probed again)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            entries = {**self._entries(), key: entry}
            handle, tmp = tempfile.mkstemp(dir=self.folder, prefix=".execution-", suffix=".json")
            with os.fdopen(handle, "w") as f:
                json.dump({"version": CACHE_VERSION, "entries": entries}, f, indent=1)
            os.replace(tmp, self.path)  # a reader never sees half a file
        except OSError as error:
            warn(f"could not write the execution cache in {self.folder} ({error}); the next run probes again")

    def _entries(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
                raise ValueError(f"not a version-{CACHE_VERSION} execution cache")
            return data["entries"]
        except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            warn(f"ignoring the execution cache {self.path} ({error}); probing again")
            return {}
