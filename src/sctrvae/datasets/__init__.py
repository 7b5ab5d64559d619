"""Data: a count simulator with known responses, and public data loaders."""

from ._kang2018 import kang2018
from ._simulate import simulate
from ._simulate_donors import simulate_donors
from ._simulate_patients import simulate_patients

__all__ = ["kang2018", "simulate", "simulate_donors", "simulate_patients"]
