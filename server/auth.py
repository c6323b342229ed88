"""Tokens: the only module that imports ``jwt``.

``Verifier.verify`` turns a bearer token into :class:`Claims` or raises :class:`AuthError` with
the contract's refusal. Algorithms are pinned by configuration (HMAC and public-key algorithms
are never mixed, ``none`` is never accepted), ``sub`` and ``exp`` are required, ``iss``/``aud``
are checked when configured and a ``typ`` header, when present, must be ``JWT``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from . import codes
from .config import HMAC_ALGORITHMS, Settings
from .errors import AuthError, ConfigError


@dataclass(frozen=True)
class Claims:
    """What a verified token says, kept with the connection for later events."""

    user_id: str
    exp: float
    iat: float | None = None
    role: str | None = None
    jti: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _now() -> float:
    return time.time()


class Verifier:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = _now) -> None:
        self._algorithms = list(settings.algorithms)
        self._hmac = self._algorithms[0] in HMAC_ALGORITHMS
        self._key: Any = settings.jwt_secret if self._hmac else _read_key(settings.jwt_public_key_file)
        self._issuer = settings.jwt_issuer or None
        self._audience = settings.jwt_audience or None
        self._leeway = settings.jwt_leeway_s
        self._max_bytes = settings.jwt_max_token_bytes
        self._clock = clock
        required = ["sub", "exp"] + (["iss"] if self._issuer else []) + (["aud"] if self._audience else [])
        self._options: dict[str, Any] = {"require": required, "verify_aud": self._audience is not None}

    def verify(self, token: str) -> Claims:
        if not token:
            raise AuthError(codes.TOKEN_MISSING)
        if len(token) > self._max_bytes:
            raise AuthError(codes.TOKEN_INVALID, "token too large")
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") not in self._algorithms:
                raise AuthError(codes.TOKEN_INVALID, f"algorithm {header.get('alg')!r} not allowed")
            typ = header.get("typ")
            if typ is not None and str(typ).upper() != "JWT":
                raise AuthError(codes.TOKEN_INVALID, "typ header is not JWT")
            payload = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options=self._options,  # type: ignore[arg-type]
            )
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError) as exc:
            raise AuthError(codes.TOKEN_EXPIRED, str(exc)) from None
        except jwt.PyJWTError as exc:
            raise AuthError(codes.TOKEN_INVALID, str(exc)) from None
        except (ValueError, TypeError) as exc:  # e.g. a key that does not fit the algorithm
            raise AuthError(codes.TOKEN_INVALID, str(exc)) from None
        sub = payload.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 128:
            raise AuthError(codes.TOKEN_INVALID, "sub must be a non-empty string")
        known = {"sub", "exp", "iat", "role", "jti", "iss", "aud", "nbf"}
        return Claims(
            user_id=sub,
            exp=float(payload["exp"]),
            iat=float(payload["iat"]) if isinstance(payload.get("iat"), (int, float)) else None,
            role=payload.get("role") if isinstance(payload.get("role"), str) else None,
            jti=payload.get("jti") if isinstance(payload.get("jti"), str) else None,
            extra={k: v for k, v in payload.items() if k not in known},
        )


def _read_key(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"jwt key file {path}: {exc.strerror}") from None


def mint(
    settings: Settings,
    user_id: str,
    *,
    ttl_s: float = 3600,
    role: str | None = None,
    claims: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """Sign a token with the configured key (the secret, or ``jwt_private_key_file``)."""
    algorithm = settings.algorithms[0]
    if algorithm in HMAC_ALGORITHMS:
        key: Any = settings.jwt_secret
    elif settings.jwt_private_key_file:
        key = _read_key(settings.jwt_private_key_file)
    else:
        raise ConfigError(
            f"jwt_private_key_file: needed to sign {algorithm} tokens (the server only holds the public key)"
        )
    issued = _now() if now is None else now
    payload: dict[str, Any] = {"jti": uuid.uuid4().hex, **dict(claims or {})}
    payload.update({"sub": user_id, "iat": int(issued), "exp": int(issued + ttl_s)})
    if role:
        payload["role"] = role
    if settings.jwt_issuer:
        payload.setdefault("iss", settings.jwt_issuer)
    if settings.jwt_audience:
        payload.setdefault("aud", settings.jwt_audience)
    return jwt.encode(payload, key, algorithm=algorithm, headers={"typ": "JWT"})
