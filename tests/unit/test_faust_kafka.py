"""The ranker's Faust consumer is built with the configured fetch wait, not Faust's 1.5 s,
and keeps every other setting Faust gives it (nothing here connects to a broker)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from streams.bootstrap import build_ranker_app
from streams.settings import Settings


def built_consumer_settings(settings: Settings) -> tuple[int, str | None, bool]:
    async def build() -> tuple[int, str | None, bool]:
        app = build_ranker_app(settings)
        thread = app.consumer._thread  # type: ignore[attr-defined]
        consumer = thread._create_worker_consumer(app.transport)
        fetcher_wait = consumer._fetch_max_wait_ms
        await consumer.stop()  # never started: this only closes its client
        thread.thread_loop.close()  # the consumer thread's own loop, never started here
        return fetcher_wait, consumer._group_id, consumer._enable_auto_commit

    return asyncio.run(build())


def test_the_ranker_consumer_holds_a_fetch_for_the_configured_wait(tmp_path: Path) -> None:
    settings = Settings(faust_datadir=tmp_path, ranker_fetch_max_wait_ms=35)
    wait, group, auto_commit = built_consumer_settings(settings)
    assert wait == 35
    assert group == settings.ranker_app_id  # Faust's own choices are kept
    assert auto_commit is False


def test_the_default_wait_is_short(tmp_path: Path) -> None:
    wait, _, _ = built_consumer_settings(Settings(faust_datadir=tmp_path))
    assert wait == Settings.model_fields["ranker_fetch_max_wait_ms"].default < 1500
