"""Plots of predictions against real cells, in scanpy's style (``ax=``, ``show=``, ``save=``)."""

from ._regression import reg_mean_plot, reg_var_plot
from ._transfer import transfer_check

__all__ = ["reg_mean_plot", "reg_var_plot", "transfer_check"]
