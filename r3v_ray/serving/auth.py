"""Optional API keys for the HTTP API, pure.

Keys come from `serve.api_keys` and from the file named by the environment variable R3V_SERVE_API_KEYS_FILE
(one key a line, UTF-8; blank lines and lines starting with '#' are skipped), both read where the app is built
(the `r3v serve` or `serve run` process). Keys never fail open: a blank key, the variable set but empty, or a
file that cannot be read, cannot be decoded or holds no key stops the start with one line naming the source.
Only the keys' SHA-256 digests travel into the Serve deployment; a presented key is hashed and compared with
every digest in constant time (hmac.compare_digest, no early exit), so neither the keys nor the time a
comparison takes give a key away. No keys: the API is open (it binds 127.0.0.1 by default).
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
    """Every key, or a ConfigError naming its source: keys never fail open, so a blank key, a set-but-empty
    R3V_SERVE_API_KEYS_FILE, or a keys file that cannot be read or decoded refuses to start rather than serve
    without the keys the operator meant to set."""
    keys = []
    for i, key in enumerate(cfg.api_keys):
        if not key.strip():
            raise ConfigError(f"serve.api_keys[{i}]: an empty or blank key; remove it or set a key")
        keys.append(key.strip())
    if KEYS_FILE_ENV in environ:
        keys += _file_keys(environ[KEYS_FILE_ENV])
    return keys


def _file_keys(path: str) -> list[str]:
    where = f"{KEYS_FILE_ENV}={path!r}"
    if not path.strip():
        raise ConfigError(f"{where}: the variable is set but empty; name the API keys file or unset it")
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the API keys file ({exc.strerror})") from None
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: the API keys file is not UTF-8 text (byte {exc.start})") from None
    keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise ConfigError(f"{where}: the API keys file holds no key")
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
