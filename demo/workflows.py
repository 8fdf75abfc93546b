"""The demo's agent workflow: five spans per run, each start and end a span activity.

A run traces like an agent: the root span, an LLM call, a tool call with a knowledge-base
lookup inside it (both open at once), and a second LLM call. Every ``start_span`` and
``end_span`` is an activity that Temporal may route to any worker of the task queue.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from sgp_tracing.temporal import end_span, start_span

__all__ = ["SPANS_PER_RUN", "AgentRun"]

#: Spans one run of ``AgentRun`` writes.
SPANS_PER_RUN = 5


@workflow.defn(name="demo-agent-run")
class AgentRun:
    """One agent run; its argument is ``{"run": int, "activity_timeout": seconds}``."""

    @workflow.run
    async def run(self, args: dict[str, Any]) -> dict[str, Any]:
        run = int(args["run"])
        timeout = timedelta(seconds=float(args.get("activity_timeout", 180)))
        question = f"question #{run}: what is {run % 97 + 2} squared?"
        root = await start_span(
            "agent-run",
            type="AGENT_WORKFLOW",
            input={"question": question},
            start_to_close_timeout=timeout,
        )
        llm = await start_span(
            "llm", parent=root, type="COMPLETION", input={"prompt": question},
            start_to_close_timeout=timeout,
        )  # fmt: skip
        await end_span(llm, output={"text": "call the calculator"}, start_to_close_timeout=timeout)
        tool = await start_span(
            "tool", parent=root, type="CODE_EXECUTION", input={"expression": f"{run}**2"},
            start_to_close_timeout=timeout,
        )  # fmt: skip
        lookup = await start_span(
            "kb-lookup", parent=tool, type="KB_RETRIEVAL", input={"query": "squares"},
            start_to_close_timeout=timeout,
        )  # fmt: skip
        # The lookup ends while its parent is open, and the parent ends on whichever worker.
        failed = run % 10 == 3
        await asyncio.gather(
            end_span(lookup, output={"chunks": ["a", "b"]}, start_to_close_timeout=timeout),
            end_span(
                tool,
                output=None if failed else {"result": run * run},
                error={"type": "ToolError", "message": "timeout"} if failed else None,
                start_to_close_timeout=timeout,
            ),
        )
        answer = f"{run * run}"
        final = await start_span(
            "llm", parent=root, type="COMPLETION", input={"prompt": "summarize"},
            start_to_close_timeout=timeout,
        )  # fmt: skip
        await end_span(final, output={"text": answer}, start_to_close_timeout=timeout)
        await end_span(root, output={"answer": answer}, start_to_close_timeout=timeout)
        return {
            "trace_id": root["trace_id"],
            "span_ids": [root["id"], llm["id"], tool["id"], lookup["id"], final["id"]],
        }
