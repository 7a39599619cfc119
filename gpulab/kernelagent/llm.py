"""A proposer that asks a large language model, over any OpenAI-compatible chat endpoint.

CudaForge's Coder gets the reference, the last verdict, and hardware feedback (Nsight
Compute metrics) and writes the next kernel. :func:`build_messages` writes that prompt:
the task and its torch reference, the rules of a candidate, the last candidate and its
verdict, and the measured time, achieved bandwidth and FLOP rate against the roofline.

Nothing here is called in tests or notebooks unless you configure it: give a base URL
(``https://api.openai.com/v1``, a local vLLM or llama.cpp server, ...), a model name and
the name of the environment variable holding your key.

    proposer = ChatProposer(base_url="http://localhost:8000/v1", model="qwen2.5-coder")
    run_search("chain4", proposer, rounds=3)

``transport`` is the function that does the HTTP call; tests pass a fake one.
"""
from __future__ import annotations

import json
import os
import re
import urllib.request

from .tasks import Task, get_task

__all__ = ["ChatProposer", "build_messages", "extract_code", "SYSTEM_PROMPT"]

SYSTEM_PROMPT = """You write GPU kernels in Python with numba.cuda for the gpulab course.
Rules for a candidate:
- Reply with one ```python code block: a module that defines solve(*inputs, out).
- solve must write the answer into `out` (already allocated); do not return it.
- Compute with kernels decorated with @gpulab.kernel and launched as kernel[grid, block](...).
  torch may only allocate, reshape and copy: calling torch to compute is rejected.
- Handle every shape: the verifier tries several shapes and seeds, not just one.
- Do not modify inputs, do not use extra CUDA streams, do not cache answers between calls.
- Use float32 arithmetic (numba.float32 constants), module-level constants for shared
  array sizes, cuda.syncthreads() between shared-memory phases."""


def _verdict_text(verdict) -> str:
    if verdict is None:
        return "This is the first attempt."
    lines = [f"Status: {verdict.status}."]
    if verdict.flags:
        lines.append("Loopholes flagged: " + "; ".join(f"{k}: {v}" for k, v in verdict.flags.items()))
    if verdict.message:
        lines.append("Details: " + verdict.message[:800])
    return "\n".join(lines)


def _feedback_text(verdict) -> str:
    if verdict is None or not verdict.feedback:
        return "No timing yet."
    f = verdict.feedback
    t = verdict.timing
    return (f"Candidate {t['candidate']['median_ms']:.4g} ms (IQR {t['candidate']['q1_ms']:.4g}-"
            f"{t['candidate']['q3_ms']:.4g}) vs torch eager {t['reference']['median_ms']:.4g} ms at shape "
            f"{tuple(t['shape'])} ({t['candidate']['clock']}): speedup {verdict.speedup:.3g}x.\n"
            f"Achieved {f['achieved_gbps']:.1f} GB/s of {f['peak_gbps']:.0f} GB/s peak copy bandwidth, "
            f"{f['achieved_gflops']:.1f} GFLOP/s of {f['peak_gflops']:.0f} GFLOP/s FP32; roofline floor "
            f"{f['roofline_floor_ms']:.4g} ms = {100 * f['roofline_fraction']:.0f}% of the roofline reached.")


def build_messages(task: Task, last_source: str | None = None, last_verdict=None) -> list[dict]:
    """The chat messages for one proposal (system rules + task, last try, feedback)."""
    task = get_task(task)
    shapes = ", ".join(str(tuple(s)) for s in task.shapes)
    user = [
        f"Task {task.name} (level {task.level}): {task.description}.",
        f"Inputs: {', '.join(task.input_names)}, dtype {str(task.dtype).removeprefix('torch.')}; "
        f"shapes tested include {shapes}; timed at {tuple(task.timing_shape)}.",
        "Reference (the specification):", "```python", task.reference_source().strip(), "```",
    ]
    if last_source:
        user += ["Your last candidate:", "```python", last_source.strip(), "```"]
    user += ["Verifier verdict:", _verdict_text(last_verdict),
             "Hardware feedback:", _feedback_text(last_verdict),
             "Write a faster correct candidate." if last_verdict is not None and last_verdict.passed
             else "Write a correct candidate."]
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n".join(user)}]


def extract_code(reply_text: str) -> str:
    """The first ```python block of a reply (or the whole reply if it has none)."""
    m = re.search(r"```(?:python|py)?\s*\n(.*?)```", reply_text, re.S)
    return (m.group(1) if m else reply_text).strip() + "\n"


def _urllib_transport(url: str, headers: dict, payload: dict, timeout_s: float) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return json.loads(resp.read())


class ChatProposer:
    """Proposes candidates by asking a chat model; one proposal per round.

    ``base_url``: the endpoint's root (``.../v1``); ``model``: the model name;
    ``api_key_env``: the environment variable with the key (may be unset for local
    servers); ``transport(url, headers, payload, timeout_s) -> dict`` does the call.
    """
    name = "LLM (OpenAI-compatible chat)"

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 temperature: float = 0.2, max_tokens: int = 2048, timeout_s: float = 120.0,
                 transport=None):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not model:
            raise ValueError("give the model name the endpoint serves")
        self.base_url, self.model, self.api_key_env = base_url.rstrip("/"), model, api_key_env
        self.temperature, self.max_tokens, self.timeout_s = temperature, max_tokens, timeout_s
        self.transport = transport or _urllib_transport

    def request(self, messages: list[dict]) -> tuple[str, dict, dict]:
        """(url, headers, payload) of one chat-completions call."""
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        payload = {"model": self.model, "messages": messages, "temperature": self.temperature,
                   "max_tokens": self.max_tokens}
        return f"{self.base_url}/chat/completions", headers, payload

    def propose(self, task, history) -> list[tuple[None, str]]:
        last = history[-1] if history else None
        last_source = getattr(last, "source", None)
        messages = build_messages(task, last_source, last.verdict if last else None)
        url, headers, payload = self.request(messages)
        reply = self.transport(url, headers, payload, self.timeout_s)
        try:
            text = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise RuntimeError(f"the endpoint's reply has no choices[0].message.content: {str(reply)[:300]}") from None
        return [(None, extract_code(text))]
