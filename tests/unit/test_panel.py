"""The live page's pipeline panel: rates between two scrapes, summed over processes, a
restarted process counted from zero, and the freshness quantile from the buckets."""

from __future__ import annotations

import pytest

from streams.logic.panel import bucket_quantile, panel_between, parse_scrape


def worker_text(events: int, fresh: tuple[int, int, int], fresh_sum: float, hot: int) -> str:
    le_01, le_1, total = fresh
    return f"""# TYPE feedsignals_events_consumed_total counter
feedsignals_events_consumed_total {events}
# TYPE feedsignals_dead_letters_total counter
feedsignals_dead_letters_total{{reason="user_id"}} 2
# TYPE feedsignals_sessions_hot gauge
feedsignals_sessions_hot{{partition="0"}} {hot}
feedsignals_sessions_hot{{partition="1"}} 1
# TYPE feedsignals_event_freshness_seconds histogram
feedsignals_event_freshness_seconds_bucket{{le="0.1"}} {le_01}
feedsignals_event_freshness_seconds_bucket{{le="1.0"}} {le_1}
feedsignals_event_freshness_seconds_bucket{{le="+Inf"}} {total}
feedsignals_event_freshness_seconds_count {total}
feedsignals_event_freshness_seconds_sum {fresh_sum}
"""


RANKER = """# TYPE feedsignals_ranker_triggers_total counter
feedsignals_ranker_triggers_total 40
# TYPE feedsignals_ranker_model_info gauge
feedsignals_ranker_model_info{compiled="true",version="v1"} 1
"""


def test_rates_are_the_counters_increase_over_the_interval_summed_over_processes() -> None:
    first = parse_scrape(
        [worker_text(100, (0, 0, 0), 0.0, 3), worker_text(50, (0, 0, 0), 0, 0)], 10.0
    )
    later = parse_scrape(
        [worker_text(300, (90, 100, 100), 5.0, 4), worker_text(150, (0, 0, 0), 0, 0), RANKER], 12.0
    )
    figures = panel_between(first, later)
    assert figures.interval_s == 2.0
    assert figures.rates["events"] == pytest.approx((450 - 150) / 2)
    assert figures.rates["reranks"] == pytest.approx(40 / 2)  # new source: from zero
    assert figures.rates["sessions_flushed"] is None  # no process reports it
    assert figures.freshness_mean_s == pytest.approx(0.05)
    assert 0.1 < (figures.freshness_p99_s or 0) <= 1.0
    assert later.sessions_hot == 4 + 1 + 0 + 1
    assert later.dead_letters == {"user_id": 4}
    assert later.models == ("v1",)


def test_the_first_scrape_has_no_rates_and_a_restart_counts_from_zero() -> None:
    current = parse_scrape([worker_text(20, (0, 0, 0), 0, 0)], 5.0)
    assert panel_between(None, current).rates["events"] is None
    before = parse_scrape([worker_text(1000, (0, 0, 0), 0, 0)], 4.0)
    assert panel_between(before, current).rates["events"] == pytest.approx(20.0)


def test_bucket_quantile_interpolates_like_histogram_quantile() -> None:
    buckets = {0.1: 50.0, 1.0: 100.0, float("inf"): 100.0}
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.1)
    assert bucket_quantile(0.75, buckets) == pytest.approx(0.55)
    assert bucket_quantile(0.99, {0.1: 0.0, float("inf"): 10.0}) == pytest.approx(0.1)
    assert bucket_quantile(0.99, {float("inf"): 0.0}) is None
