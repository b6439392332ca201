"""nnopt's parallel launcher for Hydra sweeps (`hydra/launcher=parallel`): see fork_launcher.py."""
