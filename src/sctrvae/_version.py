"""The installed version of the package (recorded in saved models)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sctrvae")
except PackageNotFoundError:  # pragma: no cover - only when run from an uninstalled tree
    __version__ = "0+unknown"
