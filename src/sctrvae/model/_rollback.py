"""Calls that write to the user's AnnData either finish or leave it as it was.

A prediction that fails or is interrupted (``KeyboardInterrupt`` in Jupyter) half-way must not
leave a half-written result, nor the ``_scvi_*`` registration that scvi-tools adds to an
AnnData a model sees for the first time.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import anndata as ad

F = TypeVar("F", bound=Callable)
#: Prefix of the obs columns and uns keys of scvi-tools' registration.
SCVI_PREFIX = "_scvi"
#: Where ``key_added`` results are written.
_WRITTEN = ("layers", "obsm", "uns")
_MISSING = object()


@contextmanager
def restored_on_failure(adata: ad.AnnData | None, key_added: str | None) -> Iterator[None]:
    """Undo, if the block raises, what it wrote: ``key_added`` and scvi-tools' registration.

    Restores the ``_scvi_*`` columns of ``obs`` and keys of ``uns`` and the entries
    ``key_added`` of ``layers``, ``obsm`` and ``uns`` (adding back, replacing or removing each).
    Nothing is copied: the entries are replaced, never changed in place, so references to the
    earlier ones are enough. A view is never written to (results need an actual AnnData), so it
    needs no restoring.
    """
    if not isinstance(adata, ad.AnnData) or adata.is_view:
        yield
        return
    obs = {c: adata.obs[c] for c in adata.obs.columns if str(c).startswith(SCVI_PREFIX)}
    uns = {k: v for k, v in adata.uns.items() if str(k).startswith(SCVI_PREFIX)}
    added = {}
    if key_added is not None:
        added = {name: getattr(adata, name).get(key_added, _MISSING) for name in _WRITTEN}
    try:
        yield
    except BaseException:
        for column in [c for c in adata.obs.columns if str(c).startswith(SCVI_PREFIX)]:
            if column not in obs:
                del adata.obs[column]
        for column, values in obs.items():
            adata.obs[column] = values
        for key in [k for k in adata.uns if str(k).startswith(SCVI_PREFIX)]:
            if key not in uns:
                del adata.uns[key]
        adata.uns.update(uns)
        for name, before in added.items():
            mapping = getattr(adata, name)
            if before is _MISSING:
                mapping.pop(key_added, None)
            else:
                mapping[key_added] = before
        raise


def restores_adata_on_failure(method: F) -> F:
    """Make a method taking ``adata`` and ``key_added`` undo its writes when it fails.

    See :func:`restored_on_failure`; ``adata=None`` stands for the model's own AnnData.
    """
    signature = inspect.signature(method)

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        arguments = signature.bind(self, *args, **kwargs).arguments
        adata = arguments.get("adata")
        with restored_on_failure(
            self.adata if adata is None else adata, arguments.get("key_added")
        ):
            return method(self, *args, **kwargs)

    return wrapper
