"""Which values are secret, and their redacted copies for reprs, events and logs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from sokovan.constants import DEFAULT_SECRET_ENV_PATTERNS, REDACTED, SECRET_FIELD_NAMES

# An environ value of this form names a secret stored encrypted beforehand (the CLI and the
# Python API send these instead of the value); the worker binds it to the new session.
SECRET_REF_PREFIX: Final = "sokovan-secret-ref:"

Patterns = Iterable[str]


def is_secret_name(name: str, patterns: Patterns = DEFAULT_SECRET_ENV_PATTERNS) -> bool:
    """Whether an environ or field name looks secret (contains a pattern, any case)."""
    upper = name.upper()
    return any(p.upper() in upper for p in patterns if p)


def is_secret_ref(value: object) -> bool:
    """Whether an environ value is a reference to a stored secret."""
    return isinstance(value, str) and value.startswith(SECRET_REF_PREFIX)


def secret_ref(ref_id: str) -> str:
    """The environ value that stands for the stored secret `ref_id`."""
    return f"{SECRET_REF_PREFIX}{ref_id}"


def ref_id_of(value: str) -> str:
    """The stored secret's id in a reference value."""
    return value[len(SECRET_REF_PREFIX) :]


def split_environ(
    environ: Mapping[str, str], patterns: Patterns = DEFAULT_SECRET_ENV_PATTERNS
) -> tuple[dict[str, str], dict[str, str]]:
    """(clear, secret): secret are references and values under secret-looking names."""
    clear: dict[str, str] = {}
    secret: dict[str, str] = {}
    for name, value in environ.items():
        target = secret if is_secret_ref(value) or is_secret_name(name, patterns) else clear
        target[str(name)] = str(value)
    return clear, secret


def redact_environ(
    environ: Mapping[Any, Any], patterns: Patterns = DEFAULT_SECRET_ENV_PATTERNS
) -> dict[Any, Any]:
    """An environ with secret values (and references) replaced by REDACTED."""
    return {
        k: REDACTED if is_secret_ref(v) or is_secret_name(str(k), patterns) else v
        for k, v in environ.items()
    }


def redact(value: Any, patterns: Patterns = DEFAULT_SECRET_ENV_PATTERNS) -> Any:
    """A copy of task arguments with every secret value replaced by REDACTED.

    Secret are: values of fields declared secret (SECRET_FIELD_NAMES) or named like a
    secret, environ values under secret-looking names, and stored-secret references.
    """
    patterns = tuple(patterns)
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            name = str(key)
            if name in SECRET_FIELD_NAMES or is_secret_name(name, patterns):
                out[key] = REDACTED
            elif name == "environ" and isinstance(item, Mapping):
                out[key] = redact_environ(item, patterns)
            else:
                out[key] = redact(item, patterns)
        return out
    if isinstance(value, list | tuple):
        return type(value)(redact(v, patterns) for v in value)
    if is_secret_ref(value):
        return REDACTED
    return value
