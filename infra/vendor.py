"""The stack's servers, assembled from Maven Central jars with Maven, once per machine folder.

Apache Kafka and Apache Cassandra both publish their servers to Maven Central as ordinary
artifacts (`org.apache.kafka:kafka_2.13`, `org.apache.cassandra:cassandra-all`). A bundle
is one such artifact plus whatever the server needs at run time that its POM leaves out
(Kafka's SLF4J binding), copied with every transitive dependency into
`<state dir>/vendor/<name>/lib` by `mvn dependency:copy-dependencies`. Maven keeps its own
download cache (`~/.m2/repository` unless the user's Maven settings say otherwise), so a
second state folder on the same machine assembles in seconds without downloading.

A bundle folder is complete only once its marker file exists and lists exactly the
bundle's artifacts (a changed version assembles anew). Assembly holds a lock on the vendor
folder, so two `up`s at once do not both run Maven, and removes what an interrupted
assembly (killed, out of power) left behind before it starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: The dependency plugin pinned, so every machine copies with the same code.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
COMPLETE_MARKER = ".complete"
#: Longest a first download may take before `up` gives up and says so (a network that
#: drops packets would otherwise hang it silently).
MAVEN_TIMEOUT_S = 900


class VendorError(RuntimeError):
    """Assembling a bundle failed; the message is one line a user can act on."""


@dataclass(frozen=True)
class Artifact:
    group: str
    artifact: str
    version: str

    def pom_xml(self) -> str:
        return (
            "    <dependency>"
            f"<groupId>{self.group}</groupId><artifactId>{self.artifact}</artifactId>"
            f"<version>{self.version}</version></dependency>\n"
        )


@dataclass(frozen=True)
class Bundle:
    """A server's jars: `name` is the folder (and what messages call it)."""

    name: str
    title: str
    artifacts: tuple[Artifact, ...]

    def home(self, state_dir: Path) -> Path:
        return state_dir / "vendor" / self.name

    def lib_dir(self, state_dir: Path) -> Path:
        return self.home(state_dir) / "lib"

    def is_assembled(self, state_dir: Path) -> bool:
        try:
            return (self.home(state_dir) / COMPLETE_MARKER).read_text() == self.manifest()
        except FileNotFoundError:
            return False

    def manifest(self) -> str:
        return "".join(f"{a.group}:{a.artifact}:{a.version}\n" for a in self.artifacts)

    def classpath(self, state_dir: Path) -> str:
        return str(self.lib_dir(state_dir) / "*")

    def pom(self) -> str:
        return (
            '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
            "  <modelVersion>4.0.0</modelVersion>\n"
            f"  <groupId>feedsignals.local</groupId><artifactId>{self.name}</artifactId>\n"
            "  <version>1</version><packaging>pom</packaging>\n"
            "  <dependencies>\n"
            + "".join(artifact.pom_xml() for artifact in self.artifacts)
            + "  </dependencies>\n</project>\n"
        )

    def assemble(self, state_dir: Path, log_file: Path) -> tuple[int, float]:
        """Copy the bundle's jars into the state folder; returns (bytes, seconds)."""
        home = self.home(state_dir)
        if self.is_assembled(state_dir):
            return folder_bytes(home), 0.0
        mvn = shutil.which("mvn")
        if mvn is None:
            raise VendorError(
                f"{self.title}: mvn (Maven) not found, needed once to fetch the server from "
                "Maven Central; install it with `apt-get install -y maven` (./dev setup does this)"
            )
        home.parent.mkdir(parents=True, exist_ok=True)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        with _locked(home.parent / ".lock"):
            if self.is_assembled(state_dir):  # another `up` finished it while we waited
                return folder_bytes(home), 0.0
            for leftover in home.parent.glob(f".{self.name}-*"):
                shutil.rmtree(leftover, ignore_errors=True)
            with tempfile.TemporaryDirectory(prefix=f".{self.name}-", dir=home.parent) as tmp:
                work = Path(tmp)
                self._run_maven(mvn, work, log_file)
                staged = work / "bundle"
                staged.mkdir()
                (work / "lib").rename(staged / "lib")
                (staged / "pom.xml").write_text(self.pom())
                (staged / COMPLETE_MARKER).write_text(self.manifest())
                shutil.rmtree(home, ignore_errors=True)  # an outdated or partial bundle
                staged.rename(home)
        return folder_bytes(home), time.monotonic() - began

    def _run_maven(self, mvn: str, work: Path, log_file: Path) -> None:
        (work / "pom.xml").write_text(self.pom())
        with log_file.open("wb") as log:
            try:
                result = subprocess.run(
                    [
                        mvn,
                        "--batch-mode",
                        "--no-transfer-progress",
                        "-f",
                        str(work / "pom.xml"),
                        f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                        f"-DoutputDirectory={work / 'lib'}",
                        "-DincludeScope=runtime",
                    ],
                    cwd=work,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    check=False,
                    timeout=MAVEN_TIMEOUT_S,
                    env={**os.environ, "MAVEN_OPTS": os.environ.get("MAVEN_OPTS", "-Xmx512m")},
                )
            except subprocess.TimeoutExpired:
                raise VendorError(
                    f"{self.title}: fetching from Maven Central took over {MAVEN_TIMEOUT_S}s; "
                    f"is the network dropping packets? (log: {log_file})"
                ) from None
        if result.returncode != 0:
            raise VendorError(f"{self.title}: {maven_failure(log_file)} (log: {log_file})")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on a file, held for the block (released if the process dies)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def maven_failure(log_file: Path) -> str:
    """One line saying why Maven failed, read from its log."""
    text = log_file.read_text(errors="replace")
    transfer = re.search(
        r"Could not transfer artifact (\S+) from/to (\S+) \((\S+)\): (.*?)(?: -> \[Help|$)",
        text,
        re.MULTILINE,
    )
    if transfer:
        artifact, _, url, reason = transfer.groups()
        reason = re.sub(r"^transfer failed for \S+: ", "", reason.strip())
        return (
            f"Maven Central is unreachable from this machine: fetching {artifact} from {url} "
            f"failed ({reason})"
        )
    missing = re.search(r"Could not (?:find|resolve) artifact (\S+)", text)
    if missing:
        return f"Maven Central does not serve {missing.group(1)}"
    errors = [
        line.removeprefix("[ERROR]").strip()
        for line in text.splitlines()
        if line.startswith("[ERROR]") and line.removeprefix("[ERROR]").strip()
    ]
    return "Maven failed: " + (errors[0] if errors else "no error line in its output")


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def java_major(java: str) -> int | None:
    """The major version of a `java` binary (17 for "17.0.15"), None if it does not run."""
    try:
        result = subprocess.run(
            [java, "-version"], capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major
