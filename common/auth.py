"""OAuth2/OIDC bearer tokens: validation against the identity provider's JWKS, and scopes.

One module for every interface (gRPC interceptor, DICOMweb and admin HTTP middlewares, the
CLI's token): the entry points only map the two errors here to their protocol statuses
(``Unauthenticated`` -> 401 / UNAUTHENTICATED, ``Forbidden`` -> 403 / PERMISSION_DENIED).

A token is accepted when its signature verifies with the provider's key named by its ``kid``
(asymmetric algorithms only), its ``iss`` and ``aud`` are the configured ones, and ``exp`` /
``nbf`` / ``iat`` hold within a small leeway. Keys come from the JWKS URL (by default the
``jwks_uri`` of ``<issuer>/.well-known/openid-configuration``), cached; a token whose kid is
unknown makes the cache refetch once, at most every ``min_refetch`` seconds (key rotation
without letting random kids hammer the provider), and the cache also refreshes after ``ttl``
seconds so retired keys drop out.

Error texts name what failed, never a token or a claim value (they end up in responses and
logs of a PHI archive).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt

from strata.common import audit
from strata.common.errors import Invalid, StrataError, Unavailable

log = logging.getLogger(__name__)

# Asymmetric only: an HS* token would be checked with a public key as the shared secret.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
READ, WRITE, ADMIN = "read", "write", "admin"


class AuthError(StrataError):
    """A request's credentials do not allow it. ``code`` is the RFC 6750 error code."""

    code = "invalid_token"


class Unauthenticated(AuthError):
    """No token, or a token that is not valid (signature, issuer, audience, time)."""


class Forbidden(AuthError):
    """A valid token without the scope the operation needs."""

    code = "insufficient_scope"


@dataclass(frozen=True)
class Principal:
    subject: str
    scopes: frozenset[str]

    def __repr__(self) -> str:  # the subject may be a person's name: keep it out of logs
        return f"Principal(scopes={sorted(self.scopes)})"


def _http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - configured URL
        return json.loads(r.read())


class JwksCache:
    """The provider's signing keys by kid, fetched lazily, refetched on an unknown kid (rate
    limited) and after ``ttl`` seconds."""

    def __init__(
        self,
        jwks_url: str = "",
        issuer: str = "",
        *,
        ttl: float = 600.0,
        min_refetch: float = 30.0,
        fetch: Callable[[str], Any] = _http_json,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not jwks_url and not issuer:
            raise Invalid("the JWKS URL or the issuer (for its discovery document) is needed")
        self._url = jwks_url
        self._issuer = issuer.rstrip("/")
        self._ttl = ttl
        self._min_refetch = min_refetch
        self._fetch = fetch
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()
        self._failed = False  # the last fetch failed: answer Unavailable, not "unknown key"
        self.fetches = 0  # for tests and metrics

    def _jwks_url(self) -> str:
        if not self._url:
            doc = self._fetch(f"{self._issuer}/.well-known/openid-configuration")
            url = doc.get("jwks_uri") if isinstance(doc, dict) else None
            if not isinstance(url, str) or not url:
                raise Unavailable("the issuer's discovery document names no jwks_uri")
            self._url = url
        return self._url

    def _refresh(self) -> None:
        self._fetched_at = self._clock()  # also on failure: the rate limit holds
        self.fetches += 1
        try:
            doc = self._fetch(self._jwks_url())
        except (OSError, ValueError) as exc:
            self._failed = True
            raise Unavailable(f"the identity provider's keys could not be fetched: {exc}") from exc
        self._failed = False
        keys: dict[str, jwt.PyJWK] = {}
        for entry in doc.get("keys", []) if isinstance(doc, dict) else []:
            kid = entry.get("kid") if isinstance(entry, dict) else None
            if not kid or entry.get("use", "sig") != "sig":
                continue
            try:
                keys[kid] = jwt.PyJWK(entry)
            except jwt.PyJWKError:
                log.warning("JWKS entry with an unusable key skipped")
        self._keys = keys

    def key(self, kid: str) -> jwt.PyJWK:
        with self._lock:
            now = self._clock()
            age = None if self._fetched_at is None else now - self._fetched_at
            if age is None or age >= self._ttl:
                self._refresh()
            elif kid not in self._keys and age >= self._min_refetch:
                self._refresh()  # a rotated key: refetch once
            found = self._keys.get(kid)
            if found is None and self._failed:
                raise Unavailable("the identity provider's keys could not be fetched")
        if found is None:
            raise Unauthenticated("the token's signing key is unknown to the identity provider")
        return found


class Validator:
    """Checks a bearer token and returns its principal (subject and scopes)."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        keys: JwksCache,
        *,
        leeway: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not issuer or not audience:
            raise Invalid("OIDC needs both the issuer and the audience")
        self.issuer = issuer
        self.audience = audience
        self.keys = keys
        self.leeway = leeway
        self.clock = clock

    def validate(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("the bearer token is not a JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise Unauthenticated("the token's signing algorithm is not accepted")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("the token names no signing key (kid)")
        key = self.keys.key(kid)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                # Times are checked below against our clock (testable), not PyJWT's.
                options={
                    "require": ["exp", "iss", "aud"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise Unauthenticated("the token's signature does not verify") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("the token is not meant for this service (audience)") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("the token's issuer is not the configured one") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"the token lacks the '{exc.claim}' claim") from None
        except jwt.PyJWTError:
            raise Unauthenticated("the token is malformed") from None
        self._check_times(claims)
        return Principal(str(claims.get("sub", "")), scopes_of(claims))

    def _check_times(self, claims: dict[str, Any]) -> None:
        now = self.clock()
        try:
            exp = float(claims["exp"])
            nbf = float(claims.get("nbf", now))
            iat = float(claims.get("iat", now))
        except (TypeError, ValueError):
            raise Unauthenticated("the token's time claims are not numbers") from None
        if now > exp + self.leeway:
            raise Unauthenticated("the token has expired")
        if now + self.leeway < nbf or now + self.leeway < iat:
            raise Unauthenticated("the token is not valid yet")


def scopes_of(claims: dict[str, Any]) -> frozenset[str]:
    """``scope`` (RFC 8693/9068: space-separated) or ``scp`` (a list, or a string)."""
    out: set[str] = set()
    for name in ("scope", "scp"):
        v = claims.get(name)
        if isinstance(v, str):
            out.update(v.split())
        elif isinstance(v, list):
            out.update(s for s in v if isinstance(s, str))
    return frozenset(out)


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not header:
        raise Unauthenticated("a bearer token is required")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    return token.strip()


class Authorizer:
    """The validator plus the scope names of the three permissions (read, write, admin)."""

    def __init__(self, validator: Validator, scopes: dict[str, str]) -> None:
        self.validator = validator
        self.scopes = scopes

    def check(self, authorization: str | None, need: str | None) -> Principal:
        """The principal of the Authorization header, if it may do ``need`` (None: any valid
        token). Raises Unauthenticated or Forbidden."""
        principal = self.validator.validate(bearer(authorization))
        if need is not None and self.scopes[need] not in principal.scopes:
            raise Forbidden(f"the token lacks the {need} scope ({self.scopes[need]})")
        return principal

    def challenge(self, exc: AuthError) -> str:
        """The WWW-Authenticate header of a refusal (RFC 6750 section 3)."""
        desc = str(exc).replace('"', "'")
        if isinstance(exc, Forbidden):
            need = next((s for k, s in self.scopes.items() if f"the {k} scope" in desc), "")
            return f'Bearer error="insufficient_scope", scope="{need}", error_description="{desc}"'
        return f'Bearer error="invalid_token", error_description="{desc}"'


def from_settings(settings: Any) -> Authorizer | None:
    """The authorizer of STRATA_AUTH_MODE=oidc, or None when auth is off."""
    mode = settings.auth_mode.strip().lower()
    if mode in ("", "off"):
        return None
    if mode != "oidc":
        raise Invalid(f"STRATA_AUTH_MODE must be 'off' or 'oidc', not {settings.auth_mode!r}")
    if not settings.oidc_issuer or not settings.oidc_audience:
        raise Invalid("STRATA_AUTH_MODE=oidc needs STRATA_OIDC_ISSUER and STRATA_OIDC_AUDIENCE")
    keys = JwksCache(
        settings.oidc_jwks_url,
        settings.oidc_issuer,
        ttl=settings.oidc_jwks_ttl,
        min_refetch=settings.oidc_jwks_min_refetch,
    )
    validator = Validator(
        settings.oidc_issuer, settings.oidc_audience, keys, leeway=settings.oidc_leeway
    )
    return Authorizer(
        validator,
        {
            READ: settings.oidc_scope_read,
            WRITE: settings.oidc_scope_write,
            ADMIN: settings.oidc_scope_admin,
        },
    )


def bearer_request(url: str, token: str) -> urllib.request.Request:
    """A GET of ``url`` carrying ``token`` (if any) as its bearer credential."""
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    return req


# ----------------------------------------------------------------------------- HTTP (aiohttp)


def is_loopback(host: str | None) -> bool:
    import ipaddress

    if not host:
        return False
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def http_refusal(authz: Authorizer | None, exc: AuthError) -> Any:
    """The aiohttp 401/403 response (JSON body, WWW-Authenticate challenge) of a refusal."""
    from aiohttp import web

    status = 403 if isinstance(exc, Forbidden) else 401
    resp = web.json_response({"error": str(exc)}, status=status)
    if authz is not None:
        resp.headers["WWW-Authenticate"] = authz.challenge(exc)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def no_store(prefix: str) -> Any:
    """An aiohttp on_response_prepare hook: ``Cache-Control: no-store`` on every response under
    the DICOMweb prefix (QIDO, WADO, metadata, frames, rendered, STOW, errors: all may carry
    PHI), set as the headers are sent, so streamed responses get it too."""
    root = prefix.rstrip("/") + "/"

    async def hook(request: Any, response: Any) -> None:
        if (request.path + "/").startswith(root):
            response.headers["Cache-Control"] = "no-store"
            response.headers.pop("Expires", None)

    return hook


def dicomweb_middleware(authz: Authorizer, prefix: str) -> Any:
    """DICOMweb: GET/HEAD under the prefix need read, POST (STOW-RS) needs write. Paths outside
    the prefix (the viewer's static files: no PHI) and CORS preflights stay open."""
    import asyncio

    from aiohttp import web

    root = prefix.rstrip("/") + "/"

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "OPTIONS" or not (request.path + "/").startswith(root):
            resp: web.StreamResponse = await handler(request)
            return resp
        need = WRITE if request.method not in ("GET", "HEAD") else READ
        try:
            await asyncio.to_thread(authz.check, request.headers.get("Authorization"), need)
        except AuthError as exc:
            resp = http_refusal(authz, exc)
            audit.auth_failed(
                "dicomweb",
                request.remote or "",
                request.headers.get("Authorization"),
                str(exc),
                f"{request.method} {request.path}",
                resp.status,
            )
            return resp
        except Unavailable as exc:
            return web.json_response({"error": str(exc)}, status=503)
        resp = await handler(request)
        return resp

    return auth


def admin_middleware(authz: Authorizer | None, open_paths: Iterable[str] = ()) -> Any:
    """Admin HTTP endpoints: with auth off, loopback clients only; with auth on, the admin
    scope. ``open_paths`` (health and metrics probes) stay open."""
    import asyncio

    from aiohttp import web

    free = frozenset(open_paths)

    @web.middleware
    async def admin(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path not in free:
            refusal = await asyncio.to_thread(
                admin_refusal, authz, request.remote, request.headers.get("Authorization")
            )
            if refusal is not None:
                status, body, challenge = refusal
                resp = web.json_response(body, status=status)
                if challenge:
                    resp.headers["WWW-Authenticate"] = challenge
                return resp
        out: web.StreamResponse = await handler(request)
        return out

    return admin


def admin_refusal(
    authz: Authorizer | None, remote: str | None, authorization: str | None
) -> tuple[int, dict[str, str], str] | None:
    """None if an admin request may proceed, else (status, JSON body, WWW-Authenticate)."""
    if authz is None:
        if is_loopback(remote):
            return None
        return 403, {"error": "admin endpoints answer loopback clients only (auth is off)"}, ""
    try:
        authz.check(authorization, ADMIN)
    except AuthError as exc:
        status = 403 if isinstance(exc, Forbidden) else 401
        audit.auth_failed("http", remote or "", authorization, str(exc), "admin", status)
        return (
            (403 if isinstance(exc, Forbidden) else 401),
            {"error": str(exc)},
            authz.challenge(exc),
        )
    except Unavailable as exc:
        return 503, {"error": str(exc)}, ""
    return None


# ----------------------------------------------------------------------------- gRPC

OPEN_GRPC_PREFIXES = ("/grpc.health.v1.Health/",)
READ_GRPC_PREFIXES = ("/strata.v1.QueryService/",)


def grpc_interceptor(authz: Authorizer) -> Any:
    """A grpc.ServerInterceptor: health checking open, the query service needs read, anything
    else (reflection) a valid token."""
    import grpc

    class _Auth(grpc.ServerInterceptor):  # type: ignore[misc]
        def intercept_service(self, continuation: Any, details: Any) -> Any:
            method = details.method or ""
            if method.startswith(OPEN_GRPC_PREFIXES):
                return continuation(details)
            need = READ if method.startswith(READ_GRPC_PREFIXES) else None
            md = {k.lower(): v for k, v in (details.invocation_metadata or ())}
            try:
                authz.check(md.get("authorization"), need)
            except AuthError as exc:
                code = (
                    grpc.StatusCode.PERMISSION_DENIED
                    if isinstance(exc, Forbidden)
                    else grpc.StatusCode.UNAUTHENTICATED
                )
                refused = functools.partial(
                    audit.grpc_auth_failed, md.get("authorization"), str(exc), method, code.name
                )
                return _refuse(continuation(details), code, str(exc), refused)
            except Unavailable as exc:
                return _refuse(continuation(details), grpc.StatusCode.UNAVAILABLE, str(exc))
            return continuation(details)

    def _refuse(handler: Any, code: Any, text: str, refused: Any = None) -> Any:
        def abort(_req: Any, context: Any) -> Any:
            if refused is not None:
                refused(context.peer())  # the audit record (common/audit.py)
            context.abort(code, text)

        if handler is None:
            return None
        kw = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(abort, **kw)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(abort, **kw)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(abort, **kw)
        return grpc.unary_unary_rpc_method_handler(abort, **kw)

    return _Auth()
