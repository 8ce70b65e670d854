"""The SSH keypair the kernels of one cluster session use to reach each other."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sokovan.constants import SSH_KEY_BITS, SSH_KEY_COMMENT


@dataclass(frozen=True, slots=True)
class ClusterSSHKeyPair:
    """A private key in PEM and its public key in OpenSSH authorized-keys form."""

    private_key: str
    public_key: str

    def __repr__(self) -> str:
        # Keeps the private key out of logs and tracebacks.
        return f"ClusterSSHKeyPair(public_key={self.public_key!r}, private_key=<hidden>)"

    def to_agent(self) -> dict[str, str]:
        """The agent's ClusterSSHKeyPair mapping."""
        return {"private_key": self.private_key, "public_key": self.public_key}


def generate_cluster_ssh_keypair() -> ClusterSSHKeyPair:
    """Generates a fresh RSA keypair (CPU-bound: call it off the event loop)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=SSH_KEY_BITS)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    private = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.TraditionalOpenSSL,
        encryption_algorithm=serialization.NoEncryption(),
    )
    return ClusterSSHKeyPair(
        private_key=private.decode("ascii"),
        public_key=f"{public.decode('ascii')} {SSH_KEY_COMMENT}",
    )


async def create_cluster_ssh_keypair() -> ClusterSSHKeyPair:
    """Generates a cluster keypair in a worker thread so the loop keeps serving other sessions."""
    return await asyncio.to_thread(generate_cluster_ssh_keypair)
