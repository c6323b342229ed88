"""Tokens: the only module that imports ``jwt``.

``Verifier.verify`` turns a bearer token into :class:`Claims` or raises :class:`AuthError` with
the contract's refusal. Algorithms are pinned by configuration (HMAC and public-key algorithms
are never mixed, ``none`` is never accepted), ``sub`` and ``exp`` are required, ``iss``/``aud``
are checked when configured, a ``typ`` header, when present, must be ``JWT``, and a ``crit``
header is refused (RFC 7515 §4.1.11: we understand no extension, so none may be critical).
A token may live no longer than ``jwt_max_lifetime_s`` (``exp - iat``, or ``exp - now`` without
``iat``): revocations are kept that long (see :mod:`server.revocation`).

Key rotation: besides the main key there may be a *previous* key, with algorithms of its own,
accepted until ``jwt_previous_key_until``. Each key is pinned to its algorithms, so an HS token
is never checked against an RS key or the other way round. A connection whose token was signed
with the previous key lives no longer than that key: its :attr:`Claims.exp` is capped at the
key's end, so it gets ``token_expiring`` and must ``refresh`` with a token signed with the new
key (or be closed with 4005) by then.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from ..config import HMAC_ALGORITHMS, Settings
from ..guard.limits import Limit
from ..protocol import codes
from ..protocol.errors import AuthError, ConfigError


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


@dataclass(frozen=True)
class _Key:
    """One verification key, pinned to its algorithms; ``until`` is None for the main key."""

    material: Any = field(repr=False)
    algorithms: tuple[str, ...]
    until: float | None = None


def _key(algorithms: tuple[str, ...], secret: str, public_key_file: str, until: float | None = None) -> _Key:
    material: Any = secret if algorithms[0] in HMAC_ALGORITHMS else _read_key(public_key_file)
    return _Key(material, algorithms, until)


class _ClockedJWT(jwt.PyJWT):
    """PyJWT, but ``exp``, ``nbf`` and ``iat`` are checked against the verifier's clock, as the
    token's lifetime and revocations are (PyJWT reads the system clock itself); its checks,
    types and messages are otherwise its own."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__()
        self._clock = clock

    def _validate_exp(self, payload: dict[str, Any], now: float, leeway: float) -> None:
        super()._validate_exp(payload, self._clock(), leeway)

    def _validate_nbf(self, payload: dict[str, Any], now: float, leeway: float) -> None:
        super()._validate_nbf(payload, self._clock(), leeway)

    def _validate_iat(self, payload: dict[str, Any], now: float, leeway: float) -> None:
        super()._validate_iat(payload, self._clock(), leeway)


class Verifier:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = _now) -> None:
        self._keys = [_key(settings.algorithms, settings.jwt_secret, settings.jwt_public_key_file)]
        if settings.has_previous_key:
            self._keys.append(_key(settings.previous_algorithms, settings.jwt_previous_secret,
                                   settings.jwt_previous_public_key_file, settings.previous_key_until))
        self._algorithms = tuple(a for k in self._keys for a in k.algorithms)
        self._issuer = settings.jwt_issuer or None
        self._audience = settings.jwt_audience or None
        self._leeway = settings.jwt_leeway_s
        self._max_bytes = settings.jwt_max_token_bytes
        self._max_lifetime = settings.jwt_max_lifetime_s
        self._clock = clock
        self._jwt = _ClockedJWT(clock)
        required = ["sub", "exp"] + (["iss"] if self._issuer else []) + (["aud"] if self._audience else [])
        self._options: dict[str, Any] = {"require": required, "verify_aud": self._audience is not None}

    def verify(self, token: str) -> Claims:
        if not token:
            raise AuthError(codes.TOKEN_MISSING)
        if len(token) > self._max_bytes:
            raise AuthError(codes.TOKEN_INVALID, "token too large", limit=Limit.TOKEN_SIZE)
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise AuthError(codes.TOKEN_INVALID, str(exc)) from None
        alg = header.get("alg")
        if alg not in self._algorithms:
            raise AuthError(codes.TOKEN_INVALID, f"algorithm {alg!r} not allowed")
        typ = header.get("typ")
        if typ is not None and str(typ).upper() != "JWT":
            raise AuthError(codes.TOKEN_INVALID, "typ header is not JWT")
        if "crit" in header:
            raise AuthError(codes.TOKEN_INVALID, "critical header extensions are not supported")
        now = self._clock()
        retired: _Key | None = None
        payload: dict[str, Any] | None = None
        used: _Key | None = None
        for key in self._keys:
            if alg not in key.algorithms:
                continue
            if key.until is not None and now >= key.until:
                retired = key
                continue
            try:
                payload = self._decode(token, key)
            except jwt.InvalidSignatureError:
                continue
            used = key
            break
        if payload is None or used is None:
            if retired is not None and self._signed_by(token, retired):
                raise AuthError(codes.TOKEN_INVALID, "signed with the previous key, which is no longer accepted")
            raise AuthError(codes.TOKEN_INVALID, "signature verification failed")
        sub = payload.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 128:
            raise AuthError(codes.TOKEN_INVALID, "sub must be a non-empty string")
        known = {"sub", "exp", "iat", "role", "jti", "iss", "aud", "nbf"}
        exp = float(payload["exp"])
        iat = float(payload["iat"]) if isinstance(payload.get("iat"), (int, float)) else None
        # A revocation is kept for jwt_max_lifetime_s: a token living longer would outlive it.
        # Without iat, the token is dated from now (allowing for the leeway on the issuer's clock).
        lifetime = exp - iat if iat is not None else exp - now - self._leeway
        if lifetime > self._max_lifetime:
            raise AuthError(codes.TOKEN_INVALID, f"the token lives longer than jwt_max_lifetime_s "
                                                 f"({self._max_lifetime:g} s)")
        if used.until is not None:
            exp = min(exp, used.until)  # a token of the previous key lives no longer than that key
        return Claims(
            user_id=sub,
            exp=exp,
            iat=iat,
            role=payload.get("role") if isinstance(payload.get("role"), str) else None,
            jti=payload.get("jti") if isinstance(payload.get("jti"), str) else None,
            extra={k: v for k, v in payload.items() if k not in known},
        )

    def _decode(self, token: str, key: _Key) -> dict[str, Any]:
        """The verified payload; raises AuthError for anything but a signature that does not match."""
        try:
            payload: dict[str, Any] = self._jwt.decode(
                token,
                key.material,
                algorithms=list(key.algorithms),
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options=self._options,  # type: ignore[arg-type]
            )
        except jwt.InvalidSignatureError:
            raise
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError) as exc:
            raise AuthError(codes.TOKEN_EXPIRED, str(exc)) from None
        except jwt.PyJWTError as exc:
            raise AuthError(codes.TOKEN_INVALID, str(exc)) from None
        except (ValueError, TypeError) as exc:  # e.g. a key that does not fit the algorithm
            raise AuthError(codes.TOKEN_INVALID, str(exc)) from None
        return payload

    @staticmethod
    def _signed_by(token: str, key: _Key) -> bool:
        """Whether ``key`` made the signature (claims unchecked): only to say why a token is refused."""
        try:
            jwt.decode(token, key.material, algorithms=list(key.algorithms), options={"verify_exp": False,
                       "verify_nbf": False, "verify_iat": False, "verify_aud": False, "verify_iss": False})
        except (jwt.PyJWTError, ValueError, TypeError):
            return False
        return True


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
