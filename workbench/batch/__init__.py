"""Batch runs: the experiment notebook under papermill, and sweeps over grids of configs."""
