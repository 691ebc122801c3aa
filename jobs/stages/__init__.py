"""The pipeline's stages as functions: a config and a run layout in, a typed result out.

Each stage reads the folders of the stages before it and writes its own (the resolved config, a
``metrics.json`` and its models), all named by :class:`~pipeline.layout.RunLayout`. Ray must be up
(see :func:`actors.cluster.session.init_ray`). The CLI modules in ``jobs/`` parse arguments and call these;
a Tune trial or a Serve application calls them the same way.
"""

from jobs.stages.data import DataResult, data_stage
from jobs.stages.evaluate import EvaluationInputs, evaluate_stage, load_evaluation_inputs
from jobs.stages.identifiers import identifiers_stage, label_stage
from jobs.stages.ppo import PPOInputError, check_ppo_inputs, load_ppo_inputs, ppo_stage
from jobs.stages.result import StageResult
from jobs.stages.sft import init_stage, sft_stage
from jobs.stages.tune import tune_stage

__all__ = [
    "DataResult",
    "EvaluationInputs",
    "PPOInputError",
    "StageResult",
    "check_ppo_inputs",
    "data_stage",
    "evaluate_stage",
    "identifiers_stage",
    "init_stage",
    "label_stage",
    "load_evaluation_inputs",
    "load_ppo_inputs",
    "ppo_stage",
    "sft_stage",
    "tune_stage",
]
