"""Train/validation split whose loaders draw condition-balanced minibatches."""

from __future__ import annotations

import math

import numpy as np
import torch
from scvi import REGISTRY_KEYS, settings
from scvi.data import AnnDataManager
from scvi.dataloaders import AnnDataLoader, DataSplitter
from torch.utils.data import DataLoader

from ._count_positions import CSRCountsDataset
from ._covariates import sampler_labels
from ._device_data import DeviceResidentData, DeviceResidentDataset
from ._sampler import ConditionBalancedSampler


def shuffle_seed() -> int:
    """``scvi.settings.seed``, or fresh entropy when it is unset: each run shuffles anew."""
    return settings.seed if settings.seed is not None else np.random.SeedSequence().entropy


def n_training_cells(n_obs: int, train_size: float | None = None) -> int:
    """Training cells of a :class:`~scvi.dataloaders.DataSplitter`: ``ceil(train_size * n_obs)``.

    scvi-tools' rule, ``train_size`` 0.9 by default.
    """
    return math.ceil((0.9 if train_size is None else train_size) * n_obs)


def has_validation_cells(
    n_obs: int,
    train_size: float | None = None,
    validation_size: float | None = None,
    external_indexing: list[np.ndarray] | None = None,
) -> bool:
    """Whether a :class:`~scvi.dataloaders.DataSplitter` with these arguments validates on any cell.

    Follows scvi-tools' sizes: :func:`n_training_cells`, and the rest, or
    ``floor(validation_size * n_obs)``, for validation.
    """
    if external_indexing is not None:
        return len(external_indexing[1]) > 0
    if validation_size is not None:
        return math.floor(validation_size * n_obs) > 0
    return n_training_cells(n_obs, train_size) < n_obs


class ConditionBalancedDataLoader(AnnDataLoader):
    """:class:`~scvi.dataloaders.AnnDataLoader` whose batches each contain every condition.

    Takes the arguments of :class:`~scvi.dataloaders.AnnDataLoader`; ``distributed_sampler=True``
    (set by scvi-tools under a DDP strategy) shards the cells over the ranks with
    :class:`~sctrvae.ConditionBalancedSampler` instead of scvi-tools' unbalanced sampler.

    With ``resident`` (a :class:`~sctrvae.DeviceResidentData`), batches are sliced from the
    device-resident matrix in the main process instead of from the AnnData. ``seed`` is the base
    seed of the sampler's shuffles (every DDP rank must pass the same one); ``None`` takes
    ``scvi.settings.seed``, or fresh entropy when that is unset.
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
        resident: DeviceResidentData | None = None,
        seed: int | None = None,
        **kwargs,
    ):
        if indices is None:
            indices = np.arange(adata_manager.adata.n_obs)
        indices = np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        self.indices = indices
        if (
            resident is None
            and data_and_attributes is None
            and not load_sparse_tensor
            and (
                getattr(adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY), "format", None)
                == "csr"
            )
        ):
            # dense rows and the positions of their non-zero counts, for the likelihood
            self.dataset = CSRCountsDataset(adata_manager, indices)
        elif resident is None:
            self.dataset = adata_manager.create_torch_dataset(
                indices=indices,
                data_and_attributes=data_and_attributes,
                load_sparse_tensor=load_sparse_tensor,
            )
        else:
            self.dataset = DeviceResidentDataset(resident, indices)
            # batches are already on the device: worker processes and pinning have no use
            kwargs.update(num_workers=0, persistent_workers=False, pin_memory=False)
        codes = adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY).reshape(-1)[indices]
        labels = sampler_labels(adata_manager, indices)
        sampler = ConditionBalancedSampler(
            codes,
            batch_size=batch_size,
            labels=labels,
            shuffle=shuffle,
            drop_last=drop_last,
            min_cells_per_condition=min_cells_per_condition,
            num_replicas=None if distributed_sampler else 1,
            rank=None if distributed_sampler else 0,
            seed=shuffle_seed() if seed is None else seed,
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
    train/validation split and the sampler's base seed (``scvi.settings.seed``, fresh when unset)
    are drawn when the splitter is built, and :meth:`setup` gives every DDP rank those of rank 0:
    without ``scvi.settings.seed``, processes that each built their own splitter
    (``strategy="ddp"`` launched as a script, ``torchrun``) would otherwise draw different splits,
    and the ranks' shards would overlap each other's validation cells. Each set is kept in
    increasing order, so that the sampler's sorted positions are sorted rows of the AnnData.

    Parameters
    ----------
    *args, **kwargs
        Arguments of :class:`~scvi.dataloaders.DataSplitter` and of the loaders.
    device_resident
        Copy the count matrix (CSR or dense, in memory) and the condition codes to the training
        device once, when training starts, and slice every training and validation batch from
        that copy on the device (:class:`~sctrvae.DeviceResidentData`). Keeps a GPU busy that
        the Python data loader would starve; needs the whole matrix to fit in device memory
        (on CPU it shares the AnnData's memory). Each DDP process holds its own copy.
    """

    data_loader_cls = ConditionBalancedDataLoader

    def __init__(self, *args, device_resident: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.device_resident = device_resident
        self._resident: DeviceResidentData | None = None
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches done) of a checkpoint
        self.data_loader_kwargs.setdefault("seed", shuffle_seed())
        super().setup()
        self.train_idx, self.val_idx, self.test_idx = (
            np.sort(i) for i in (self.train_idx, self.val_idx, self.test_idx)
        )

    def setup(self, stage: str | None = None):
        """Take rank 0's split and sampler seed (Lightning calls this on every rank)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return
        drawn = (self.train_idx, self.val_idx, self.test_idx, self.data_loader_kwargs["seed"])
        self.train_idx, self.val_idx, self.test_idx, self.data_loader_kwargs["seed"] = (
            trainer.strategy.broadcast(drawn, src=0)
        )

    def state_dict(self) -> dict:
        """The split, the shuffles' seed and the position in the epoch, saved in checkpoints."""
        trainer = self.trainer
        # lists, not arrays: Lightning reads checkpoints with torch.load(weights_only=True)
        return {
            "train_idx": np.asarray(self.train_idx).tolist(),
            "val_idx": np.asarray(self.val_idx).tolist(),
            "test_idx": np.asarray(self.test_idx).tolist(),
            "seed": self.data_loader_kwargs["seed"],
            "epoch": trainer.current_epoch,
            "n_batches_done": trainer.fit_loop.epoch_loop.batch_progress.current.processed,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Resume with the checkpoint's split and shuffles, after the batches it had trained on.

        Lightning calls this after :meth:`setup` when training resumes from a checkpoint
        (``train(ckpt_path=...)``), so a run without ``scvi.settings.seed`` keeps its split too.
        """
        self.train_idx, self.val_idx, self.test_idx = (
            np.asarray(state_dict[k]) for k in ("train_idx", "val_idx", "test_idx")
        )
        self.data_loader_kwargs["seed"] = state_dict["seed"]
        self._resume_at = (state_dict["epoch"], state_dict["n_batches_done"])

    def _resident_data(self) -> DeviceResidentData | None:
        """The device copy, made on first use in each training process and shared by loaders."""
        if not self.device_resident:
            return None
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        if self._resident is None or self._resident.device != device:
            self._resident = DeviceResidentData(self.adata_manager, device)
        return self._resident

    def _loader(self, indices: np.ndarray, shuffle: bool, drop_last: bool):
        return self.data_loader_cls(
            self.adata_manager,
            indices=indices,
            shuffle=shuffle,
            drop_last=drop_last,
            load_sparse_tensor=self.load_sparse_tensor,
            pin_memory=self.pin_memory,
            resident=self._resident_data(),
            **self.data_loader_kwargs,
        )

    def train_dataloader(self):
        """Condition-balanced, shuffled training batches."""
        loader = self._loader(self.train_idx, shuffle=True, drop_last=self.drop_last)
        if self._resume_at is not None:
            loader.sampler.resume(*self._resume_at)
            self._resume_at = None
        return loader

    def val_dataloader(self):
        """Condition-balanced validation batches (``None`` without validation cells)."""
        if len(self.val_idx) > 0:
            return self._loader(self.val_idx, shuffle=False, drop_last=False)
        return None
