"""The secured stack's certificates, made once with the `openssl` command line.

Under `<state dir>/tls/`:

- `ca.pem`, `ca.key`: the stack's own CA, the one thing clients trust (the env file's
  `SIGNALS_*_CA_FILE`);
- `server.pem`, `server.key`: one certificate for every server (Kafka, Redis and its
  cluster bus, Cassandra), for `IP:127.0.0.1` and `DNS:localhost`, signed by the CA, good
  for server and client use (Kafka's inter-broker client and the Redis cluster bus present
  it to their peers);
- `server-keystore.pem`: its key, certificate and the CA in one file, the PEM keystore the
  two JVM servers read;
- `client.pem`, `client.key`: a client certificate signed by the CA, for mTLS (the servers
  ask for one but do not insist);
- `other-ca.pem`, `other-ca.key`: an unrelated CA that signed nothing of ours, for tests
  that a client trusting the wrong CA is refused.

Keys are unencrypted PKCS#8 PEM, mode 0600. Everything is made in a private temporary
folder and moved into place in one rename, so an interrupted run leaves nothing half made.
Certificates are valid for ten years; delete the folder (stack down) to make new ones.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from infra.services import StackError

VALID_DAYS = 3650
RSA_BITS = 2048
#: The names the server certificate is valid for: clients connect to 127.0.0.1.
SERVER_NAMES = "IP:127.0.0.1, DNS:localhost"

_OPENSSL_CONFIG = f"""[req]
distinguished_name = dn
prompt = no

[dn]
CN = unused

[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = {SERVER_NAMES}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer

[v3_client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


@dataclass(frozen=True)
class TlsFiles:
    """Where the stack's certificates and keys are (paths only; `ensure_tls` makes them)."""

    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def server_keystore(self) -> Path:
        """Key, certificate and CA in one PEM (Kafka's and Cassandra's PEM keystore)."""
        return self.dir / "server-keystore.pem"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.dir / "client.key"

    @property
    def other_ca_cert(self) -> Path:
        return self.dir / "other-ca.pem"

    @property
    def other_ca_key(self) -> Path:
        return self.dir / "other-ca.key"

    def all(self) -> tuple[Path, ...]:
        return (
            self.ca_cert,
            self.ca_key,
            self.server_cert,
            self.server_key,
            self.server_keystore,
            self.client_cert,
            self.client_key,
            self.other_ca_cert,
            self.other_ca_key,
        )

    def key_files(self) -> tuple[Path, ...]:
        """The files that hold a private key (mode 0600)."""
        return (
            self.ca_key,
            self.server_key,
            self.server_keystore,
            self.client_key,
            self.other_ca_key,
        )

    def missing(self) -> list[Path]:
        return [path for path in self.all() if not path.is_file()]


def ensure_tls(tls_dir: Path) -> tuple[TlsFiles, bool]:
    """The certificates under `tls_dir`, made now if there are none; (files, made now).

    A folder with some files but not all is refused rather than silently replaced: servers
    still running would hold certificates of the old CA.
    """
    files = TlsFiles(tls_dir)
    missing = files.missing()
    if not missing:
        return files, False
    if tls_dir.exists() and len(missing) < len(files.all()):
        raise StackError(
            f"tls: {tls_dir} is incomplete (no {missing[0].name}); stop the stack, delete "
            "the folder and run up again to make new certificates"
        )
    openssl = shutil.which("openssl")
    if openssl is None:
        raise StackError(
            "tls: openssl not found, needed once to make the secured stack's certificates; "
            "install it with `apt-get install -y openssl` (./dev setup does this)"
        )
    tls_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tls-", dir=tls_dir.parent) as tmp:  # mode 0700
        work = Path(tmp) / "tls"
        work.mkdir()
        _make_all(openssl, Path(tmp), TlsFiles(work))
        shutil.rmtree(tls_dir, ignore_errors=True)  # an empty folder left by hand
        work.rename(tls_dir)
    return files, True


def _make_all(openssl: str, tmp: Path, out: TlsFiles) -> None:
    config = tmp / "openssl.cnf"
    config.write_text(_OPENSSL_CONFIG)
    for key in (out.ca_key, out.server_key, out.client_key, out.other_ca_key):
        _openssl(
            openssl,
            "making a key",
            ["genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{RSA_BITS}"],
            ["-out", str(key)],
        )
    _self_signed(openssl, config, out.ca_key, out.ca_cert, "feedsignals local stack CA")
    _self_signed(
        openssl, config, out.other_ca_key, out.other_ca_cert, "unrelated CA (signed nothing)"
    )
    for key, cert, name, extensions in (
        (out.server_key, out.server_cert, "localhost", "v3_server"),
        (out.client_key, out.client_cert, "feedsignals", "v3_client"),
    ):
        _signed(openssl, config, tmp, out, key=key, cert=cert, name=name, extensions=extensions)
    out.server_keystore.write_text(
        out.server_key.read_text() + out.server_cert.read_text() + out.ca_cert.read_text()
    )
    for path in out.all():
        path.chmod(0o600 if path in out.key_files() else 0o644)
    out.dir.chmod(0o755)


def _self_signed(openssl: str, config: Path, key: Path, cert: Path, name: str) -> None:
    _openssl(
        openssl,
        f"making the CA certificate {cert.name}",
        ["req", "-config", str(config), "-x509", "-new", "-key", str(key), "-sha256"],
        ["-days", str(VALID_DAYS), "-subj", f"/CN={name}", "-extensions", "v3_ca"],
        ["-out", str(cert)],
    )


def _signed(
    openssl: str,
    config: Path,
    tmp: Path,
    out: TlsFiles,
    *,
    key: Path,
    cert: Path,
    name: str,
    extensions: str,
) -> None:
    request = tmp / f"{cert.stem}.csr"
    _openssl(
        openssl,
        f"making the request for {cert.name}",
        ["req", "-config", str(config), "-new", "-key", str(key), "-subj", f"/CN={name}"],
        ["-out", str(request)],
    )
    _openssl(
        openssl,
        f"signing {cert.name}",
        ["x509", "-req", "-in", str(request), "-CA", str(out.ca_cert)],
        ["-CAkey", str(out.ca_key), "-set_serial", str(secrets.randbits(120) | 1)],
        ["-days", str(VALID_DAYS), "-sha256", "-extfile", str(config)],
        ["-extensions", extensions, "-out", str(cert)],
    )


def _openssl(openssl: str, step: str, *parts: list[str]) -> None:
    argv = [openssl] + [arg for part in parts for arg in part]
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "OPENSSL_CONF": os.devnull},
        )
    except subprocess.TimeoutExpired:
        raise StackError(f"tls: openssl took over 60s {step}") from None
    except OSError as exc:
        raise StackError(f"tls: openssl could not run ({exc.strerror}) {step}") from None
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr + result.stdout).splitlines()]
        reason = next((line for line in lines if line), "no output")
        raise StackError(f"tls: openssl failed {step}: {reason[:300]}")
