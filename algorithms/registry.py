"""Learners by the name a suite gives in `[algorithm] name = ...`.

Imports are lazy, as for backends. A second algorithm is one module plus one line
here; a suite may also name a learner class by import path (`"my_pkg.module:MyLearner"`),
as gymnasium accepts an env's entry point.
"""

from __future__ import annotations

import importlib

from algorithms.base import Learner, LearnerSetup
from algorithms.config import SETTINGS_TABLES

LEARNERS: dict[str, str] = {
    "ppo": "algorithms.ppo:PPOLearner",
    "appo": "algorithms.appo:APPOLearner",
}
DEFAULT_ALGORITHM = "ppo"


def learner_class(name: str) -> type[Learner]:
    """The class a registry name or a `module:Class` path names; `ValueError` with the choices if none."""
    target = LEARNERS.get(name, name)
    module_name, _, class_name = target.partition(":")
    if not class_name:
        raise ValueError(f"unknown algorithm '{name}'; choose one of {', '.join(LEARNERS)} or give 'module:Class'")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load algorithm '{name}': {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Learner)):
        raise ValueError(f"algorithm '{name}' is not a subclass of algorithms.base.Learner")
    return cls


def settings_table_name(name: str) -> str:
    """The suite table the learner `name` reads its settings from (`ppo`, `appo`); `ValueError` if none known."""
    cls = learner_class(name)
    if cls.settings_table not in SETTINGS_TABLES:
        raise ValueError(f"algorithm '{name}' reads settings table '{cls.settings_table}', which is not one of "
                         f"{', '.join(SETTINGS_TABLES)} (algorithms.config.SETTINGS_TABLES)")  # fmt: skip
    return cls.settings_table


def create_learner(name: str, setup: LearnerSetup) -> Learner:
    """Build the learner `name` from `setup`."""
    return learner_class(name)(setup)
