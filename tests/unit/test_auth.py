"""The bearer-token validator of common/auth.py with locally signed tokens: keys by kid and their
rotation, the refetch rate limit, the clock leeway, issuer/audience/signature checks, scopes and
the refusal texts (which never echo a token or a claim value)."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from strata.common.auth import (
    ADMIN,
    READ,
    WRITE,
    Authorizer,
    Forbidden,
    JwksCache,
    Unauthenticated,
    Validator,
    admin_refusal,
    bearer,
    is_loopback,
    scopes_of,
)
from strata.common.errors import Unavailable

ISS, AUD = "https://idp.test/realm", "strata"
NOW = 1_800_000_000.0


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


KEY_A, KEY_B = _key(), _key()


def _jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    d = dict(RSAAlgorithm.to_jwk(key.public_key(), as_dict=True))
    d.update(kid=kid, use="sig", alg="RS256")
    return d


def _token(key: Any = KEY_A, kid: str = "a", alg: str = "RS256", **claims: Any) -> str:
    body = {"iss": ISS, "aud": AUD, "sub": "someone", "exp": NOW + 300, "iat": NOW}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


class Provider:
    """A JWKS endpoint whose keys the test changes; counts fetches."""

    def __init__(self, *jwks: dict[str, Any]) -> None:
        self.keys = list(jwks)
        self.urls: list[str] = []

    def __call__(self, url: str) -> Any:
        self.urls.append(url)
        if url.endswith("/.well-known/openid-configuration"):
            return {"issuer": ISS, "jwks_uri": f"{ISS}/keys"}
        return {"keys": self.keys}


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _validator(provider: Provider, clock: Clock | None = None, **kw: Any) -> Validator:
    mono = Clock(0.0)
    cache = JwksCache("", ISS, fetch=provider, clock=mono, min_refetch=30.0, ttl=600.0)
    cache.mono = mono  # type: ignore[attr-defined]  # the test moves it
    return Validator(ISS, AUD, cache, clock=clock or Clock(NOW), **kw)


def test_valid_token_gives_subject_and_scopes_via_discovery() -> None:
    p = Provider(_jwk(KEY_A, "a"))
    principal = _validator(p).validate(_token(scope="strata:read strata:write"))
    assert principal.subject == "someone"
    assert principal.scopes == {"strata:read", "strata:write"}
    assert p.urls == [f"{ISS}/.well-known/openid-configuration", f"{ISS}/keys"]
    assert "someone" not in repr(principal)


def test_rotation_by_kid_refetches_once() -> None:
    p = Provider(_jwk(KEY_A, "a"))
    v = _validator(p)
    v.validate(_token())
    fetches = v.keys.fetches
    v.keys.mono.t = 31.0  # type: ignore[attr-defined]  # past the refetch rate limit
    p.keys = [_jwk(KEY_A, "a"), _jwk(KEY_B, "b")]  # the provider rotates in key b
    assert v.validate(_token(KEY_B, "b")).subject == "someone"
    assert v.keys.fetches == fetches + 1
    v.validate(_token(KEY_B, "b"))  # now cached: no fetch
    assert v.keys.fetches == fetches + 1


def test_unknown_kid_refetch_is_rate_limited() -> None:
    p = Provider(_jwk(KEY_A, "a"))
    v = _validator(p)
    v.validate(_token())
    fetches = v.keys.fetches
    v.keys.mono.t = 31.0  # type: ignore[attr-defined]
    for _ in range(5):  # a flood of made-up kids costs one fetch, not five
        with pytest.raises(Unauthenticated, match="signing key is unknown"):
            v.validate(_token(KEY_B, "zz"))
    assert v.keys.fetches == fetches + 1
    p.keys.append(_jwk(KEY_B, "zz"))
    with pytest.raises(Unauthenticated):  # still inside the rate limit window
        v.validate(_token(KEY_B, "zz"))
    v.keys.mono.t = 62.0  # type: ignore[attr-defined]
    assert v.validate(_token(KEY_B, "zz")).subject == "someone"


def test_retired_key_drops_out_after_ttl() -> None:
    p = Provider(_jwk(KEY_A, "a"))
    v = _validator(p)
    v.validate(_token())
    p.keys = [_jwk(KEY_B, "b")]
    v.keys.mono.t = 601.0  # type: ignore[attr-defined]
    with pytest.raises(Unauthenticated, match="signing key is unknown"):
        v.validate(_token())


def test_leeway_on_expiry_and_not_before() -> None:
    p = Provider(_jwk(KEY_A, "a"))
    v = _validator(p, leeway=30.0)
    assert v.validate(_token(exp=NOW - 29))
    with pytest.raises(Unauthenticated, match="expired"):
        v.validate(_token(exp=NOW - 31))
    assert v.validate(_token(nbf=NOW + 29, iat=NOW + 29))
    with pytest.raises(Unauthenticated, match="not valid yet"):
        v.validate(_token(nbf=NOW + 31))
    v.clock = Clock(NOW + 400)  # the same token, later
    with pytest.raises(Unauthenticated, match="expired"):
        v.validate(_token())


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (lambda: _token(aud="someone-else"), "audience"),
        (lambda: _token(iss="https://evil.test/realm"), "issuer"),
        (lambda: _token(KEY_B, "a"), "signature"),  # another key, the same kid
        (lambda: _token(exp=None), "'exp'"),
        (lambda: _token(aud=None), "'aud'"),
        (lambda: jwt.encode({"iss": ISS}, KEY_A, algorithm="RS256"), "kid"),
        (lambda: _token(b"a-shared-secret-of-32-bytes-long", "a", alg="HS256"), "algorithm"),
        (lambda: "not.a.jwt", "not a JWT"),
    ],
)
def test_refusals_name_the_failure_without_echoing_values(token: Any, reason: str) -> None:
    v = _validator(Provider(_jwk(KEY_A, "a")))
    t = token()
    with pytest.raises(Unauthenticated) as e:
        v.validate(t)
    text = str(e.value)
    assert reason in text
    for leaked in (t, "someone-else", "evil.test", ISS, "someone"):
        assert leaked not in text


def test_provider_down_is_unavailable_not_a_refusal() -> None:
    up = {"ok": False}

    def flaky(url: str) -> Any:
        if not up["ok"]:
            raise OSError("connection refused")
        return {"keys": [_jwk(KEY_A, "a")]}

    mono = Clock(0.0)
    cache = JwksCache(f"{ISS}/keys", fetch=flaky, clock=mono, min_refetch=30.0)
    v = Validator(ISS, AUD, cache, clock=Clock(NOW))
    with pytest.raises(Unavailable):
        v.validate(_token())
    up["ok"] = True
    with pytest.raises(Unavailable):  # inside the refetch limit: still down, not "unknown key"
        v.validate(_token())
    mono.t = 31.0
    assert v.validate(_token()).subject == "someone"


def _authz(provider: Provider) -> Authorizer:
    scopes = {READ: "strata:read", WRITE: "strata:write", ADMIN: "strata:admin"}
    return Authorizer(_validator(provider), scopes)


def test_scopes_map_to_permissions() -> None:
    a = _authz(Provider(_jwk(KEY_A, "a")))
    header = "Bearer " + _token(scope="strata:read")
    assert a.check(header, READ).scopes == {"strata:read"}
    assert a.check(header, None)
    with pytest.raises(Forbidden, match="write scope") as e:
        a.check(header, WRITE)
    challenge = a.challenge(e.value)
    assert challenge.startswith('Bearer error="insufficient_scope", scope="strata:write"')
    with pytest.raises(Unauthenticated) as e2:
        a.check(None, READ)
    assert a.challenge(e2.value).startswith('Bearer error="invalid_token"')
    assert scopes_of({"scp": ["x", "y"], "scope": "z"}) == {"x", "y", "z"}


def test_bearer_header_parsing() -> None:
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  abc ") == "abc"
    for bad in (None, "", "Basic abc", "Bearer", "Bearer   "):
        with pytest.raises(Unauthenticated):
            bearer(bad)


def test_admin_endpoints_loopback_only_when_auth_is_off() -> None:
    assert admin_refusal(None, "127.0.0.1", None) is None
    assert admin_refusal(None, "::1", None) is None
    assert admin_refusal(None, "::ffff:127.0.0.1", None) is None
    refused = admin_refusal(None, "10.1.2.3", None)
    assert refused is not None and refused[0] == 403
    assert not is_loopback("") and not is_loopback("example.org")


def test_admin_endpoints_need_the_admin_scope_when_auth_is_on() -> None:
    a = _authz(Provider(_jwk(KEY_A, "a")))
    assert admin_refusal(a, "10.1.2.3", "Bearer " + _token(scope="strata:admin")) is None
    read_only = admin_refusal(a, "127.0.0.1", "Bearer " + _token(scope="strata:read"))
    assert read_only is not None and read_only[0] == 403
    assert "insufficient_scope" in read_only[2]
    none = admin_refusal(a, "127.0.0.1", None)  # loopback is no credential once auth is on
    assert none is not None and none[0] == 401


def test_router_http_routes_need_admin_probes_stay_open() -> None:
    """The router's own HTTP server (http.server, not aiohttp) applies the same rule."""
    import urllib.error
    import urllib.request

    from strata.processors.router.service import serve_http
    from strata.stack.procs import free_port

    class FakeRouter:
        def snapshot(self) -> dict[str, Any]:
            return {"catching_up": False, "open_routes": [], "in_flight": 0}

    a = _authz(Provider(_jwk(KEY_A, "a")))
    a.validator.clock = Clock(NOW)
    port = free_port()
    server = serve_http(FakeRouter(), "127.0.0.1", port, a)  # type: ignore[arg-type]

    def get(path: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    try:
        assert get("/healthz")[0] == 200
        code, headers, body = get("/routes")
        assert code == 401 and headers["WWW-Authenticate"].startswith(
            'Bearer error="invalid_token"'
        )
        assert b"bearer token is required" in body
        assert get("/routes", _token(scope="strata:read"))[0] == 403
        code, _, body = get("/routes", _token(scope="strata:admin"))
        assert code == 200 and b"open_routes" in body
    finally:
        server.shutdown()
        server.server_close()


def test_viewer_config_logs_in_only_when_auth_is_on() -> None:
    from strata.stack.viewer import app_config, oidc_config

    assert "oidc" not in app_config("/dicom-web")
    cfg = app_config("/dicom-web", oidc_config("https://idp.test/r", "viewer", "openid a b"))
    assert '"https://idp.test/r"' in cfg and "response_type: 'code'" in cfg
    assert 'client_id: "viewer"' in cfg and 'scope: "openid a b"' in cfg
