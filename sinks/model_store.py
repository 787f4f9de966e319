"""Where trained ranking models live, and how a running ranker finds the current one.

Layout of the model folder (`MODEL_DIR`, `.state/models` by default; on several machines,
a shared volume):

    ranker-<version>.txt    the LightGBM model (its text format)
    ranker-<version>.json   the training report: metrics, feature names, data, params
    ranker-<version>.png    the report's plot
    CURRENT                 one line: the version rankers serve

`<version>` is `YYYYMMDDTHHMMSSZ-<first 8 hex of the model text's SHA-256>`: sortable by
training time and naming the exact model. Publishing writes the files first and then
replaces CURRENT atomically (write a temporary file, rename it over), so a ranker polling
CURRENT never sees a version whose model file is missing or half written.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

CURRENT_FILE = "CURRENT"


def model_version(model_text: str, at_s: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if at_s is None else at_s))
    return f"{stamp}-{hashlib.sha256(model_text.encode()).hexdigest()[:8]}"


@dataclass(frozen=True, slots=True)
class ModelFiles:
    version: str
    model: Path
    report: Path
    plot: Path


class ModelStore:
    """A folder of versioned models and the CURRENT pointer."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def files(self, version: str) -> ModelFiles:
        base = self.directory / f"ranker-{version}"
        return ModelFiles(
            version,
            base.with_suffix(".txt"),
            base.with_suffix(".json"),
            base.with_suffix(".png"),
        )

    def write(self, version: str, model_text: str, report_json: str) -> ModelFiles:
        """Write a model and its report (the plot is drawn into `files(version).plot`)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        files = self.files(version)
        _write_atomically(files.model, model_text)
        _write_atomically(files.report, report_json)
        return files

    def publish(self, version: str) -> None:
        """Make `version` the one rankers serve (its model file must exist)."""
        if not self.files(version).model.is_file():
            raise FileNotFoundError(f"no model file for version {version} in {self.directory}")
        _write_atomically(self.directory / CURRENT_FILE, version + "\n")

    def current(self) -> str | None:
        """The published version, or None when nothing was published yet."""
        try:
            text = (self.directory / CURRENT_FILE).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return text or None

    def versions(self) -> list[str]:
        """Every stored version, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(
            path.stem.removeprefix("ranker-") for path in self.directory.glob("ranker-*.txt")
        )


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
