"""Optuna samplers for per-layer categorical plans (``--sampler``), seeded.

A plan is one categorical parameter per layer (or group). TPE, Gaussian-process (one-hot
encoded categoricals), NSGA-II (categorical crossover and mutation) and random sampling all
handle that natively, and all but random read the trial constraints (the gate, size and
latency limits). CMA-ES does not: it models continuous and integer parameters only, and Optuna
would sample every categorical parameter with its independent (random) fallback, so asking for
it is an error that says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quide_search.config import SAMPLERS, check_sampler

if TYPE_CHECKING:
    import optuna

__all__ = ["SAMPLERS", "check_sampler", "make_sampler"]


def make_sampler(name: str, *, seed: int) -> optuna.samplers.BaseSampler:
    """Return the seeded sampler ``name``.

    Raises:
        ConfigError: For an unknown sampler or one that does not fit categorical plans.
    """
    import optuna

    check_sampler(name)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed)
