"""Fill a directory with the wheels jobyard needs on another Python of the same minor.

    python deploy/wheelhouse.py DIR TARGET_VERSION PYPROJECT [EXTRA,...]

The wheels are those of the project's build requirements, dependencies and the named
extras' dependencies (never the project itself, which the image builds from source),
so ``pip install --no-index --find-links DIR "SOURCE[EXTRA,...]"`` needs nothing else.

pip resolves environment markers with the interpreter it runs on. An image's Python can
be an older patch release than this host's (Debian bookworm has 3.11.2), and markers
such as ``async-timeout; python_full_version < "3.11.3"`` (from redis) then want more
than this host's resolution fetched. This builds the wheels with this host's pip, then
adds whatever the target version's markers want on top, until nothing is missing; the
image's ``pip install --no-index`` checks the result.
"""

from __future__ import annotations

import email.parser
import glob
import os
import subprocess
import sys
import tomllib
import zipfile

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename


def requirements_of(pyproject: str, extras: list[str] = ()) -> list[str]:
    """The build requirements, dependencies and ``extras``' dependencies a ``pyproject.toml`` declares."""
    with open(pyproject, "rb") as handle:
        data = tomllib.load(handle)
    project = data.get("project", {})
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"{pyproject} declares no extra {', '.join(unknown)}")
    return [*data.get("build-system", {}).get("requires", []), *project.get("dependencies", []),
            *(requirement for extra in extras for requirement in optional[extra])]


def build(directory: str, requirements: list[str]) -> None:
    """``pip wheel`` ``requirements`` (and their dependencies) into ``directory``."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", directory, *requirements],
                   check=True)


def missing(directory: str, target_version: str) -> list[str]:
    """Requirements the wheels in ``directory`` have on ``target_version`` but that no wheel meets."""
    environment = {"python_full_version": target_version,
                   "python_version": ".".join(target_version.split(".")[:2]), "extra": ""}
    paths = glob.glob(os.path.join(directory, "*.whl"))
    present = {parse_wheel_filename(os.path.basename(path))[0] for path in paths}
    wanted = set()
    for path in paths:
        for line in _requires(path):
            requirement = Requirement(line)
            if requirement.marker is None or not requirement.marker.evaluate(environment):
                continue
            if canonicalize_name(requirement.name) not in present:
                requirement.marker = None
                wanted.add(str(requirement))
    return sorted(wanted)


def _requires(wheel: str) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.BytesParser().parsebytes(archive.read(name), headersonly=True)
    return metadata.get_all("Requires-Dist") or []


def main(argv: list[str]) -> int:
    """Build the wheelhouse; see the module docstring."""
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    directory, target_version, pyproject = argv[:3]
    extras = [extra for extra in (argv[3] if len(argv) == 4 else "").split(",") if extra]
    build(directory, requirements_of(pyproject, extras))
    for _ in range(10):
        extra = missing(directory, target_version)
        if not extra:
            return 0
        build(directory, extra)
    print(f"still missing for Python {target_version}: {missing(directory, target_version)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
