"""What every plot of ``sctrvae.pl`` shares: its last parameters, and how it ends."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

#: numpydoc of ``ax``, ``show`` and ``save`` and of the return value; their first line goes
#: where a docstring's own would start (after four spaces).
FIGURE_PARAMETERS = """ax
        Axes to draw in; a new figure otherwise.
    show
        Show the figure and return ``None`` (scanpy's convention).
    save
        Path to save the figure to."""
FIGURE_RETURNS = """Returns
    -------
    The Axes, unless ``show`` is true.
"""


def finish(ax: Axes, show: bool | None, save: str | None) -> Axes | None:
    """Save the figure if asked, then show it (returning ``None``) or return the Axes."""
    if save:
        ax.figure.savefig(save, dpi=150, bbox_inches="tight")
    if show:
        plt.show()
        return None
    return ax
