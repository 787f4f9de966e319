"""Write a generated data set's ground truth to a directory, and read it back.

Layout: `params.json` (TrafficParams.to_json), `products.csv` (Catalog.write) and
`users.csv` (the users that appeared, with their latent preferences). The ranker trains on
the events and can be scored against the latent truth; tests reload it instead of
regenerating.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from jobs.traffic.catalog import Catalog
from jobs.traffic.params import TrafficParams
from jobs.traffic.population import UserProfile

PARAMS_FILE = "params.json"
USERS_FILE = "users.csv"
USER_COLUMNS = ("user_id", "language", "platform", "price_sensitivity", "preferences")


def write_traffic(
    directory: str | Path,
    params: TrafficParams,
    catalog: Catalog,
    users: Iterable[UserProfile],
    *,
    top_preferences: int = 5,
) -> Path:
    """Write params, catalog and users (each with its `top_preferences` strongest categories)."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    (root / PARAMS_FILE).write_text(params.to_json(), encoding="utf-8")
    catalog.write(root)
    with (root / USERS_FILE).open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(USER_COLUMNS)
        for user in users:
            preferences = " ".join(
                f"{category}:{weight!r}" for category, weight in user.preferences[:top_preferences]
            )
            writer.writerow(
                (
                    user.user_id,
                    user.language,
                    user.platform,
                    repr(user.price_sensitivity),
                    preferences,
                )
            )
    return root


def load_params(directory: str | Path) -> TrafficParams:
    return TrafficParams.from_json((Path(directory) / PARAMS_FILE).read_text(encoding="utf-8"))


def load_catalog(directory: str | Path) -> Catalog:
    return Catalog.load(directory)


def load_users(directory: str | Path) -> list[UserProfile]:
    """The users `write_traffic` wrote, in file order (preferences cut to the top N written)."""
    path = Path(directory) / USERS_FILE
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != USER_COLUMNS:
            raise ValueError(f"{path}: expected columns {', '.join(USER_COLUMNS)}")
        return [
            UserProfile(
                user_id=row["user_id"],
                language=row["language"],
                platform=row["platform"],
                preferences=tuple(
                    (category, float(weight))
                    for category, weight in (pair.split(":") for pair in row["preferences"].split())
                ),
                price_sensitivity=float(row["price_sensitivity"]),
            )
            for row in reader
        ]
