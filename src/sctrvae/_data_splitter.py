"""Train/validation split whose loaders draw condition-balanced minibatches."""

from __future__ import annotations

import numpy as np
from scvi import REGISTRY_KEYS, settings
from scvi.data import AnnDataManager
from scvi.dataloaders import AnnDataLoader, DataSplitter
from torch.utils.data import DataLoader

from ._sampler import ConditionBalancedSampler


class ConditionBalancedDataLoader(AnnDataLoader):
    """:class:`~scvi.dataloaders.AnnDataLoader` whose batches each contain every condition.

    Takes the arguments of :class:`~scvi.dataloaders.AnnDataLoader`; ``distributed_sampler=True``
    (set by scvi-tools under a DDP strategy) shards the cells over the ranks with
    :class:`~sctrvae.ConditionBalancedSampler` instead of scvi-tools' unbalanced sampler.
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        indices: np.ndarray | None = None,
        batch_size: int = 128,
        shuffle: bool = False,
        drop_last: bool = False,
        distributed_sampler: bool = False,
        min_cells_per_condition: int = 8,
        data_and_attributes: list[str] | dict[str, np.dtype] | None = None,
        load_sparse_tensor: bool = False,
        **kwargs,
    ):
        if indices is None:
            indices = np.arange(adata_manager.adata.n_obs)
        indices = np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        self.indices = indices
        self.dataset = adata_manager.create_torch_dataset(
            indices=indices,
            data_and_attributes=data_and_attributes,
            load_sparse_tensor=load_sparse_tensor,
        )
        codes = adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY).reshape(-1)[indices]
        sampler = ConditionBalancedSampler(
            codes,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            min_cells_per_condition=min_cells_per_condition,
            num_replicas=None if distributed_sampler else 1,
            rank=None if distributed_sampler else 0,
            seed=settings.seed or 0,
        )
        kwargs.setdefault("num_workers", settings.dl_num_workers)
        kwargs.setdefault("persistent_workers", settings.dl_persistent_workers)
        # the sampler yields whole batches, fetched with one __getitem__ call each (fast on
        # sparse data); AnnDataLoader's own constructor only allows that for its own samplers
        self.kwargs = {**kwargs, "sampler": sampler, "batch_size": None, "shuffle": False}
        DataLoader.__init__(self, self.dataset, **self.kwargs)


class ConditionBalancedDataSplitter(DataSplitter):
    """:class:`~scvi.dataloaders.DataSplitter` with :class:`ConditionBalancedDataLoader` loaders.

    Validation batches are balanced too, so that the logged validation MMD is comparable. The
    train/validation split is drawn once, when the splitter is built: processes spawned for DDP
    then share it even without ``scvi.settings.seed`` (each would otherwise draw its own, and the
    ranks' shards would overlap).
    """

    data_loader_cls = ConditionBalancedDataLoader

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        super().setup()

    def setup(self, stage: str | None = None):
        """Keep the split drawn at construction."""
