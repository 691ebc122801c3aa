"""Tune stage: a Ray Tune sweep over PPO, one trial per sampled config, each in its own placement group.

``settings`` (how a sweep runs), ``trial`` (the trial function), ``search`` (schedulers and search
algorithms), ``results`` (tables, report, best export) and ``stage`` (the :func:`tune_stage` driver).
"""

from jobs.stages.tune.search import FinalAwarePBT, make_scheduler, make_search, pbt_mutations
from jobs.stages.tune.settings import Scheduler, Search, SweepError, SweepSettings
from jobs.stages.tune.stage import tune_stage
from jobs.stages.tune.trial import TrialReporter, TrialSetup, reports_per_trial, run_trial

__all__ = [
    "FinalAwarePBT",
    "Scheduler",
    "Search",
    "SweepError",
    "SweepSettings",
    "TrialReporter",
    "TrialSetup",
    "make_scheduler",
    "make_search",
    "pbt_mutations",
    "reports_per_trial",
    "run_trial",
    "tune_stage",
]
