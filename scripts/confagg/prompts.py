"""Prompts for sampling candidate solutions, and the chat template applied to any prompt (the
aggregator's own prompt is built in ``confagg.aggregator_prompt``)."""

from __future__ import annotations

from collections.abc import Mapping


def solver_messages(problem: str, prompt: Mapping) -> list[dict[str, str]]:
    """Chat messages asking for one solution of ``problem``.

    ``prompt`` is the config's ``prompt`` section: ``instruction`` (appended to the problem),
    optional ``system`` message and optional worked ``example`` ({problem, solution}) shown as
    an earlier turn; small models need the example to use ``\\boxed{}``.
    """

    def ask(text: str) -> dict[str, str]:
        return {"role": "user", "content": f"{text}\n\n{prompt['instruction']}".strip()}

    messages = []
    if prompt.get("system"):
        messages.append({"role": "system", "content": prompt["system"]})
    if prompt.get("example"):
        messages.append(ask(prompt["example"]["problem"]))
        messages.append({"role": "assistant", "content": prompt["example"]["solution"]})
    messages.append(ask(problem))
    return messages


def render(tokenizer, messages: list[dict[str, str]], chat_template_kwargs: Mapping) -> str:
    """The model's chat template applied, ready for generation."""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **dict(chat_template_kwargs)
    )
