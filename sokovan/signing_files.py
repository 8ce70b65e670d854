"""Task message signing material: where the key, certificate and trusted store are, and a start.

Celery's `auth` serializer signs each message body with the sender's private key; workers
accept a message only when a certificate of the trusted store verifies it.
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from sokovan.config import Settings
from sokovan.constants import SIGNING_CERT_DAYS
from sokovan.errors import ConfigError

# Task signing material made by `sokovan certs init`: RSA of the size Celery's examples use,
# and a certificate valid for a year (Celery refuses messages once it has expired).
SIGNING_KEY_BITS: Final = 2048

KEY_FILE = "signing.key"
CERT_FILE = "signing.pem"
STORE_DIR = "trusted"


@dataclass(frozen=True, slots=True)
class SigningFiles:
    """The sender's key and certificate, and the folder of certificates workers trust."""

    key: Path
    cert: Path
    store: Path


def signing_files(settings: Settings) -> SigningFiles | None:
    """The configured signing material, or None when messages are not signed.

    SOKOVAN_TASK_SIGNING_DIR names a folder laid out by `sokovan certs init`; the three
    file settings override its parts. Raises ConfigError naming a missing setting.
    """
    folder = settings.task_signing_dir
    key = settings.task_signing_key or (folder / KEY_FILE if folder else None)
    cert = settings.task_signing_cert or (folder / CERT_FILE if folder else None)
    store = settings.task_signing_cert_store or (folder / STORE_DIR if folder else None)
    given = {"KEY": key, "CERT": cert, "CERT_STORE": store}
    if not any(given.values()):
        return None
    missing = [f"SOKOVAN_TASK_SIGNING_{n}" for n, v in given.items() if v is None]
    if missing:
        raise ConfigError(f"task signing is half configured: set {', '.join(missing)}")
    assert key is not None and cert is not None and store is not None
    for name, path in given.items():
        if path is not None and not path.exists():
            raise ConfigError(f"SOKOVAN_TASK_SIGNING_{name}: {path} does not exist")
    return SigningFiles(key, cert, store)


def create_signing_files(
    folder: Path, common_name: str = "sokovan", days: int = SIGNING_CERT_DAYS
) -> SigningFiles:
    """A private key (mode 600), a self-signed certificate, and a trusted store holding it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=SIGNING_KEY_BITS)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    files = SigningFiles(folder / KEY_FILE, folder / CERT_FILE, folder / STORE_DIR)
    files.store.mkdir(parents=True, exist_ok=True)
    files.key.touch(mode=0o600)
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    shutil.copyfile(files.cert, files.store / f"{common_name}.pem")
    return files
