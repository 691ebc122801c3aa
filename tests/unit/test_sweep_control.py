"""The sweep's control: the base config's own values of the swept keys, run as the first trial of every
search (random, grid, Optuna), never stopped early by ASHA nor exploited by PBT, never fed to Optuna, and
kept across a resume; the report measures every trial against it."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ray.tune.experiment import Experiment
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler
from ray.tune.search import Searcher

from actors.sweep.trial import CONTROL_KEY, is_control, param_space, plain_values
from jobs.stages.tune import SweepSettings
from jobs.stages.tune.search import ControlFirst, FinalAwarePBT, make_scheduler, make_search, num_samples
from jobs.stages.tune.stage import FailureLog
from pipeline.config import load_config
from pipeline.config.objective import Objective
from pipeline.config.search_space import parse_search_space
from pipeline.evaluation.control import (
    FEW_SEEDS,
    SEEDS_NOTE,
    configuration_rows,
    control_sentence,
    has_seeds,
    seeds_note,
    seeds_table,
    with_control_deltas,
)

BASE = load_config("local", ["ppo.kl_coef=0.2", "reward.weights.ex=1.0"])
SPACE = parse_search_space(
    {"ppo.kl_coef": {"grid": [0.05, 0.3]}, "reward.weights.ex": {"uniform": [0.5, 2.0]}}, BASE
)
OBJECTIVE = Objective.parse("dev/emp_f1", "max")


def _trainable(config: dict[str, Any]) -> None:  # never run: the searchers only need a registered name
    return None


def _configs(search: Any, samples: int) -> list[dict[str, Any]]:
    """Every trial config the search algorithm creates for ``samples`` samples of SPACE (no Ray)."""
    search.add_configurations(
        [Experiment("control", _trainable, config=param_space(SPACE), num_samples=samples)]
    )
    configs = []
    while not search.is_finished():
        trial = search.next_trial()
        if trial is None:
            break
        configs.append(trial.config)
        search.on_trial_complete(trial.trial_id)  # frees its place under max_concurrent
    return configs


def test_the_control_is_the_base_configs_point_of_the_space() -> None:
    assert SPACE.values_of(BASE) == {"ppo.kl_coef": 0.2, "reward.weights.ex": 1.0}
    control = {**SPACE.values_of(BASE), CONTROL_KEY: True}
    assert is_control(control) and not is_control({"ppo.kl_coef": 0.2, CONTROL_KEY: False})
    assert plain_values(control) == {"ppo.kl_coef": 0.2, "reward.weights.ex": 1.0}  # no marker in a config


def test_random_search_runs_the_control_first_then_every_sample_of_the_grid() -> None:
    settings = SweepSettings(num_samples=2)
    search = make_search(settings, OBJECTIVE, seed=0, control=SPACE.values_of(BASE))
    configs = _configs(search, num_samples(settings, control=True))
    assert configs[0] == {"ppo.kl_coef": 0.2, "reward.weights.ex": 1.0, CONTROL_KEY: True}
    rest = configs[1:]
    assert len(rest) == 2 * 2 and not any(is_control(c) for c in rest)  # num_samples x the grid, as without
    assert sorted(c["ppo.kl_coef"] for c in rest) == [0.05, 0.05, 0.3, 0.3]
    assert all(0.5 <= c["reward.weights.ex"] <= 2.0 for c in rest)
    without = _configs(make_search(settings, OBJECTIVE, seed=0), num_samples(settings, control=False))
    assert len(without) == 4 and not any(is_control(c) for c in without)


class _Recording(Searcher):
    """A searcher that suggests fixed values and records what it hears."""

    def __init__(self) -> None:
        super().__init__(metric="dev/emp_f1", mode="max")
        self.heard: list[tuple[str, str]] = []
        self.count = 0

    def suggest(self, trial_id: str) -> dict[str, Any]:
        self.count += 1
        return {"ppo.kl_coef": 0.01 * self.count, "reward.weights.ex": 1.5}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.heard.append(("result", trial_id))

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        self.heard.append(("complete", trial_id))

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(str(self.count))

    def restore(self, checkpoint_path: str) -> None:
        self.count = int(Path(checkpoint_path).read_text())


def test_a_searcher_suggests_the_control_first_and_never_hears_of_it(tmp_path: Path) -> None:
    inner = _Recording()
    first = ControlFirst(inner, {"ppo.kl_coef": 0.2, CONTROL_KEY: True})
    assert first.suggest("a") == {"ppo.kl_coef": 0.2, CONTROL_KEY: True}
    assert first.suggest("b") == {"ppo.kl_coef": 0.01, "reward.weights.ex": 1.5}
    for trial_id in ("a", "b"):
        first.on_trial_result(trial_id, {"dev/emp_f1": 1.0})
        first.on_trial_complete(trial_id, {"dev/emp_f1": 1.0})
    assert inner.heard == [("result", "b"), ("complete", "b")]  # it did not suggest the control

    first.save(str(tmp_path / "searcher.pkl"))  # what Tune saves with the experiment, for --resume
    restored = ControlFirst(_Recording(), {"ppo.kl_coef": 0.2, CONTROL_KEY: True})
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.control_id == "a" and restored.searcher.count == 1  # type: ignore[attr-defined]
    assert restored.suggest("c") == {"ppo.kl_coef": 0.02, "reward.weights.ex": 1.5}  # no second control


def test_optuna_search_suggests_the_control_first(tmp_path: Path) -> None:
    settings = SweepSettings(search="optuna", num_samples=3, max_concurrent_trials=4)
    space = parse_search_space({"ppo.kl_coef": {"loguniform": [0.01, 0.1]}}, BASE)
    search = make_search(settings, OBJECTIVE, seed=0, control=space.values_of(BASE))
    from ray.tune.search import SearchGenerator

    generator = SearchGenerator(search)
    assert generator.set_search_properties(None, None, param_space(space))  # as Tune does before the trials
    generator.add_configurations(
        [
            Experiment(
                "control",
                _trainable,
                config=param_space(space),
                num_samples=num_samples(settings, control=True),
            )
        ]
    )
    configs = [generator.next_trial().config for _ in range(4)]  # type: ignore[union-attr]
    assert configs[0] == {"ppo.kl_coef": 0.2, CONTROL_KEY: True}  # outside the space: the base config's value
    assert all(0.01 <= c["ppo.kl_coef"] <= 0.1 and c[CONTROL_KEY] is False for c in configs[1:]), configs
    assert generator.next_trial() is None  # 3 samples and the control

    # Tune pickles the search with the experiment and saves its state for --resume: both keep the control
    restored = pickle.loads(pickle.dumps(search))
    path = tmp_path / "searcher.pkl"
    search.save(str(path))
    restored.restore(str(path))
    assert restored.searcher.control_id == search.searcher.control_id is not None
    assert not is_control(restored.suggest("new") or {})


def _trial(trial_id: str, control: bool = False) -> Any:
    return SimpleNamespace(trial_id=trial_id, config={CONTROL_KEY: control}, status="RUNNING")


@pytest.mark.parametrize(
    ("max_t", "trials", "pair_se", "eta", "grace", "rungs"),
    [
        (3, 18, 1.4, 2.0, 2, [2]),  # noisy: keep half; 3 reports allow one cut
        (6, 18, 1.4, 2.0, 2, [2, 4]),  # two cuts fit 6 reports
        (9, 20, 0.4, 3.0, 1, [1, 3]),  # within the target: rf 3, two cuts
        (9, 4, 0.4, 3.0, 3, [3]),  # 4 trials allow one cut of 1/3
        (6, 2, None, 2.0, 3, [3]),  # not measured: rf 2; 2 trials, one cut
        (1, 9, 0.4, 3.0, 1, []),  # one report: nothing to cut
    ],
)
def test_asha_is_derived_from_the_noise_and_the_budget(
    max_t: int, trials: int, pair_se: float | None, eta: float, grace: int, rungs: list[int]
) -> None:
    from jobs.stages.tune.search import derive_asha

    settings = derive_asha(SweepSettings(), max_t=max_t, trials=trials, pair_se=pair_se)
    assert (settings.reduction_factor, settings.grace_period) == (eta, grace)
    asha = make_scheduler(settings, OBJECTIVE, SPACE, max_t=max_t, seed=0)
    milestones = sorted(t for t, _ in asha._brackets[0]._rungs if t < max_t)  # type: ignore[attr-defined]
    assert milestones == rungs, asha._brackets[0]._rungs  # type: ignore[attr-defined]
    assert settings.asha_rule.endswith(
        f"rungs at report(s) {', '.join(map(str, rungs)) or 'none (nothing is stopped)'} of {max_t}"
    )
    given = derive_asha(
        SweepSettings(grace_period=2, reduction_factor=4), max_t=max_t, trials=trials, pair_se=pair_se
    )
    assert given == SweepSettings(grace_period=2, reduction_factor=4)  # given values stand
    assert (
        derive_asha(SweepSettings(scheduler="fifo"), max_t=max_t, trials=trials, pair_se=pair_se).asha_rule
        == ""
    )


def test_asha_compares_the_control_at_every_rung_but_never_stops_it(tmp_path: Path) -> None:
    settings = SweepSettings(grace_period=1, reduction_factor=2)
    asha = make_scheduler(settings, OBJECTIVE, SPACE, max_t=4, seed=0, decisions=tmp_path / "asha.jsonl")
    trials = [_trial("good"), _trial("better"), _trial("control", control=True), _trial("weak")]
    for t in trials:
        asha.on_trial_add(None, t)  # type: ignore[arg-type]
    scores = {"good": 40.0, "better": 50.0, "control": 10.0, "weak": 5.0}
    actions = {
        t.trial_id: asha.on_trial_result(  # type: ignore[arg-type]
            None, t, {"training_iteration": 1, "dev/emp_f1": scores[t.trial_id], "dev/emp_f1_se": 2.0}
        )
        for t in trials
    }
    # the control is below the rung's cut-off as much as "weak" is: ASHA stops "weak", keeps the control
    assert actions == {"good": "CONTINUE", "better": "CONTINUE", "control": "CONTINUE", "weak": "STOP"}
    last = asha.on_trial_result(None, trials[2], {"training_iteration": 4, "dev/emp_f1": 10.0})  # type: ignore[arg-type]
    assert last == TrialScheduler.STOP  # at max_t the control ends like any trial
    # what ASHA compared, with the cut-off of the rung (the median of the reports there before: rf 2)
    import json

    decisions = [json.loads(line) for line in (tmp_path / "asha.jsonl").read_text().splitlines()]
    first_rung = [(d["trial_id"], d["cutoff"], d["decision"]) for d in decisions if d["rung"] == 1.0]
    assert first_rung == [("good", None, "continue"), ("better", 40.0, "continue"), ("control", 45.0, "continue"),
                          ("weak", 40.0, "stop")]  # fmt: skip
    from pipeline.evaluation.control import asha_table

    header, cells = asha_table(decisions, "max")
    assert header[4:6] == ["margin", "margin / SE"]
    assert cells[0][3] == "first at the rung" and cells[3] == [
        "weak",
        "1",
        "5.00",
        "40.00",
        "-35.00",
        "-17.5",
        "stop",
    ]
    assert cells[2][0] == "control (control)"


def test_pbt_never_exploits_the_control(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = SweepSettings(scheduler="pbt", quantile_fraction=0.5)
    pbt = make_scheduler(settings, OBJECTIVE, SPACE, max_t=4, seed=0)
    assert isinstance(pbt, FinalAwarePBT)
    seen: list[tuple[str, list[str]]] = []

    def record(self: Any, trial: Any, controller: Any, upper: list[Any], lower: list[Any]) -> None:
        seen.append((trial.trial_id, [t.trial_id for t in lower]))

    monkeypatch.setattr(PopulationBasedTraining, "_checkpoint_or_exploit", record)
    control, weak, top = _trial("control", control=True), _trial("weak"), _trial("top")
    for trial in (control, weak):
        pbt._checkpoint_or_exploit(trial, None, [top], [control, weak])
    assert seen == [("control", ["weak"]), ("weak", ["control", "weak"])]
    # an exploit that clones the control into another trial does not make that trial a control
    explore = pbt._custom_explore_fn
    assert explore({"ppo.kl_coef": 0.2, "reward.weights.ex": 1.0, CONTROL_KEY: True})[CONTROL_KEY] is False


def test_the_report_states_every_trial_against_the_control() -> None:
    rows = [
        {"trial_id": "t_00000", "status": "completed", "control": True, "ppo.kl_coef": 0.2,
         "eval/emp_f1": 40.0, "dev/emp_f1": 38.0, "eval/perplexity": 20.0},
        {"trial_id": "t_00001", "status": "completed", "control": False, "ppo.kl_coef": 0.05,
         "eval/emp_f1": 42.5, "dev/emp_f1": 39.0, "eval/perplexity": 21.0},
        {"trial_id": "t_00002", "status": "stopped", "control": False, "ppo.kl_coef": 0.3,
         "eval/emp_f1": math.nan, "dev/emp_f1": 30.0, "eval/perplexity": math.nan},
    ]  # fmt: skip
    out = with_control_deltas(rows)
    assert [r["vs_control/emp_f1"] for r in out[:2]] == [0.0, 2.5] and math.isnan(out[2]["vs_control/emp_f1"])
    assert (
        out[1]["vs_control/perplexity_pct"] == pytest.approx(5.0) and out[2]["vs_control/dev_emp_f1"] == -8.0
    )
    text = control_sentence(out, ["ppo.kl_coef"], out[1])
    assert text.startswith(
        "Control: t_00000 (the base config's own values: ppo.kl_coef=0.2), completed, Emp-F1 40.00"
    )
    assert "Best trial against it: Emp-F1 +2.50, dev Emp-F1 +1.00, perplexity +5.0 %" in text
    assert "no configuration beat it" in control_sentence(out, ["ppo.kl_coef"], out[0])
    plain = [{k: v for k, v in r.items() if k != "control"} for r in rows]
    assert with_control_deltas(plain) == plain and "No control trial" in control_sentence(plain, [], None)


def test_with_seeds_every_configuration_and_the_control_run_once_per_seed() -> None:
    settings = SweepSettings(num_samples=2, seeds=3)
    space = parse_search_space({"ppo.kl_coef": {"loguniform": [0.01, 0.1]}}, BASE)
    search = make_search(settings, OBJECTIVE, seed=0, control=space.values_of(BASE))
    search.add_configurations(
        [Experiment("seeds", _trainable, config=param_space(space, settings.seed_values(7)), num_samples=3)]
    )
    configs = []
    for _ in range(9):
        trial = search.next_trial()
        configs.append(trial.config)  # type: ignore[union-attr]
        search.on_trial_complete(trial.trial_id)  # type: ignore[union-attr]
    assert search.next_trial() is None
    by_config: dict[tuple[Any, bool], list[int]] = {}
    for c in configs:
        by_config.setdefault((c["ppo.kl_coef"], is_control(c)), []).append(c["run.seed"])
    assert len(by_config) == 3 and all(sorted(s) == [7, 8, 9] for s in by_config.values()), by_config
    assert (0.2, True) in by_config  # the control, once per seed too


def test_seeds_need_random_search_without_pbt_and_leave_run_seed_to_them() -> None:
    from jobs.stages.tune import SweepError

    space = parse_search_space({"ppo.kl_coef": {"uniform": [0.05, 0.5]}}, BASE)
    probes = [c for _, c in space.probe_configs(BASE)]
    SweepSettings(seeds=2).check(space, probes)
    with pytest.raises(SweepError, match=r"--seeds 2 with --search optuna"):
        SweepSettings(seeds=2, search="optuna").check(space, probes)
    pbt_base = BASE.with_overrides({"ppo.save_every": 1})
    with pytest.raises(SweepError, match=r"--seeds 2 with --search random --scheduler pbt"):
        SweepSettings(seeds=2, scheduler="pbt").check(space, [pbt_base])
    seeded = parse_search_space({"run.seed": {"choice": [1, 2]}}, BASE)
    with pytest.raises(SweepError, match=r"the space sweeps run.seed too"):
        SweepSettings(seeds=2).check(seeded, [c for _, c in seeded.probe_configs(BASE)])
    with pytest.raises(SweepError, match=r"'seeds': 0"):
        SweepSettings(seeds=0).check(space, probes)
    with pytest.raises(SweepError, match=r"--eval-examples 0 must be >= 1"):
        SweepSettings(eval_examples=0).check(space, probes)


def test_configurations_aggregate_their_seeds_against_the_control() -> None:
    def row(
        i: int, kl: float, seed: int, f1: float, control: bool = False, status: str = "completed"
    ) -> dict[str, Any]:
        return {"trial_id": f"t_{i:05d}", "status": status, "control": control, "ppo.kl_coef": kl,
                "run.seed": seed, "eval/emp_f1": f1}  # fmt: skip

    rows = [
        row(0, 0.2, 1, 40.0, control=True), row(1, 0.2, 2, 42.0, control=True),
        row(2, 0.2, 3, 41.0, control=True), row(3, 0.2, 4, 39.0, control=True),
        row(4, 0.05, 1, 44.0), row(5, 0.05, 2, 43.0), row(6, 0.05, 3, 47.0), row(7, 0.05, 4, 30.0),
        row(8, 0.3, 1, 38.0), row(9, 0.3, 2, math.nan, status="stopped"),
        row(10, 0.2, 1, 41.0),  # a sample that drew the control's values is another configuration
    ]  # fmt: skip
    assert has_seeds(rows, ["ppo.kl_coef", "run.seed"]) and not has_seeds(rows[9:], ["ppo.kl_coef"])
    control, better, worse, same = configuration_rows(rows, ["ppo.kl_coef", "run.seed"])
    assert (control["control"], control["seeds"], control["trials"]) == (True, 4, 4)
    # IQM of 4 scores: the middle two (floor(4/4) = 1 cut from each end)
    assert control["iqm"] == pytest.approx((40.0 + 41.0) / 2) and better["iqm"] == pytest.approx(
        (43.0 + 44.0) / 2
    )
    assert better["vs_control"] == pytest.approx(43.5 - 40.5)
    assert better["vs_control_low"] <= better["vs_control"] <= better["vs_control_high"]
    # P(a seed of 0.05 beats a seed of the control): pairs won out of 16 (30 loses to all 4; 43, 44, 47 win all)
    assert better["p_improvement"] == pytest.approx(12 / 16)
    assert (worse["seeds"], worse["trials"], worse["iqm"]) == (1, 2, 38.0)
    assert worse["p_improvement"] == pytest.approx(0.0) and worse["iqm_low"] == worse["iqm_high"] == 38.0
    assert (same["control"], same["seeds"]) == (False, 1)
    header, cells = seeds_table(rows, ["ppo.kl_coef", "run.seed"])
    assert header[:4] == ["configuration", "ppo.kl_coef", "seeds", "Emp-F1 IQM [95 % CI]"]
    assert cells[0][:3] == ["control", "0.2", "4 of 4"] and cells[1][0] == "t_00004 …"
    assert cells[1][4].startswith("+3.00 [") and cells[1][5].startswith("0.75 [")


def _comparison(trial_id: str, f1: tuple[float, float, float], ppl: tuple[float, float]) -> dict[str, Any]:
    """An evaluate-stage comparison against the control: Emp-F1 (difference, low, high), perplexity
    (control's, trial's)."""
    emp = {"difference": f1[0], "ci_low": f1[1], "ci_high": f1[2]}
    perplexity = {
        "metric_a": ppl[0],
        "metric_b": ppl[1],
        "difference": ppl[1] - ppl[0],
        "ci_low": 0.0,
        "ci_high": 0.0,
    }
    return {"baseline": "control", "policy": trial_id, "metrics": {"emp_f1": emp, "perplexity": perplexity}}


def test_the_rule_picks_the_highest_confirmed_gain_within_the_perplexity_budget() -> None:
    from jobs.stages.tune.confirm import decide

    comparisons = [
        _comparison("a", (1.5, 0.2, 2.8), (20.0, 20.6)),  # +3 % perplexity: passes
        _comparison("b", (3.0, 1.0, 5.0), (20.0, 22.0)),  # the biggest gain, but +10 % perplexity
        _comparison("c", (2.5, -0.3, 5.3), (20.0, 19.0)),  # its interval holds 0
        _comparison("d", (1.9, 0.1, 3.7), (20.0, 21.0)),  # +5 %: exactly the budget, passes; beats a
    ]
    rows, best = decide(comparisons, budget=5.0)
    assert [r["confirm/passes"] for r in rows] == [True, False, False, True] and best == "d"
    assert rows[1]["confirm/perplexity_pct"] == pytest.approx(10.0) and rows[2]["confirm/emp_f1_low"] == -0.3
    assert decide(comparisons, budget=12.0)[1] == "b"
    none, nobody = decide(comparisons[1:3], budget=5.0)
    assert nobody is None and not any(r["confirm/passes"] for r in none)  # best/ falls back to the control
    assert decide([], budget=5.0) == ([], None)


def test_the_confirmed_trials_are_the_top_by_the_objective_and_the_fronts() -> None:
    from jobs.stages.tune.confirm import candidates

    def row(i: int, dev: float, f1: float, kl: float, ppl: float, **extra: Any) -> dict[str, Any]:
        return {"trial_id": f"t_{i}", "status": "completed", "control": False, "dev/emp_f1": dev,
                "eval/emp_f1": f1, "rollout/kl_k3": kl, "eval/perplexity": ppl, **extra}  # fmt: skip

    rows = [
        row(0, 40.0, 40.0, 1.0, 20.0, control=True),  # never a candidate
        row(1, 45.0, 41.0, 3.0, 30.0),
        row(2, 44.0, 39.0, 2.0, 25.0),
        row(3, 30.0, 43.0, 0.5, 18.0),  # low on dev, but the fronts' best: confirmed too
        row(4, 46.0, 30.0, 5.0, 50.0, status="stopped"),
        row(5, 47.0, 42.0, 1.0, 20.0, feasible=False),
    ]
    picked = [[r["trial_id"] for r in g] for g in candidates(rows, OBJECTIVE, top=2)]
    assert picked == [["t_1"], ["t_2"], ["t_3"]], picked
    assert [g[0]["trial_id"] for g in candidates(rows, OBJECTIVE, top=1)] == ["t_1", "t_3"]


def test_a_configuration_is_confirmed_with_all_its_seeds_ranked_by_their_mean() -> None:
    from jobs.stages.tune.confirm import candidates, group_name

    def row(i: int, beta: float, seed: int, dev: float, **extra: Any) -> dict[str, Any]:
        return {"trial_id": f"t_{i}", "status": "completed", "control": False, "ppo.kl_coef": beta,
                "run.seed": seed, "dev/emp_f1": dev, "eval/emp_f1": dev, "rollout/kl_k3": 1.0,
                "eval/perplexity": 20.0, **extra}  # fmt: skip

    rows = [
        row(0, 0.2, 0, 40.0, control=True),
        row(1, 0.2, 1, 41.0, control=True),
        row(2, 0.05, 0, 50.0),  # one lucky seed: mean 44
        row(3, 0.05, 1, 38.0),
        row(4, 0.1, 0, 46.0),  # mean 45.5: ranked first
        row(5, 0.1, 1, 45.0),
        row(6, 0.3, 0, 47.0, status="stopped"),  # its only completed seed counts alone
        row(7, 0.3, 1, 43.0),
    ]
    keys = ["ppo.kl_coef", "run.seed"]
    groups = candidates(rows, OBJECTIVE, top=3, keys=keys)[:3]
    assert [[r["trial_id"] for r in g] for g in groups] == [["t_4", "t_5"], ["t_2", "t_3"], ["t_7"]]
    assert group_name(groups[0]) == "t_4+t_5" and group_name(groups[2]) == "t_7"
    # without keys every trial is its own configuration, as before
    assert [g[0]["trial_id"] for g in candidates(rows, OBJECTIVE, top=2)][:2] == ["t_2", "t_4"]


def test_the_report_states_the_confirmation_and_its_verdict() -> None:
    from jobs.stages.tune.confirm import decide, rule_text

    confirmed, best = decide(
        [
            _comparison("t_1", (1.9, 0.1, 3.7), (20.0, 21.0)),
            _comparison("t_2", (2.5, -0.3, 5.3), (20.0, 19.0)),
        ],
        5.0,
    )
    rows = [{"trial_id": "t_0", "ppo.kl_coef": 0.2}, {"trial_id": "t_1", "ppo.kl_coef": 0.05},
            {"trial_id": "t_2", "ppo.kl_coef": 0.1}]  # fmt: skip
    from pipeline.evaluation.control import confirmation_section

    c = {"split": "valid[confirmation 1000]", "n_examples": 1000, "control_id": "t_0", "best_id": best,
         "rule": rule_text(5.0), "n_resamples": 1000, "rows": confirmed}  # fmt: skip
    note, verdict, header, cells = confirmation_section(c, rows, ["ppo.kl_coef"])
    assert note.startswith("1000 examples of valid[confirmation 1000] the search never used")
    assert "at most 5 % above the control's" in note
    assert (
        verdict
        == "best/ = t_1 (ppo.kl_coef=0.05): Emp-F1 +1.90 [+0.10, +3.70] over the control at +5.0 % perplexity."
    )
    assert header[:4] == ["configuration", "ppo.kl_coef", "seeds", "Δ Emp-F1 [95 % CI]"]
    assert cells[0][0] == "t_1 (best)" and cells[0][-1] == "yes" and cells[1][-1] == "no"
    _, verdict, _, _ = confirmation_section(
        {**c, "best_id": "t_0", "rows": confirmed[1:]}, rows, ["ppo.kl_coef"]
    )
    assert verdict.startswith(
        "No configuration beat the control under the rule: best/ is the control t_0. Closest: t_2"
    )


def test_the_report_names_the_seeds_of_a_confirmed_configuration() -> None:
    from jobs.stages.tune.confirm import decide, rule_text
    from pipeline.evaluation.control import confirmation_section

    comparison = _comparison("t_1+t_2", (1.9, 0.1, 3.7), (20.0, 21.0))
    comparison["policy_members"] = ["t_1", "t_2"]
    confirmed, best = decide([comparison], 5.0)
    assert best == "t_1+t_2" and confirmed[0]["trials"] == ["t_1", "t_2"]
    rows = [{"trial_id": "t_0", "ppo.kl_coef": 0.2, "run.seed": 0}, {"trial_id": "t_3", "ppo.kl_coef": 0.2, "run.seed": 1},
            {"trial_id": "t_1", "ppo.kl_coef": 0.05, "run.seed": 0}, {"trial_id": "t_2", "ppo.kl_coef": 0.05, "run.seed": 1}]  # fmt: skip
    c = {"split": "valid[confirmation 1000]", "n_examples": 1000, "control_id": "t_0", "best_id": "t_1",
         "control_trials": ["t_0", "t_3"], "rule": rule_text(5.0), "n_resamples": 1000, "rows": confirmed}  # fmt: skip
    note, verdict, header, cells = confirmation_section(c, rows, ["ppo.kl_coef", "run.seed"])
    assert "against the control (2 seeds: trials t_0, t_3)" in note and "their mean on each resample" in note
    assert verdict.startswith("best/ = t_1 (ppo.kl_coef=0.05; its 2 seeds: trials t_1, t_2): Emp-F1 +1.90")
    assert header[:3] == ["configuration", "ppo.kl_coef", "seeds"]  # run.seed is what the seeds vary
    assert cells == [
        ["t_1+t_2 (best)", "0.05", "2", "+1.90 [+0.10, +3.70]", "n/a", "n/a", "n/a", "+5.0", "n/a", "yes"]
    ]


def test_the_confirmation_rows_are_held_out_of_the_dev_slice_and_the_final_evaluation() -> None:
    import numpy as np

    from actors.sweep.trial import dev_slice, partition
    from pipeline.evaluation.suite import LabeledSplit

    n = 50
    split = LabeledSplit(
        name="valid", contexts=tuple(f"c{i}" for i in range(n)), references=tuple(f"r{i}" for i in range(n)),
        gold_levels={"ER": np.arange(n) % 3, "IP": np.zeros(n, dtype=np.int64), "EX": np.ones(n, dtype=np.int64)},
    )  # fmt: skip
    search, held = partition(split, 1000, seed=3)  # at most half the split
    assert held is not None and (len(search), len(held)) == (25, 25) and held.name == "valid[confirmation 25]"
    assert set(search.contexts).isdisjoint(held.contexts) and set(search.contexts) | set(
        held.contexts
    ) == set(split.contexts)
    assert list(search.contexts) == sorted(search.contexts, key=lambda c: int(c[1:]))  # split order kept
    i = split.contexts.index(held.contexts[0])
    assert held.references[0] == f"r{i}" and held.gold_levels["ER"][0] == i % 3  # rows stay whole
    again = partition(split, 1000, seed=3)[1]
    assert (
        again is not None and again.contexts == held.contexts
    )  # the same rows every time (trials and driver)
    dev = dev_slice(search, 8, seed=3)
    assert set(dev.contexts) <= set(search.contexts)  # the dev slice and the final evaluation: search rows
    assert partition(split, 0, seed=3)[1] is None and partition(split, 0, seed=3)[0] is split
    assert len(partition(split, 10, seed=3)[1]) == 10  # type: ignore[arg-type]


def test_the_pilot_takes_the_smallest_slice_within_the_target_or_says_none_is() -> None:
    from jobs.stages.tune.pilot import choose
    from pipeline.evaluation.control import dev_pilot_sentence

    measured = {32: 4.0, 64: 2.8, 256: 1.4, 1024: 0.33}  # standard error of one report: ~1/sqrt(size)
    size, why = choose(measured, target=0.5)  # paired: sqrt(2) x 0.33 = 0.47
    assert size == 1024 and "(√2 × 0.33)" in why
    assert choose(measured, target=2.0)[0] == 256  # sqrt(2) x 1.4 = 1.98
    size, why = choose({32: 4.0, 64: 2.8}, target=0.5)
    assert (
        size == 64
        and "no slice up to 64 examples reaches" in why
        and "below about 7.9 Emp-F1 are noise" in why
    )
    pilot = {"policy": "runs/r/sft/policy", "examples": 64, "emp_f1": 41.234, "std_error": {"32": 4.0, "64": 2.8},
             "chosen": size, "reason": why}  # fmt: skip
    text = dev_pilot_sentence(pilot)
    assert text.startswith("Dev slice: 64 examples, no slice up to 64") and "4 at 32, 2.8 at 64" in text
    assert dev_pilot_sentence(None, 8) == "Dev slice: 8 examples (given; no pilot measured its noise)."


def test_a_sweep_saved_before_the_control_resumes_without_one() -> None:
    old = SweepSettings.from_json({"num_samples": 2, "dev_examples": 32})  # its settings.json
    assert (old.control, old.confirm_examples, old.held_out, old.dev_examples) == (False, 0, 0, 32)
    assert SweepSettings.from_json(SweepSettings().to_json()) == SweepSettings()  # a new sweep keeps its own


def test_the_seeds_note_warns_when_a_configuration_has_few_seeds() -> None:
    """Fewer than FEW_SEEDS scored seeds for some configuration: the note says the intervals are coarse;
    a stopped seed without a score does not count; FEW_SEEDS everywhere: the plain note."""

    def row(i: int, kl: float, seed: int, f1: float, **extra: Any) -> dict[str, Any]:
        return {"trial_id": f"t_{i:05d}", "status": "completed", "control": False, "ppo.kl_coef": kl,
                "run.seed": seed, "eval/emp_f1": f1, **extra}  # fmt: skip

    keys = ["ppo.kl_coef", "run.seed"]
    full = [row(i, kl, s, 40.0 + i) for i, (kl, s) in enumerate((k, s) for k in (0.1, 0.2) for s in range(5))]
    assert seeds_note(full, keys) == SEEDS_NOTE
    short = [*full[:9], row(9, 0.2, 4, math.nan, status="stopped")]
    note = seeds_note(short, keys)
    assert note.startswith(SEEDS_NOTE) and "With 4 seeds for some configuration" in note
    two = [row(0, 0.1, 1, 40.0), row(1, 0.1, 2, 41.0), row(2, 0.2, 1, 42.0), row(3, 0.2, 2, 43.0)]
    assert "With 2 seeds" in seeds_note(two, keys) and f"{FEW_SEEDS} or more seeds" in seeds_note(two, keys)


def test_a_failed_trial_is_said_on_the_console_with_its_count_and_what_tune_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Tune's recover and error callbacks each log one warning naming the trial, its failure count and
    ``--max-failures``; the callback survives pickling (Tune saves it with the experiment, for a resume)."""
    log = pickle.loads(pickle.dumps(FailureLog(max_failures=2)))
    trial = SimpleNamespace(trial_id="abc12_00001", num_failures=1)
    with caplog.at_level("WARNING", logger="jobs.stages.tune.stage"):
        log.on_trial_recover(iteration=7, trials=[trial], trial=trial)
        trial.num_failures = 3
        log.on_trial_error(iteration=9, trials=[trial], trial=trial)
    first, second = (r.getMessage() for r in caplog.records)
    assert first == (
        "sweep: trial abc12_00001 failed (failure 1 of at most 2); restarting it from its last checkpoint"
    )
    assert second.startswith("sweep: trial abc12_00001 failed (failure 3; --max-failures 2): given up")
