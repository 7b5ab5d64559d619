"""scArches surgery with several categorical inputs: column order, and what a query may train.

scvi-tools' ``ArchesMixin.load_query_data`` appends the columns of every new category at the
end of a layer's inputs. That is right for one categorical input (the condition alone), but the
first layers here read ``[x, continuous, condition, batch, other covariates]`` one-hot blocks,
so a new donor's columns would land after the last block, under another covariate's meaning.
:func:`constrain_query_surgery` moves each new column into its own block, and restricts training
to the new categories where the query brings no new condition.
"""

from __future__ import annotations

import numpy as np
import torch
from scvi.nn import FCLayers


def block_order(prefix: int, old_sizes: list[int], new_sizes: list[int]) -> np.ndarray:
    """Column permutation from scvi-tools' layout to one whose blocks hold their new categories.

    scvi-tools' layout: ``prefix`` columns, the old blocks (``old_sizes``), then all new columns.
    Returned: for each output column, the input column it takes.
    """
    order = list(range(prefix))
    old_start = prefix
    fresh = prefix + sum(old_sizes)
    for old, new in zip(old_sizes, new_sizes, strict=True):
        order += list(range(old_start, old_start + old))
        order += list(range(fresh, fresh + new - old))
        old_start += old
        fresh += new - old
    return np.asarray(order)


def known_columns(prefix: int, old_sizes: list[int], new_sizes: list[int]) -> torch.Tensor:
    """Boolean mask of the columns of categories the reference had (after :func:`block_order`)."""
    known = [np.zeros(prefix, dtype=bool)]
    for old, new in zip(old_sizes, new_sizes, strict=True):
        known.append(np.arange(new) < old)
    return torch.as_tensor(np.concatenate(known))


def _first_linear(layers: FCLayers) -> torch.nn.Linear:
    return next(iter(layers.fc_layers))[0]


def constrain_query_surgery(model, reference, unfrozen: bool = False) -> None:
    """Fix the surgery of ``model`` (made by ``load_query_data`` from ``reference``) in place.

    Every condition-injected layer gets its new columns moved into their blocks. Unless
    ``unfrozen``: when the query adds no condition, only the new covariate categories' columns
    train (the reference's conditions and donors keep their weights, so the new donor's effect
    cannot be absorbed by the column of the condition its cells are in); when it adds one, the
    condition columns and the offset train as in scvi-tools, the known covariates' do not.
    """
    module = model.module
    old_layers = dict(reference.module.named_modules())
    new_condition = module.n_conditions > reference.module.n_conditions
    for name, layers in module.named_modules():
        if not isinstance(layers, FCLayers) or not layers.n_cat_list:
            continue
        old_sizes, new_sizes = list(old_layers[name].n_cat_list), list(layers.n_cat_list)
        linear = _first_linear(layers)
        prefix = linear.weight.shape[1] - sum(new_sizes)
        if old_sizes != new_sizes:
            with torch.no_grad():
                order = torch.as_tensor(block_order(prefix, old_sizes, new_sizes))
                linear.weight.copy_(linear.weight[:, order.to(linear.weight.device)])
        if unfrozen:
            continue
        frozen = known_columns(prefix, old_sizes, new_sizes)
        if new_condition and name in ("g1", "encoder.encoder"):
            frozen[prefix : prefix + new_sizes[0]] = False  # the condition block trains
        trainable = (~frozen).to(linear.weight.dtype).to(linear.weight.device)
        linear.weight.register_hook(lambda grad, mask=trainable: grad * mask)
    if module.condition_offset is not None and (new_condition or unfrozen):
        # scvi-tools freezes every parameter outside its FCLayers' injected columns
        module.condition_offset.requires_grad_(True)
