"""The README's HTTP API examples, run as written against a real `signals api` on seeded
stores: every `curl` line of the API section's shell block answers 200 with JSON, and
the typed client's snippet runs (only the address, the user, the product and the
category are put in)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import textwrap

from streams.settings import Settings
from tests.conftest import readme_blocks
from tests.stack.test_api import ApiServer, api, seed  # noqa: F401  (the fixture)

SECTION = "## The HTTP read API"


def section_blocks(language: str) -> list[str]:
    return readme_blocks(SECTION, language)


def put_in(line: str, url: str, user: str) -> str:
    return (
        line.replace("http://127.0.0.1:8080", url)
        .replace("localhost:8080", url.removeprefix("http://"))
        .replace("u0000001", user)
    )


def test_every_curl_example_answers_200_with_json(api: ApiServer, provisioned: Settings) -> None:  # noqa: F811
    user, _products = seed(provisioned)
    [shell] = section_blocks("bash")
    curls = [line.split("  #")[0].strip() for line in shell.splitlines() if line.startswith("curl")]
    assert len(curls) >= 9
    for line in curls:
        command = put_in(line, api.url, user) + " -o /dev/stdout -w '\\n%{http_code}'"
        done = subprocess.run(
            ["bash", "-c", command], capture_output=True, text=True, timeout=30, check=True
        )
        body, _, status = done.stdout.rpartition("\n")
        assert status == "200", (line, status, body[:300])
        json.loads(body)


def test_the_client_example_runs(api: ApiServer, provisioned: Settings) -> None:  # noqa: F811
    user, _products = seed(provisioned)
    [snippet] = [block for block in section_blocks("python") if "FeedApiClient" in block]
    imports = [line for line in snippet.splitlines() if line.startswith("from ")]
    body = "\n".join(
        line for line in snippet.splitlines() if line.strip() and not line.startswith("from ")
    )
    source = "\n".join(
        [
            *imports,
            "async def example():",
            textwrap.indent(put_in(body, api.url, user), "    "),
            "    return locals()",
        ]
    )
    namespace: dict[str, object] = {}
    exec(compile(source, "README.md", "exec"), namespace)
    results = asyncio.run(namespace["example"]())  # type: ignore[operator]
    assert results["feed"].products and results["feed"].user_id == user
    assert results["clicks"].tier == "hot"
