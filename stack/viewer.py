"""The OHIF zero-footprint viewer: the prebuilt ``dist/`` of the npm package ``@ohif/app``,
fetched with npm (nothing built, nothing committed) and served by the DICOMweb service at "/"
with an app-config.js that points it at this archive's DICOMweb root (same origin: no CORS)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from strata.common.errors import Unavailable

OHIF_VERSION = "3.13.2"


def cache_dir(version: str = OHIF_VERSION) -> Path:
    return Path.home() / ".cache" / "strata" / f"ohif-{version}"


def installed(version: str = OHIF_VERSION) -> Path | None:
    d = cache_dir(version) / "dist"
    return d if (d / "index.html").is_file() else None


def install(version: str = OHIF_VERSION) -> Path:
    """npm pack @ohif/app@version and unpack its dist/ into the cache (once)."""
    done = installed(version)
    if done:
        return done
    if shutil.which("npm") is None:
        raise Unavailable("npm not found: the OHIF viewer is fetched from the npm registry")
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run(
            ["npm", "pack", f"@ohif/app@{version}", "--silent"],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if r.returncode != 0:
            raise Unavailable(f"npm pack @ohif/app@{version} failed: {r.stderr[-1000:]}")
        tgz = next(Path(tmp).glob("*.tgz"))
        target = cache_dir(version)
        shutil.rmtree(target, ignore_errors=True)
        with tarfile.open(tgz) as tf:
            members = [m for m in tf.getmembers() if m.name.startswith("package/dist/")]
            tf.extractall(tmp, members=members, filter="data")
        target.mkdir(parents=True, exist_ok=True)
        shutil.move(str(Path(tmp) / "package" / "dist"), str(target / "dist"))
    return target / "dist"


def oidc_config(authority: str, client_id: str, scope: str) -> dict[str, str]:
    """The OHIF login of STRATA_AUTH_MODE=oidc: authorization code + PKCE at the provider,
    then every DICOMweb request carries the access token."""
    return {"authority": authority, "client_id": client_id, "scope": scope}


def app_config(prefix: str, oidc: dict[str, str] | None = None) -> str:
    """OHIF's window.config for this archive (DICOMweb on the same origin); with ``oidc``
    (oidc_config), OHIF logs the user in through the identity provider first."""
    login = ""
    if oidc is not None:
        login = f"""
  oidc: [
    {{
      authority: {json.dumps(oidc["authority"])},
      client_id: {json.dumps(oidc["client_id"])},
      redirect_uri: window.location.origin + '/callback',
      response_type: 'code',
      scope: {json.dumps(oidc["scope"])},
      post_logout_redirect_uri: window.location.origin + '/',
      automaticSilentRenew: true,
      revokeAccessTokenOnSignout: false,
    }},
  ],"""
    return f"""window.config = {{
  name: 'strata',
  routerBasename: null,{login}
  extensions: [],
  modes: [],
  customizationService: {{}},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: {{ option: 'never' }},
  defaultDataSourceName: 'strata',
  dataSources: [
    {{
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'strata',
      configuration: {{
        friendlyName: 'Strata archive',
        name: 'strata',
        wadoUriRoot: window.location.origin + '{prefix}',
        qidoRoot: window.location.origin + '{prefix}',
        wadoRoot: window.location.origin + '{prefix}',
        qidoSupportsIncludeField: true,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: {{ enabled: true, relativeResolution: 'studies' }},
        omitQuotationForMultipartRequest: true,
      }},
    }},
  ],
}};
"""
