"""The ranker's model slot: which LightGBM model scores, swapped without a restart.

The slot polls the model folder's CURRENT pointer (`sinks.model_store`) at most every
`poll_s`. A new version is loaded in a thread while triggers keep scoring with the model
they have; once it loaded and passed its checks (the features it was trained on are
exactly `streams.logic.ranking.FEATURES`, and it scores a row to a finite probability)
it replaces the old one in a single assignment, so every trigger scores with one whole
model, and the feed it writes records that model's version. A model that fails to load
is logged once with the reason and the previous one keeps serving; the slot tries again
only when CURRENT names another version.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
from numpy.typing import NDArray

from sinks.model_store import ModelStore
from streams.logic.ranking import FEATURES

log = logging.getLogger(__name__)

#: How often the slot looks at CURRENT.
MODEL_POLL_S = 5.0


class ModelRefused(ValueError):
    """A model file that cannot serve (the message says why)."""


@dataclass(frozen=True)
class LoadedModel:
    version: str
    booster: lgb.Booster

    def score(self, rows: Sequence[Sequence[float]]) -> NDArray[np.float64]:
        """Click probabilities, one per row (rows in `FEATURES` order)."""
        matrix = np.asarray(rows, dtype=np.float64)
        return np.asarray(self.booster.predict(matrix, num_threads=1), dtype=np.float64)


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
    model = LoadedModel(version, booster)
    probe = model.score([[0.0] * len(FEATURES)])
    if probe.shape != (1,) or not math.isfinite(float(probe[0])):
        raise ModelRefused(f"{path} does not score a row to a probability")
    return model


@dataclass
class ModelSlot:
    store: ModelStore | None
    poll_s: float = MODEL_POLL_S
    model: LoadedModel | None = None
    swaps: int = 0
    refused: int = 0
    _polled_at: float = -math.inf
    _refused_version: str | None = None
    _loading: asyncio.Future[None] | None = field(default=None, repr=False)

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
        finally:
            self._loading = None
