"""Inputs shared by unit and GPU tests: short dialogue texts, the tiny policy and identifier shapes (built
through the production builders), the frozen models' folders, and a weight broadcast between threads."""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from pipeline.config import MECHANISMS, IdentifiersConfig, ModelConfig
from pipeline.models import build_identifier, build_policy, save_identifier, save_policy

DIALOGUE = [
    "I am so sorry to hear that, it must have been really hard for you.",
    "That's great! I'm so happy for you and your family.",
    "My dog died last week and I can't stop crying about it.",
    "What happened? Did you talk to anyone about how you feel?",
    "I feel lonely since I moved to a new city for work.",
    "Have you tried joining a club or a gym to meet new people?",
    "I got the job I wanted after three interviews!",
    "Congratulations, you must be very proud of yourself.",
    "My best friend forgot my birthday this year.",
    "That sounds disappointing. Did you tell her how it made you feel?",
    "I was terrified when the storm knocked out the power.",
    "Storms can be scary, especially at night. Are you safe now?",
    "I finally finished painting the house yesterday.",
    "Wow, that is a lot of work. How long did it take you?",
    "I can't believe my brother lied to me again.",
    "I understand why you would be upset about that.",
    "We are going on vacation to the beach next month.",
    "That sounds like fun! Where are you going to stay?",
    "I failed my driving test for the second time.",
    "Don't give up, many people need a few tries before they pass.",
    "My grandmother is in the hospital and I am worried.",
    "I hope she gets better soon. Is she in good hands?",
    "Someone stole my bike from in front of the library.",
    "That is awful. Did you report it to the police?",
    "I'm nervous about my exam tomorrow morning.",
    "You will do fine, you have studied hard for it.",
    "My neighbor keeps playing loud music late at night.",
    "That would annoy me too. Have you asked him to turn it down?",
    "I found twenty dollars on the sidewalk today.",
    "Lucky you! What are you going to spend it on?",
]
"""Speaker and listener turns, alternating."""

SHORT_DIALOGUE = [
    "I lost my job today and I do not know what to do.",
    "I am so sorry, that must be really hard. How are you holding up?",
    "We finally adopted a puppy!",
    "That is wonderful, what breed is she?",
]

POLICY = ModelConfig(
    vocab_size=400, d_model=32, d_ff=64, d_kv=8, num_layers=1, num_decoder_layers=1, num_heads=2
)
IDENTIFIERS = IdentifiersConfig(d_model=32, d_ff=64, num_layers=1, num_heads=2, vocab_size=400)


def save_frozen_models(root: Path, tokenizer: PreTrainedTokenizerBase) -> tuple[Path, Path]:
    """A random :data:`POLICY` (seed 0) in ``root/policy`` and :data:`IDENTIFIERS` (seed = mechanism index)
    in ``root/identifiers/<mechanism>``, all with ``tokenizer``: the folders of the frozen roles."""
    torch.manual_seed(0)
    save_policy(build_policy(POLICY, tokenizer), tokenizer, root / "policy")
    for i, m in enumerate(MECHANISMS):
        torch.manual_seed(i)
        save_identifier(build_identifier(IDENTIFIERS, tokenizer), tokenizer, root / "identifiers" / m)
    return root / "policy", root / "identifiers"


def broadcast_in_threads(
    sender: torch.nn.Module, receiver: torch.nn.Module, *, bucket_bytes: int
) -> dict[int, int]:
    """Rank 0 broadcasts ``sender``'s weights into ``receiver`` over gloo, each member a thread of this
    process; the bytes each rank moved. Raises the first member's error."""
    # imported here: the weight-sync module brings Ray, which the tests that only need the data go without
    from actors.ppo.weight_sync import WeightGroup, host_store, sync_tensors

    store, port = host_store("127.0.0.1", 2, timeout_s=60)
    groups: dict[int, WeightGroup] = {}
    sent: dict[int, int] = {}
    errors: list[BaseException] = []

    def member(rank: int) -> None:
        try:
            groups[rank] = WeightGroup.join(
                host="127.0.0.1", port=port, rank=rank, world_size=2, backend="gloo", own_host="127.0.0.1",
                store=store if rank == 0 else None, timeout_s=60,
            )  # fmt: skip
            model = sender if rank == 0 else receiver
            sent[rank] = groups[rank].broadcast(sync_tensors(model), bucket_bytes=bucket_bytes)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=member, args=(rank,)) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    try:
        assert not errors, errors
    finally:
        for group in groups.values():
            group.close()
    return sent
