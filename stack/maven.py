"""Java dependencies from Maven Central, fetched once into a cache folder.

The Kafka broker, MirrorMaker 2 and the tests' identity provider each come as a small pom whose
dependencies `mvn dependency:copy-dependencies` gathers; the folder is filled under a temporary
name and renamed, so a cut fetch is never taken for a complete one.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from strata.common.errors import Unavailable


def fetch_jars(pom: Path, libs: Path, marker: str, what: str, props: dict[str, str]) -> Path:
    """``libs`` holding the pom's jars: fetched unless ``libs/marker`` exists already.
    ``props`` are -D properties for the pom (versions). Raises Unavailable with what to install
    when java or mvn is missing, or with mvn's output when the fetch fails."""
    if (libs / marker).is_file():
        return libs
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            raise Unavailable(
                f"'{tool}' not found: {what} needs Java 17+ and Maven "
                "(Debian: apt-get install default-jre-headless maven)"
            )
    print(f"fetching {what} from Maven Central (once)...", file=sys.stderr)
    tmp = libs.with_name("libs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    r = subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
            *(f"-D{k}={v}" for k, v in props.items()),
        ],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise Unavailable(f"mvn could not fetch {what}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    return libs
