"""Check the release artefacts in ``dist/``: one sdist and one wheel of the same version.

The wheel must hold the package only: no ``benchmarks/``, ``tests/``, ``docs/``, ``tutorials/``
or ``scripts/``, and neither artefact data files (``.h5ad``) or local caches and builds
(``.hypothesis/``, ``.venv/``, ...). With ``--install`` the wheel is installed into a
fresh virtual environment (the pinned torch first, as ``make`` installs it) and imported there,
outside the source tree, and its ``sctrvae.__version__`` must be the wheel's version.

    python scripts/check_dist.py dist [--install] [--torch torch==2.13.0] [--torch-index URL]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

#: Top-level folders of the repository that must not reach the wheel.
NOT_IN_WHEEL = ("benchmarks/", "tests/", "docs/", "tutorials/", "scripts/")
#: Local artefacts that must not reach the sdist (hatch leaves out what .gitignore names).
NOT_IN_SDIST = (
    ".hypothesis/",
    ".venv/",
    "dist/",
    "demo_output/",
    "lightning_logs/",
    "docs/_build/",
    "docs/generated/",
)
#: Files the wheel must hold.
REQUIRED = ("sctrvae/__init__.py", "sctrvae/py.typed", "sctrvae/_version.py")


def find(dist: Path, pattern: str) -> Path:
    found = sorted(dist.glob(pattern))
    if len(found) != 1:
        sys.exit(f"expected one {pattern} in {dist}, found {[p.name for p in found]}")
    return found[0]


def check_wheel(wheel: Path) -> list[str]:
    names = zipfile.ZipFile(wheel).namelist()
    problems = [n for n in names if n.startswith(NOT_IN_WHEEL)]
    problems += [n for n in names if n.endswith(".h5ad")]
    problems += [f"missing: {n}" for n in REQUIRED if n not in names]
    outside = [n for n in names if not n.startswith(("sctrvae/", "sctrvae-"))]
    problems += [f"outside the package: {n}" for n in outside]
    package = [n for n in names if n.startswith("sctrvae/")]
    print(f"{wheel.name}: {len(names)} files, {len(package)} in sctrvae/")
    return problems


def check_sdist(sdist: Path) -> list[str]:
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    root = names[0].split("/")[0]
    problems = [n for n in names if n.endswith(".h5ad")]
    problems += [n for n in names if n.removeprefix(f"{root}/").startswith(NOT_IN_SDIST)]
    required = [f"{root}/{n}" for n in ("PKG-INFO", "pyproject.toml", "LICENSE", "README.md")]
    problems += [f"missing: {n}" for n in required if n not in names]
    print(f"{sdist.name}: {len(names)} files")
    return problems


def install_and_import(wheel: Path, version: str, torch: str, torch_index: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="sctrvae-dist-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = str(venv / "bin" / "python")
        pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        index = ["--index-url", torch_index] if torch_index else []
        subprocess.run([*pip, torch, *index], check=True)
        subprocess.run([*pip, str(wheel.resolve())], check=True)
        code = (
            "import sctrvae, importlib.metadata as m; "
            "print(sctrvae.__version__, sctrvae.__file__); "
            f"assert sctrvae.__version__ == m.version('sctrvae') == {version!r}"
        )
        # from the temporary folder, so that nothing of the checkout is on the path
        subprocess.run([python, "-c", code], check=True, cwd=tmp)
        print(f"installed {wheel.name} into a fresh environment ({torch}) and imported it")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dist", type=Path, nargs="?", default=Path("dist"))
    parser.add_argument("--install", action="store_true", help="install and import the wheel")
    parser.add_argument("--torch", default="torch==2.13.0", help="installed before the wheel")
    parser.add_argument("--torch-index", default=None, help="pip index URL for torch")
    args = parser.parse_args()

    wheel, sdist = find(args.dist, "*.whl"), find(args.dist, "*.tar.gz")
    version = wheel.name.split("-")[1]
    problems = check_wheel(wheel) + check_sdist(sdist)
    if sdist.name != f"sctrvae-{version}.tar.gz":
        problems.append(f"the sdist {sdist.name} is not version {version}")
    if problems:
        sys.exit("dist check failed:\n  " + "\n  ".join(problems))
    print(f"version {version}: wheel and sdist contents are fine")
    if args.install:
        install_and_import(wheel, version, args.torch, args.torch_index)


if __name__ == "__main__":
    main()
