"""PPO role classes built in-process (no Ray cluster) and the atomic checkpoint store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import IDENTIFIERS as IDENT
from tiny import save_frozen_models

from actors.ppo.checkpoints import CheckpointStore
from actors.ppo.reference import ReferenceWorker
from actors.ppo.reward import RewardWorker
from actors.ppo.rollout import RolloutWorker
from pipeline.config import MECHANISMS, RewardConfig, RolloutConfig, load_config
from pipeline.generation import encode_prompts
from pipeline.models import train_tokenizer
from pipeline.ppo.iteration import response_forward

pytestmark = pytest.mark.unit

TEXTS = [
    "I just got a new puppy and I am so happy about it",
    "My car broke down on the way to work this morning",
    "That sounds awful, are you okay?",
    "Congratulations! What kind of puppy is it?",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_frozen_models(tmp_path_factory.mktemp("roles"), train_tokenizer(TEXTS * 3, 400))


def test_rollout_worker_adopts_published_weights_and_version(folders: tuple[Path, Path]) -> None:
    policy_dir, _ = folders
    worker = RolloutWorker(policy_dir, RolloutConfig(min_new_tokens=2, max_new_tokens=5))
    prompts = encode_prompts(
        worker.tokenizer, TEXTS[:2], max_source_len=16, index=[0, 1],
        gold_levels={m: np.zeros(2, dtype=np.int64) for m in MECHANISMS}, seed=3,
    )  # fmt: skip
    before = worker.generate(prompts)
    assert before.version == 0 and len(before) == 2
    state = {
        k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
        for k, v in worker.model.state_dict().items()
    }
    assert worker.set_weights(state, 4) == 4
    after = worker.generate(prompts)
    assert after.version == 4
    assert not torch.equal(before.logprobs, after.logprobs)

    reference = ReferenceWorker(policy_dir)
    ref = reference.logprobs(before.prompts.prompt_ids, before.prompts.prompt_mask, before.response_ids)
    m = before.response_mask.bool()
    torch.testing.assert_close(ref[m], before.logprobs[m], atol=1e-5, rtol=1e-5)  # reference = start policy
    with torch.no_grad():
        direct, _, _ = response_forward(
            reference.model, before.prompts.prompt_ids, before.prompts.prompt_mask, before.response_ids,
            start_id=reference.start_id,
        )  # fmt: skip
    assert torch.equal(ref, direct)


def test_reward_worker_score_is_the_product_of_gold_level_probabilities(folders: tuple[Path, Path]) -> None:
    _, identifiers_dir = folders
    gold = {"ER": np.array([0, 2, 1]), "IP": np.array([1, 1, 0]), "EX": np.array([2, 0, 0])}
    paper = RewardWorker(identifiers_dir, IDENT, RewardConfig())
    out = paper.score(TEXTS[:3], TEXTS[1:4], gold)
    product = out.gold_prob["ER"] * out.gold_prob["IP"] * out.gold_prob["EX"]
    torch.testing.assert_close(out.scores, product, rtol=1e-5, atol=1e-7)
    assert bool(((out.scores > 0) & (out.scores <= 1)).all())
    for m in MECHANISMS:
        assert torch.equal(out.hit[m], (out.levels[m] == torch.from_numpy(gold[m])).float())
    # a single named weight picks one mechanism
    for m in MECHANISMS:
        only = load_config(None, [f"reward.weights.{w.lower()}=0" for w in MECHANISMS if w != m]).reward
        one = RewardWorker(identifiers_dir, IDENT, only).score(TEXTS[:3], TEXTS[1:4], gold)
        torch.testing.assert_close(one.scores, out.gold_prob[m], rtol=1e-5, atol=1e-7)


def test_frozen_models_in_bf16_return_float32_close_to_fp32(folders: tuple[Path, Path]) -> None:
    """``resources.frozen_precision=bf16`` (the CUDA default; bf16 runs on the CPU too): bf16 weights,
    float32 log-probabilities and scores within bf16 rounding of the fp32 ones."""
    policy_dir, identifiers_dir = folders
    tokenizer = RolloutWorker(policy_dir, RolloutConfig()).tokenizer
    prompts = encode_prompts(
        tokenizer, TEXTS[:3], max_source_len=16, index=[0, 1, 2],
        gold_levels={m: np.zeros(3, dtype=np.int64) for m in MECHANISMS}, seed=3,
    )  # fmt: skip
    responses = prompts.prompt_ids[:, :6]
    fp32 = ReferenceWorker(policy_dir).logprobs(prompts.prompt_ids, prompts.prompt_mask, responses)
    bf16_ref = ReferenceWorker(policy_dir, precision="bf16")
    assert {p.dtype for p in bf16_ref.model.parameters()} == {torch.bfloat16}
    bf16 = bf16_ref.logprobs(prompts.prompt_ids, prompts.prompt_mask, responses)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, atol=0.1, rtol=0.05)

    gold = {"ER": np.array([0, 2, 1]), "IP": np.array([1, 1, 0]), "EX": np.array([2, 0, 0])}
    exact = RewardWorker(identifiers_dir, IDENT, RewardConfig()).score(TEXTS[:3], TEXTS[1:4], gold)
    half = RewardWorker(identifiers_dir, IDENT, RewardConfig(), precision="bf16")
    assert {p.dtype for m in half.scorer.identifiers.values() for p in m.parameters()} == {torch.bfloat16}
    out = half.score(TEXTS[:3], TEXTS[1:4], gold)
    assert out.scores.dtype == torch.float32
    torch.testing.assert_close(out.scores, exact.scores, atol=0.02, rtol=0.05)
    with pytest.raises(ValueError, match="T5 overflows in fp16"):
        ReferenceWorker(policy_dir, precision="fp16")


def test_checkpoint_store_never_loses_the_last_complete_checkpoint(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ckpt", keep=2)
    assert store.latest() is None
    for it in (1, 2, 3):
        with store.writing(it) as folder:
            (folder / "state.txt").write_text(str(it))
    assert [p.name for p in store.complete()] == ["iter_000002", "iter_000003"]  # keep=2 pruned iter 1
    with pytest.raises(KeyboardInterrupt), store.writing(4) as folder:
        (folder / "state.txt").write_text("half")
        raise KeyboardInterrupt  # a crash mid-save
    latest = store.latest()
    assert latest is not None and latest.name == "iter_000003"
    assert (latest / "state.txt").read_text() == "3"
    (store.root / "latest").write_text("iter_000009\n")  # a pointer to something incomplete is ignored
    assert store.latest() == latest
    with store.writing(3) as folder:  # re-saving an iteration after a recovery replaces it
        (folder / "state.txt").write_text("3b")
    assert (store.folder(3) / "state.txt").read_text() == "3b"
    assert not list(store.root.glob("*.partial")) and not list(store.root.glob("*.stale"))
