"""Saves that a failure cannot damage, and loads that say what is wrong with a damaged file.

A save is written to a temporary sibling directory and renamed into place only once complete, so
a save that fails half-way (a full disk, an attribute that cannot be pickled, an interrupt)
leaves the previous save as it was. Loading reads the model file once up front and turns
unreadable, truncated or foreign files into errors that name the file and the problem.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from scvi.model.base import BaseModelClass

from .._version import __version__

if TYPE_CHECKING:
    from ._trvae import TRVAEModel

#: Format of saved models. Raised when a change makes older releases misread newer files; a
#: file of a newer format than the installed release reads is refused with an upgrade hint.
SAVE_FORMAT = 1
#: scvi-tools' file names and keys of a saved model.
MODEL_FILE = "model.pt"
_SAVED_KEYS = ("model_state_dict", "var_names", "attr_dict")
#: Markers of the temporary siblings of a save in progress / of the save it replaces.
_SAVING, _REPLACED = "saving", "replaced"


@contextmanager
def atomic_directory(dir_path: str | os.PathLike) -> Iterator[Path]:
    """A new directory to write a save into; it becomes ``dir_path`` once the block completes.

    The directory is a hidden sibling of ``dir_path`` (the same file system, so the final
    renames do not copy). If the block raises, or is interrupted, it is removed and
    ``dir_path`` is left untouched. Otherwise ``dir_path`` is replaced by it; entries of an
    existing ``dir_path`` that the new save did not write (e.g. saves under another ``prefix``)
    are kept.
    """
    path = Path(dir_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, _SAVING)
    os.mkdir(tmp)  # unlike tempfile.mkdtemp, honours the umask like any other directory
    try:
        yield tmp
        if not path.exists():
            os.rename(tmp, path)
            return
        shutil.copymode(path, tmp)
        old = _sibling(path, _REPLACED)
        # a process killed between these two renames leaves both saves in the siblings, which
        # the error for a missing directory points to
        os.rename(path, old)
        os.rename(tmp, path)
        for entry in old.iterdir():
            if not (path / entry.name).exists():
                os.rename(entry, path / entry.name)
        shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sibling(path: Path, marker: str) -> Path:
    return path.with_name(f".{path.name}.{marker}-{uuid.uuid4().hex[:8]}")


def save_model(
    model: TRVAEModel,
    dir_path: str | os.PathLike,
    prefix: str | None = None,
    overwrite: bool = False,
    **kwargs,
) -> None:
    """scvi-tools' ``BaseModelClass.save``, written to a temporary directory first."""
    if os.path.exists(dir_path) and not overwrite:
        raise ValueError(
            f"{dir_path} already exists. Please provide another directory for saving, or pass "
            "overwrite=True to replace the model saved there."
        )
    model.save_format_ = SAVE_FORMAT  # saved with the model (an attribute ending in "_")
    with atomic_directory(dir_path) as tmp:
        BaseModelClass.save(model, os.fspath(tmp), prefix=prefix, overwrite=True, **kwargs)


def check_saved_model(cls: type, dir_path: str | os.PathLike, prefix: str | None = None) -> None:
    """Raise an error naming the file and the problem unless ``dir_path`` holds a loadable save.

    Checks that the model file exists and is not empty, that it can be read, that it is a saved
    scvi-tools model of class ``cls``, and that its format is one this release reads.
    """
    path = Path(dir_path)
    if not path.is_dir():
        leftovers = sorted(
            p.name
            for marker in (_REPLACED, _SAVING)
            for p in path.parent.glob(f".{path.name}.{marker}-*")
        )
        hint = (
            f"; a save there was interrupted, and {leftovers} beside it hold the previous and "
            "the new save (rename one of them to load it)"
            if leftovers
            else ""
        )
        raise FileNotFoundError(f"{dir_path} is not a directory of a saved model{hint}.")
    file = path / f"{prefix or ''}{MODEL_FILE}"
    if not file.is_file():
        raise FileNotFoundError(
            f"{file} does not exist: {dir_path} holds no saved model (it holds "
            f"{sorted(p.name for p in path.iterdir())}). Pass the directory given to save()."
        )
    size = file.stat().st_size
    incomplete = (
        "the save did not finish (e.g. a full disk, a killed process or a partial copy). Save "
        "the model again, or use another copy of it."
    )
    if size == 0:
        raise ValueError(f"{file} is empty (0 bytes): {incomplete}")
    try:
        saved = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as error:
        raise ValueError(
            f"{file} ({size} bytes) cannot be read, it is damaged or incomplete "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}): {incomplete}"
        ) from error
    if not (isinstance(saved, dict) and all(key in saved for key in _SAVED_KEYS)):
        raise ValueError(f"{file} is not a model saved by scvi-tools' or sctrvae's save().")
    attrs = saved["attr_dict"]
    saved_class = attrs.get("registry_", {}).get("model_name")
    if saved_class != cls.__name__:
        raise ValueError(
            f"{file} holds a {saved_class} model, not a {cls.__name__}; load it with "
            f"{saved_class}.load()."
        )
    saved_format = attrs.get("save_format_", 1)  # saves before the format was recorded: 1
    if saved_format > SAVE_FORMAT:
        raise ValueError(
            f"{file} was saved by sctrvae {attrs.get('sctrvae_version_')} in file format "
            f"{saved_format}; the installed sctrvae {__version__} reads formats up to "
            f"{SAVE_FORMAT}. Upgrade sctrvae to load it."
        )


def read_manifest(dir_path: str | os.PathLike, manifest: str) -> list[str]:
    """The member directories listed in an ensemble's ``manifest``, checked to exist."""
    path = Path(dir_path)
    file = path / manifest
    if not file.is_file():
        raise FileNotFoundError(
            f"{file} does not exist: {dir_path} holds no saved TRVAEEnsemble. Pass the "
            "directory given to TRVAEEnsemble.save(), or load a single model with "
            "TRVAEModel.load()."
        )
    try:
        content = json.loads(file.read_text())
        members = content["members"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{file} is damaged or incomplete ({type(error).__name__}: {error}); save the "
            "ensemble again, or use another copy of it."
        ) from error
    if not (isinstance(members, list) and members and all(isinstance(m, str) for m in members)):
        raise ValueError(f"{file} lists no member models: {members!r}.")
    saved_format = content.get("format", 1)
    if saved_format > SAVE_FORMAT:
        raise ValueError(
            f"{file} was saved by sctrvae {content.get('sctrvae_version')} in file format "
            f"{saved_format}; the installed sctrvae {__version__} reads formats up to "
            f"{SAVE_FORMAT}. Upgrade sctrvae to load it."
        )
    missing = [m for m in members if not (path / m).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{file} lists members {missing} that are not directories in {dir_path}; the "
            "ensemble was copied or saved incompletely."
        )
    return members


def manifest_content(members: list[str]) -> str:
    """What ``read_manifest`` reads: the members' directories, the version and file format."""
    content = {"members": members, "sctrvae_version": __version__, "format": SAVE_FORMAT}
    return json.dumps(content, indent=1)
