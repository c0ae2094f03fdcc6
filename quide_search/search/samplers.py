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

from quide_search.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    import optuna

__all__ = ["SAMPLERS", "check_sampler", "make_sampler"]

SAMPLERS = ("tpe", "random", "nsga2", "gp")
"""Samplers that fit categorical search spaces."""

_UNFIT = {
    "cmaes": "CMA-ES models continuous and integer parameters only; on per-layer categorical "
    "choices Optuna would sample every parameter at random",
}


def check_sampler(name: str) -> None:
    """Raise ConfigError unless ``name`` is a sampler that fits categorical plans."""
    if name in _UNFIT:
        raise ConfigError(
            f"--sampler must fit categorical choices, but {name!r} does not: {_UNFIT[name]}. "
            f"Use one of {', '.join(SAMPLERS)}."
        )
    if name not in SAMPLERS:
        raise ConfigError(
            f"--sampler must be one of {', '.join(SAMPLERS)}, but got {name!r}."
            + did_you_mean(name, SAMPLERS)
        )


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
