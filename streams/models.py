"""The ranker's model slot: which LightGBM model scores, swapped without a restart.

The slot polls the model folder's CURRENT pointer (`sinks.model_store`) at most every
`poll_s`. A new version is loaded in a thread while triggers keep scoring with the model
they have; once it loaded and passed its checks (the features it was trained on are
exactly `streams.logic.ranking.FEATURES`, and it scores a row to a finite probability)
it replaces the old one in a single assignment, so every trigger scores with one whole
model, and the feed it writes records that model's version. Then, still in a thread, the
trees are compiled to machine code (lleaves; a few seconds) and, once the compiled model
gives LightGBM's predictions on random rows, it takes over scoring the same version. A
model that fails to load is logged once with the reason and the previous one keeps
serving; the slot tries again only when CURRENT names another version.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
from numpy.typing import NDArray

from sinks.model_store import ModelStore
from streams.logic.drift import Distribution, References
from streams.logic.ranking import FEATURES

log = logging.getLogger(__name__)

#: How often the slot looks at CURRENT.
MODEL_POLL_S = 5.0


class ModelRefused(ValueError):
    """A model file that cannot serve (the message says why)."""


@dataclass(frozen=True)
class LoadedModel:
    """A model that scores. `compiled` is the same trees compiled to machine code
    (lleaves), used when present: about ten times faster for 500 candidates, and checked
    to give LightGBM's predictions before it is used (`compile_model`)."""

    version: str
    booster: lgb.Booster
    compiled: Any = None
    #: Its features' and score's distributions at training, per live sample
    #: (`streams.logic.drift`); None for a model trained before the report carried them.
    references: References | None = None

    def score(self, rows: Sequence[Sequence[float]] | NDArray[np.float64]) -> NDArray[np.float64]:
        """Click probabilities, one per row (rows in `FEATURES` order)."""
        matrix = np.ascontiguousarray(rows, dtype=np.float64)
        if self.compiled is not None:
            return np.asarray(self.compiled.predict(matrix, n_jobs=1), dtype=np.float64)
        return np.asarray(self.booster.predict(matrix, num_threads=1), dtype=np.float64)


#: Rows the compiled model is checked on, and how far its predictions may differ.
CHECK_ROWS = 2_000
CHECK_TOLERANCE = 1e-9


def compile_model(store: ModelStore, model: LoadedModel) -> LoadedModel:
    """`model` with its trees compiled by lleaves, or ModelRefused when lleaves is not
    installed or the compiled model disagrees with LightGBM on random rows (with missing
    values among them) by more than CHECK_TOLERANCE."""
    try:
        import lleaves  # noqa: PLC0415  (optional: LightGBM scores without it)
    except ImportError:
        raise ModelRefused("lleaves is not installed") from None
    compiled = lleaves.Model(model_file=str(store.files(model.version).model))
    compiled.compile(cache=None)
    rng = np.random.default_rng(7)
    rows = rng.normal(0.0, 50.0, (CHECK_ROWS, len(FEATURES)))
    rows[rng.random(rows.shape) < 0.05] = np.nan
    expected = model.booster.predict(rows, num_threads=1)
    difference = float(np.max(np.abs(compiled.predict(rows, n_jobs=1) - expected)))
    if not difference <= CHECK_TOLERANCE:
        raise ModelRefused(f"compiled predictions differ from LightGBM's by {difference:g}")
    return dataclasses.replace(model, compiled=compiled)


def drift_references(store: ModelStore, version: str) -> References | None:
    """The distributions the training job saved in the model's report, if any."""
    try:
        report = json.loads(store.files(version).report.read_text())
        return {
            sample: {
                name: Distribution.from_json(data) for name, data in saved["distributions"].items()
            }
            for sample, saved in report["drift_reference"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        log.info("ranker model %s has no drift reference: drift is not checked", version)
        return None


def load_model(store: ModelStore, version: str) -> LoadedModel:
    """Load and check one version; ModelRefused says what is wrong with it."""
    path = store.files(version).model
    try:
        booster = lgb.Booster(model_file=str(path))
    except (lgb.basic.LightGBMError, OSError, ValueError) as exc:
        raise ModelRefused(f"{path} is missing or not a LightGBM model ({exc})") from None
    names = booster.feature_name()
    if names != list(FEATURES):
        raise ModelRefused(
            f"{path} was trained on other features ({len(names)} columns, expected "
            f"{len(FEATURES)}: {', '.join(sorted(set(names) ^ set(FEATURES))) or 'order'})"
        )
    model = LoadedModel(version, booster, references=drift_references(store, version))
    probe = model.score([[0.0] * len(FEATURES)])
    if probe.shape != (1,) or not math.isfinite(float(probe[0])):
        raise ModelRefused(f"{path} does not score a row to a probability")
    return model


@dataclass
class ModelSlot:
    store: ModelStore | None
    poll_s: float = MODEL_POLL_S
    compile: bool = True
    model: LoadedModel | None = None
    swaps: int = 0
    refused: int = 0
    _polled_at: float = -math.inf
    _refused_version: str | None = None
    _loading: asyncio.Future[None] | None = field(default=None, repr=False)
    _compiling: asyncio.Future[None] | None = field(default=None, repr=False)

    @property
    def version(self) -> str | None:
        return self.model.version if self.model is not None else None

    def poll(self) -> None:
        """Start loading the published version if it changed (at most every `poll_s`);
        returns at once: triggers never wait for a model to load."""
        if self.store is None or self._loading is not None:
            return
        now = time.monotonic()
        if now - self._polled_at < self.poll_s:
            return
        self._polled_at = now
        wanted = self.store.current()
        if wanted is None or wanted in (self.version, self._refused_version):
            return
        self._loading = asyncio.ensure_future(self._load(wanted))

    async def load_now(self) -> None:
        """Poll and wait for the load (start-up, so the first trigger has the model)."""
        self._polled_at = -math.inf
        self.poll()
        if self._loading is not None:
            await self._loading

    async def _load(self, version: str) -> None:
        store = self.store
        assert store is not None
        try:
            model = await asyncio.to_thread(load_model, store, version)
        except Exception as exc:  # any failure: the previous model keeps serving
            self.refused += 1
            self._refused_version = version
            log.error("ranker model %s refused: %s; still serving %s", version, exc, self.version)
        else:
            previous = self.version
            self.model = model  # one assignment: a trigger scores with one whole model
            self.swaps += 1
            self._refused_version = None
            log.info("ranker model %s serving (was %s)", version, previous or "popularity")
            if self.compile:
                self._compiling = asyncio.ensure_future(self._compile(store, model))
        finally:
            self._loading = None

    async def compiled(self) -> None:
        """Wait for the serving model's compilation, if one is under way."""
        if self._compiling is not None:
            await self._compiling

    async def _compile(self, store: ModelStore, model: LoadedModel) -> None:
        """Swap in the compiled form of the serving model (the same predictions)."""
        try:
            compiled = await asyncio.to_thread(compile_model, store, model)
        except Exception as exc:  # LightGBM keeps scoring
            log.warning("ranker model %s not compiled (%s): LightGBM scores it", model.version, exc)
            return
        if self.model is model:
            self.model = compiled
            log.info("ranker model %s compiled (lleaves), predictions checked", model.version)
