"""nnopt: a config-driven experiment runner for neural-network optimization techniques."""

__version__ = "0.1.0"
