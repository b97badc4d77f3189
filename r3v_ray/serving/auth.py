"""Optional API keys for the HTTP API, pure.

Keys come from `serve.api_keys` and from the file named by the environment variable R3V_SERVE_API_KEYS_FILE
(one key a line; blank lines and lines starting with '#' are skipped), both read where the app is built (the
`r3v serve` or `serve run` process). Only their SHA-256 digests travel into the Serve deployment; a presented key
is hashed and compared with every digest in constant time (hmac.compare_digest, no early exit), so neither the
keys nor the time a comparison takes give a key away. No keys: the API is open (it binds 127.0.0.1 by default).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Mapping

from r3v_ray.config import ConfigError, ServeConfig

KEYS_FILE_ENV = "R3V_SERVE_API_KEYS_FILE"
OPEN_PATHS = ("/healthz",)  # answered without a key: load balancers and Serve's own health probes call it


def load_keys(cfg: ServeConfig, environ: Mapping[str, str] = os.environ) -> list[str]:
    keys = [k.strip() for k in cfg.api_keys if k.strip()]
    path = environ.get(KEYS_FILE_ENV)
    if path:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"{KEYS_FILE_ENV}={path}: cannot read the API keys file ({exc.strerror})") from None
        file_keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not file_keys:
            raise ConfigError(f"{KEYS_FILE_ENV}={path}: the API keys file holds no key")
        keys += file_keys
    return keys


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class KeyCheck:
    """Whether an Authorization header carries one of the keys (given as digests)."""

    def __init__(self, digests: list[str]):
        self.digests = list(digests)

    @property
    def required(self) -> bool:
        return bool(self.digests)

    def allows(self, authorization: str | None) -> bool:
        if not self.required:
            return True
        scheme, _, key = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return False
        presented = digest(key.strip())
        found = False
        for ref in self.digests:  # every digest compared, whichever matches
            found |= hmac.compare_digest(presented, ref)
        return found
