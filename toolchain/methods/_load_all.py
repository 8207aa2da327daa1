"""Importing this module registers every built-in method (kept out of __init__ to avoid cycles)."""

from . import bnstat, gznq, lrq, minmax, zaq  # noqa: F401
