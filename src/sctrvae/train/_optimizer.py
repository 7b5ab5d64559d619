"""Adam whose parameter groups of small tensors update on one thread."""

from __future__ import annotations

import torch

from .._threads import ONE_THREAD_ENTRIES, few_entries_on_one_thread


def split_by_size(groups: list[dict]) -> list[dict]:
    """Each parameter group split in two: tensors above :data:`ONE_THREAD_ENTRIES`, the rest.

    Both halves keep the group's settings; empty halves are dropped.
    """
    split = []
    for group in groups:
        large = [p for p in group["params"] if p.numel() > ONE_THREAD_ENTRIES]
        small = [p for p in group["params"] if p.numel() <= ONE_THREAD_ENTRIES]
        split += [{**group, "params": params} for params in (large, small) if params]
    return split


class SizedGroupsAdam(torch.optim.Adam):
    """:class:`torch.optim.Adam` that updates each parameter group on the threads it is worth.

    The fused CPU update splits every tensor over torch's threads, so with sleeping idle threads
    (:data:`~sctrvae._threads.PASSIVE_WAIT`) each tensor waits for a wake-up: on Kang (2 cores),
    the model's 14 small tensors took 0.81 ms on two threads and 0.10 ms on one, its two
    gene-wide weight matrices 0.77 ms on two. A group whose tensors all have at most
    :data:`~sctrvae._threads.ONE_THREAD_ENTRIES` entries (see :func:`split_by_size`) updates on
    one thread, the others on all; the update itself is Adam's.
    """

    def step(self, closure=None):
        """Evaluate ``closure`` (forward and backward, on every thread), then update each group."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = self.param_groups
        try:
            for group in groups:
                self.param_groups = [group]
                with few_entries_on_one_thread(
                    max((p.numel() for p in group["params"]), default=0)
                ):
                    super().step()
        finally:
            self.param_groups = groups
        return loss
