"""The leave-one-group-out protocol of the benchmarks: fold scores with reference rows."""

from ._leave_one_out import REFERENCES, leave_one_out

__all__ = ["REFERENCES", "leave_one_out"]
