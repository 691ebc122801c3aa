"""The chat completion stream: server-sent events of every choice token by token, each choice's
last chunk with its finish reason and empathy levels, then the usage (if asked) and ``[DONE]``.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from pipeline.generation import SamplingSettings
from pipeline.serving import LevelsOut
from pipeline.serving.chat import chunk, sse

logger = logging.getLogger(__name__)


class ChatModels(Protocol):
    """What the stream calls: the policy's events for one request (see
    :meth:`~actors.serving.deployments.PolicyDeployment.stream`) and the identifiers' scores."""

    def stream(self, context: str, settings: SamplingSettings) -> AsyncIterator[dict[str, Any]]: ...

    async def score(self, context: str, response: str) -> dict[str, list[float]]: ...


async def chat_stream(
    models: ChatModels,
    context: str,
    settings: list[SamplingSettings],
    head: dict[str, Any],
    *,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """Server-sent events of ``len(settings)`` choices streamed token by token, each choice's last
    chunk with its ``finish_reason`` and ``empathy``, then the usage (if asked) and ``[DONE]``."""
    queue: asyncio.Queue[tuple[int, dict[str, Any] | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, s: SamplingSettings) -> None:
        try:
            async for event in models.stream(context, s):
                await queue.put((i, event))
        except Exception as exc:
            await queue.put((i, exc))
        await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(settings)]
    prompt_tokens = completion_tokens = 0
    try:
        for i in range(len(settings)):
            yield sse(chunk(head, i, {"role": "assistant", "content": ""}))
        open_streams = len(settings)
        while open_streams:
            i, event = await queue.get()
            if event is None:
                open_streams -= 1
                continue
            if isinstance(event, BaseException):
                logger.error("stream of choice %d failed: %s", i, event)
                yield sse({"error": {"message": f"generation failed: {type(event).__name__}",
                                     "type": "server_error", "param": None, "code": None}})  # fmt: skip
                return
            if event["delta"]:
                yield sse(chunk(head, i, {"content": event["delta"]}))
            if "finish_reason" in event:
                probs = await models.score(context, event["text"])
                levels = LevelsOut.from_probs(probs).model_dump()
                yield sse(chunk(head, i, {}, event["finish_reason"], empathy=levels))
                prompt_tokens = event["prompt_tokens"]
                completion_tokens += event["completion_tokens"]
        if include_usage:
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                     "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip
            yield sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        yield sse("[DONE]")
    finally:
        for task in tasks:
            task.cancel()
