"""A real OAuth2/OIDC identity provider for tests: mock-oauth2-server (Maven Central, run on a
free loopback port), and a helper that gets access tokens with chosen scope, audience, expiry.

The jars are fetched once with ``mvn dependency:copy-dependencies`` on tests/support/idp/pom.xml
and cached under ~/.cache/strata/mock-oauth2-server-<version>/libs (as stack/kafka does).

The server's token callback (JSON_CONFIG below) copies the request's ``scope`` and ``audience``
parameters into the token's claims. Two client ids give deliberately bad tokens, signed by the
provider's real key: ``expired`` (exp in 2001) and ``wrong-issuer`` (another iss). Tokens of
the interactive login (authorization code, the OHIF viewer's) are for audience "strata" with
the read and write scopes; the login page accepts any username.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from strata.stack.maven import fetch_jars
from strata.stack.procs import free_port
from tests.support.wait import wait_for

VERSION = "6.0.2"
POM = Path(__file__).with_name("idp") / "pom.xml"
ISSUER_ID = "strata"
WRONG_ISSUER = "http://127.0.0.1:1/not-the-issuer"
VIEWER_AUDIENCE = "strata"
VIEWER_SCOPE = "openid strata:read strata:write"


def jars_dir() -> Path:
    return Path.home() / ".cache" / "strata" / f"mock-oauth2-server-{VERSION}" / "libs"


def ensure_jars() -> Path:
    return fetch_jars(
        POM,
        jars_dir(),
        f"mock-oauth2-server-{VERSION}.jar",
        "mock-oauth2-server",
        {"idp.version": VERSION},
    )


def _claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "${clientId}", "aud": ["${audience}"], "scope": "${scope}", **extra}


CONFIG = {
    "interactiveLogin": True,
    "tokenCallbacks": [
        {
            "issuerId": ISSUER_ID,
            "tokenExpiry": 300,
            "requestMappings": [
                {
                    "requestParam": "client_id",
                    "match": "expired",
                    "claims": _claims(exp=1_000_000_000, iat=999_990_000, nbf=999_990_000),
                },
                {
                    "requestParam": "client_id",
                    "match": "wrong-issuer",
                    "claims": _claims(iss=WRONG_ISSUER),
                },
                {  # the viewer's login (authorization code): a token for the archive
                    "requestParam": "grant_type",
                    "match": "authorization_code",
                    "claims": {"aud": [VIEWER_AUDIENCE], "scope": VIEWER_SCOPE},
                },
                {"requestParam": "client_id", "match": "*", "claims": _claims()},
            ],
        }
    ],
}


@dataclass
class IdP:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return f"{self.base}/{ISSUER_ID}"

    def token(
        self, scope: str = "", audience: str = "strata", client_id: str = "strata-test"
    ) -> str:
        """An access token from the token endpoint (client_credentials). ``client_id``
        "expired" gives an expired one, "wrong-issuer" one with another iss."""
        form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": "not-checked",
            "scope": scope,
            "audience": audience,
        }
        req = urllib.request.Request(
            f"{self.issuer}/token", data=urllib.parse.urlencode(form).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return str(json.loads(r.read())["access_token"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def start_idp(log: Path, own_key: bool = False) -> IdP:
    """A provider on a free port. ``own_key``: sign with a key made now instead of the server's
    built-in one (which every instance shares), under the same kid (the issuer id)."""
    libs = ensure_jars()
    port = free_port()
    config: dict[str, Any] = dict(CONFIG)
    if own_key:
        from cryptography.hazmat.primitives.asymmetric import rsa
        from jwt.algorithms import RSAAlgorithm

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = {**json.loads(RSAAlgorithm.to_jwk(key)), "kid": ISSUER_ID}
        config["tokenProvider"] = {
            "keyProvider": {"initialKeys": json.dumps(jwk), "algorithm": "RS256"}
        }
    env = {**os.environ, "SERVER_PORT": str(port), "JSON_CONFIG": json.dumps(config)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                "java",
                "-Xmx256m",
                "-cp",
                f"{libs}/*",
                "no.nav.security.mock.oauth2.StandaloneMockOAuth2ServerKt",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    idp = IdP(port, proc)

    def serving() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"mock-oauth2-server exited:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{idp.issuer}/jwks", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for(serving, 60, "mock-oauth2-server to serve its JWKS")
    except BaseException:
        idp.stop()
        raise
    return idp


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdP]:
    """The identity provider of a test module."""
    p = start_idp(tmp_path_factory.mktemp("idp") / "idp.log")
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def other_idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdP]:
    """A second provider: its tokens carry the same kid but are signed by another key."""
    p = start_idp(tmp_path_factory.mktemp("idp2") / "idp.log", own_key=True)
    try:
        yield p
    finally:
        p.stop()
