"""Realistic synthetic traffic: a catalog, a lazily derived user population, and an
endless, deterministic stream of session-shaped Events in simulated time.

    params = TrafficParams(seed=7, rate=1000)
    events = simulate(params, start_ms=now_ms)      # endless Iterator[Event]

Offline callers iterate as fast as they like; live callers send each event when the wall
clock reaches its `event_time_ms`. `TrafficSimulation` is the same stream that also
remembers which users appeared, for `write_traffic`. See `simulation.py` for the model.
"""

from jobs.traffic.catalog import Catalog, Product, category_id, product_id, seller_id
from jobs.traffic.dataset import load_catalog, load_params, load_users, write_traffic
from jobs.traffic.params import TrafficParams
from jobs.traffic.population import UserProfile, user_id, user_index, user_profile
from jobs.traffic.simulation import (
    SessionShape,
    TrafficSimulation,
    default_catalog,
    session_shape,
    simulate,
    synthetic_events,
)

__all__ = [
    "Catalog",
    "Product",
    "SessionShape",
    "TrafficParams",
    "TrafficSimulation",
    "UserProfile",
    "category_id",
    "default_catalog",
    "load_catalog",
    "load_params",
    "load_users",
    "product_id",
    "seller_id",
    "session_shape",
    "simulate",
    "synthetic_events",
    "user_id",
    "user_index",
    "user_profile",
    "write_traffic",
]
