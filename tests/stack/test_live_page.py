"""The live page in a real headless browser (Debian's chromium, driven by Playwright; no
browser is downloaded): served by `signals api` beside a real worker and ranker, it shows
a user's feed, last-k and features and the pipeline panel, and the feed changes after
events for that user are produced."""

from __future__ import annotations

import itertools
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Page, expect, sync_playwright

from jobs.traffic import simulate
from schemas.catalog import CatalogItem
from schemas.events import Event, EventType
from streams.settings import Settings
from tests.conftest import free_port, wait_for
from tests.stack.test_api import ApiServer
from tests.stack.test_feature_pipeline import FEATURES_ON, send
from tests.stack.test_ranker import PARAMS, feeds_of, load_catalog

CHROMIUM = os.environ.get("SIGNALS_TEST_CHROMIUM", "/usr/bin/chromium")
#: Without the background-networking flags chromium keeps calling out, and this
#: machine's closed network refuses every call.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium() -> Iterator[Browser]:
    """Playwright's sync API runs an event loop on this thread while it is open: the
    test's own `asyncio.run` store reads happen before it starts."""
    executable = shutil.which(CHROMIUM) or CHROMIUM
    assert Path(executable).exists(), (
        f"{CHROMIUM} not found: `./dev test` installs Debian's chromium package "
        "(or set SIGNALS_TEST_CHROMIUM to a Chromium binary)"
    )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def feed_ids(page: Page) -> list[str]:
    return page.locator("#feed li").evaluate_all("items => items.map(li => li.dataset.product)")


def test_the_live_page_shows_a_users_feed_and_follows_their_events(
    provisioned: Settings,
    isolated_env: dict[str, str],
    worker: Callable,
    tmp_path: Path,
) -> None:
    catalog = load_catalog(provisioned)
    ports = {"worker": free_port(), "ranker": free_port()}
    env = {
        **isolated_env,
        **FEATURES_ON,
        "SIGNALS_WORKER_METRICS_PORT": str(ports["worker"]),
        "SIGNALS_RANKER_METRICS_PORT": str(ports["ranker"]),
        "SIGNALS_API_PIPELINE_METRICS": ",".join(
            f"http://127.0.0.1:{port}/metrics" for port in ports.values()
        ),
    }
    events = list(itertools.islice(simulate(PARAMS, int(time.time() * 1000) - 120_000), 300))
    user = Counter(e.user_id for e in events).most_common(1)[0][0]
    api = ApiServer(env, tmp_path / "api.log")
    try:
        with worker(env), worker(env, "ranker") as ranker:
            send(provisioned, events)
            wait_for(
                lambda: feeds_of(provisioned, [user])[user] is not None,
                90,
                f"a feed for {user}",
                on_fail=lambda: ranker.log_text()[-3000:],
            )
            with chromium() as browser:
                follow_the_page(browser, api.url, user, catalog, provisioned, tmp_path / "live.png")
    finally:
        api.stop()


def follow_the_page(
    browser: Browser,
    url: str,
    user: str,
    catalog: dict[str, CatalogItem],
    settings: Settings,
    screenshot: Path,
) -> None:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{url}/?user={user}")

    # The feed, the last-k and the features of the user appear.
    expect(page.locator("#feed li").first).to_be_visible(timeout=15_000)
    expect(page.locator("#feed-meta")).to_contain_text("model popularity")
    expect(page.locator("#tier")).to_have_text("hot")
    expect(page.locator("#lastk li").first).to_be_visible()
    expect(page.locator("#features table")).to_be_visible()
    # The pipeline panel: rates once two scrapes are apart, the serving model,
    # both sources up, the user among the recently active.
    expect(page.locator("#p-events")).not_to_have_text("\N{EN DASH}", timeout=15_000)
    expect(page.locator("#p-model")).to_have_text("popularity")
    expect(page.locator("#p-sources")).not_to_contain_text("down")
    expect(page.locator("#users-list button").first).to_be_visible()
    assert int(page.locator("#p-hot").inner_text()) >= 1
    generated = page.locator("#feed-meta").get_attribute("data-generated-at")
    before = feed_ids(page)

    # New events of the user: a click and an order on a product not in their feed.
    product = next(p for p in catalog if p not in before)
    item = catalog[product]
    now = int(time.time() * 1000)
    fresh = [
        Event(
            event_id=str(uuid.uuid4()),
            user_id=user,
            event_type=kind,
            event_time_ms=now + i,
            product_id=product,
            category_id=item.category_id,
            price_paise=item.price_paise,
            order_id=str(uuid.uuid4()) if kind is EventType.ORDER else None,
            quantity=1 if kind is EventType.ORDER else None,
        )
        for i, kind in enumerate([EventType.CLICK, EventType.ORDER])
    ]
    send(settings, fresh)

    # The page follows: the product in the user's last-k, a newer feed.
    expect(
        page.locator(f'#lastk ul[data-type="click"] li[data-product="{product}"]')
    ).to_be_visible(timeout=30_000)
    expect(page.locator("#feed-meta")).not_to_have_attribute(
        "data-generated-at", generated or "", timeout=30_000
    )
    assert feed_ids(page), "the newer feed is shown"
    assert product not in feed_ids(page), "an ordered product is not re-offered"
    # Searching by a prefix of the id offers the user.
    page.locator("#user-input").fill(user[:-1])
    expect(page.locator(f'#user-options option[value="{user}"]')).to_have_count(1)
    page.screenshot(path=str(screenshot), full_page=True)
    assert not errors, errors
    page.close()
