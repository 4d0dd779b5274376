"""Check stage (rule ``check_problems``): every problem's prompt within the token budgets, before
any GPU job; a problem too long is named with its source file, line and id. It also checks the
end-of-thinking marker (``grading.think_end``) against each model's chat template
(:func:`check_thinking`): a role in thinking mode whose template never holds the marker stops
the run; a template that thinks without an ``enable_thinking`` switch while
``grading.require_think_end`` is null gets a warning (in the log and the record).

    python -m confagg.check --problems FILE --generator DIR --aggregator DIR --settings JSON OUT
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from confagg.files import write_json
from confagg.problems import ProblemFileError, download_path, load_file, read_problems
from confagg.settings import from_mapping, load


@dataclass(frozen=True)
class Solver:
    prompt: dict  # the config's prompt section
    chat_template_kwargs: dict
    max_model_len: int | None  # generator.engine.max_model_len (None: the model's context)
    max_tokens: int  # sampling.max_tokens
    require_think_end: bool  # grading.require_think_end resolved for the generator


@dataclass(frozen=True)
class Aggregator:
    prompt: dict  # aggregator.prompt, confidences shown (the longer prompt)
    chat_template_kwargs: dict
    set_size: int  # candidates per prompt
    max_model_len: int | None  # the engine at evaluation (None: training, no engine budget)
    max_tokens: int | None  # the aggregator's answer at evaluation (None: training)
    require_think_end: bool  # grading.require_think_end resolved for the aggregator


@dataclass(frozen=True)
class Settings:
    """What the rule check_problems passes (``confagg.settings.for_rule``)."""

    source: dict  # the data set's configured source (to name its lines)
    fields: dict
    solver: Solver
    aggregator: Aggregator
    think_end: str  # grading.think_end
    think_end_auto: bool  # grading.require_think_end is null: enable_thinking decides


class ThinkingError(ValueError):
    """A role in thinking mode whose chat template never holds the end-of-thinking marker."""


# config.json keys vLLM 0.32 reads a model's context length from: the smallest present, except
# that model_max_length (Command-R) wins when set
_MAX_LEN_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "max_target_positions",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)


def model_max_len(model_dir: str | Path) -> int | None:
    """The context length vLLM gives a model folder when ``max_model_len`` is not set; None
    when its config.json does not say plainly (rope scaling: then vLLM decides)."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    cfg = cfg.get("text_config") or cfg
    for key in ("rope_scaling", "rope_parameters"):
        rope = cfg.get(key) or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            return None
    if isinstance(cfg.get("model_max_length"), int):
        return cfg["model_max_length"]
    values = [cfg[k] for k in _MAX_LEN_KEYS if isinstance(cfg.get(k), int) and cfg[k] > 0]
    return min(values) if values else None


def source_locations(source: Mapping, fields: Mapping | None, out: Path):
    """``locate(index, problem id)``: where a normalised problem sits in the configured source
    (``file.jsonl:12``, ``file.parquet row 3``, ``dataset[split] row 3``), so that a message
    sends the user to the right line; None when that cannot be told cheaply (generated
    problems, a source changed since)."""
    if "path" in source or "url" in source:
        path = (
            Path(source["path"])
            if "path" in source
            else download_path(source["url"], out.with_name(out.stem + ".download"))
        )
        locations: list[str] = []
        try:
            problems = load_file(path, fields, locations)
        except ProblemFileError:
            return lambda index, pid: None
        by_id = {p["id"]: where for p, where in zip(problems, locations, strict=True)}
        return lambda index, pid: by_id.get(pid)
    if "hub" in source:  # the normalised file keeps the hub's rows in order (a limit cuts the end)
        origin = f"{source['hub']}[{source.get('split', 'test')}]"
        return lambda index, pid: f"{origin} row {index}"
    return lambda index, pid: None


def template_source(tokenizer) -> str:
    """The text of a tokenizer's chat template(s) ("" when it has none)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    return "\n".join(template.values()) if isinstance(template, dict) else str(template)


def check_thinking(
    tokenizer,
    role: str,
    chat_template_kwargs: Mapping,
    require_think_end: bool,
    think_end: str,
    auto: bool,
) -> list[str]:
    """The end-of-thinking marker against ``role``'s chat template (``role``: "generator" or
    "aggregator", as the config names it). In thinking mode (``enable_thinking`` true or
    ``require_think_end``), the marker must occur in the template's text or in a prompt it
    renders: else every answer would be read from the wrong part of the text (or none at all),
    and :class:`ThinkingError` names the keys to set. Returns warnings: a template that holds
    the marker (it thinks) but has no ``enable_thinking`` switch, with ``require_think_end``
    null (``auto``), leaves ``require_think_end`` off, so a boxed answer written inside the
    reasoning counts (e.g. DeepSeek-R1 distills)."""
    from confagg.prompts import render

    source = template_source(tokenizer)
    rendered = render(
        tokenizer, [{"role": "user", "content": "What is 1 + 1?"}], chat_template_kwargs
    )
    present = think_end in source or think_end in rendered
    enabled = bool(chat_template_kwargs.get("enable_thinking", False))
    if (enabled or require_think_end) and not present:
        why = (
            f"{role}.chat_template_kwargs.enable_thinking is true"
            if enabled
            else f"grading.require_think_end is on for the {role}"
        )
        raise ThinkingError(
            f"{role}: grading.think_end {think_end!r} occurs neither in the model's chat "
            f"template nor in a prompt it renders, yet {why}: its answers would be read from the "
            f"wrong part of each text (or, with require_think_end, never). Set grading.think_end "
            f"to the model's end-of-thinking marker, or turn thinking mode off "
            f"({role}.chat_template_kwargs.enable_thinking: false, grading.require_think_end: "
            f"false)."
        )
    if auto and present and "enable_thinking" not in source:
        return [
            f"{role}: the chat template holds {think_end!r} (the model thinks) but has no "
            f"enable_thinking switch, so grading.require_think_end: null is off for it: a "
            f"\\boxed{{}} answer written inside the reasoning (before {think_end!r}) counts. "
            f"For a model that always thinks (e.g. a DeepSeek-R1 distill) set "
            f"grading.require_think_end: true."
        ]
    return []


def _budget(context: int | None, reserved: int | None, context_key: str, reserved_key: str):
    """(tokens a prompt may have, why) given a context length and the tokens kept free."""
    if context is None:
        return None, "no context length known"
    return context - (reserved or 0), f"{context_key} {context} - {reserved_key} {reserved}"


def check_prompts(
    problems_path: str | Path,
    settings: Settings | Mapping,
    generator: str | Path,
    aggregator: str | Path,
    log=print,
) -> dict:
    """Every problem's prompt against the token budgets, before any GPU job.

    Solver: the rendered prompt must leave ``sampling.max_tokens`` free in the engine's
    ``max_model_len`` (else vLLM fails the whole shard). Aggregator: its prompt without the
    candidate texts (problem, ``set_size`` headers with scores, note, instruction, chat template:
    what ``aggregator_prompt.render_prompt`` never cuts) must fit ``max_prompt_tokens`` (or,
    when that is null, the context left after the aggregator's ``max_tokens``). Raises
    ProblemFileError naming the file, line and id of every problem over a budget; returns the
    longest prompts and the budgets (the rule writes them as a record).
    """
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from confagg.aggregator_prompt import count_tokens, render_prompt
    from confagg.confidence import METRICS
    from confagg.prompts import render, solver_messages

    problems_path = Path(problems_path)
    problems = read_problems(problems_path)
    if isinstance(settings, Mapping):
        settings = from_mapping(Settings, settings)
    locate = source_locations(settings.source, settings.fields, problems_path)
    solver, agg = settings.solver, settings.aggregator

    hf_logging.set_verbosity_error()  # not "longer than the model's maximum": we say that
    tok = AutoTokenizer.from_pretrained(str(generator))
    same = Path(aggregator).resolve() == Path(generator).resolve()
    agg_tok = tok if same else AutoTokenizer.from_pretrained(str(aggregator))
    solver_budget, solver_why = _budget(
        solver.max_model_len or model_max_len(generator),
        solver.max_tokens,
        "generator.engine.max_model_len" if solver.max_model_len else "the model's context",
        "sampling.max_tokens",
    )
    if agg.prompt.get("max_prompt_tokens") is not None:
        agg_budget = agg.prompt["max_prompt_tokens"]
        agg_why = f"aggregator.prompt.max_prompt_tokens {agg_budget}"
    elif agg.max_tokens is not None:  # evaluation: the engine's context minus the answer
        agg_budget, agg_why = _budget(
            agg.max_model_len or model_max_len(aggregator),
            agg.max_tokens,
            "max_model_len",
            "evaluation.aggregator_sampling.max_tokens",
        )
    else:
        agg_budget, agg_why = None, "no budget"
    # candidate texts reduced to a cut marker
    agg_cfg = dict(agg.prompt, max_prompt_tokens=None)
    placeholders = [
        {"text": "[... 100000 tokens omitted ...]", **dict.fromkeys(METRICS, 0.5 + i)}
        for i in range(agg.set_size)
    ]

    warnings = {
        "solver": check_thinking(
            tok,
            "generator",
            solver.chat_template_kwargs,
            solver.require_think_end,
            settings.think_end,
            settings.think_end_auto,
        ),
        "aggregator": check_thinking(
            agg_tok,
            "aggregator",
            agg.chat_template_kwargs,
            agg.require_think_end,
            settings.think_end,
            settings.think_end_auto,
        ),
    }
    for role_warnings in warnings.values():
        for warning in role_warnings:
            log(f"warning: {warning}")

    over: list[str] = []
    longest = {"solver": (0, None), "aggregator": (0, None)}
    for line, p in enumerate(problems, start=1):
        messages = solver_messages(p["problem"], solver.prompt)
        counts = {
            "solver": count_tokens(tok, render(tok, messages, solver.chat_template_kwargs)),
            "aggregator": render_prompt(
                agg_tok, p["problem"], placeholders, agg_cfg, agg.chat_template_kwargs
            ).num_tokens,
        }
        for role, n in counts.items():
            longest[role] = max(longest[role], (n, p["id"]), key=lambda x: x[0])
        why = []
        if solver_budget is not None and counts["solver"] > solver_budget:
            why.append(f"solver prompt {counts['solver']} tokens > {solver_budget} ({solver_why})")
        if agg_budget is not None and counts["aggregator"] > agg_budget:
            why.append(
                f"aggregator prompt without candidate texts ({agg.set_size} candidates) "
                f"{counts['aggregator']} tokens > {agg_budget} ({agg_why})"
            )
        if why:
            where = f"{problems_path}:{line}"
            origin = locate(line - 1, p["id"])
            where = f"{origin} (normalised: {where})" if origin else where
            over.append(f"{where}, problem id {p['id']!r}: " + "; ".join(why))
    if over:
        shown = over[:10] + ([f"... and {len(over) - 10} more"] if len(over) > 10 else [])
        raise ProblemFileError(
            f"{len(over)} of {len(problems)} problems do not fit the token budgets:\n  "
            + "\n  ".join(shown)
            + "\nShorten or remove them in the source, or raise the budgets named above."
        )
    record = {
        "problems": len(problems),
        "solver": {"budget": solver_budget, "why": solver_why, "warnings": warnings["solver"]},
        "aggregator": {"budget": agg_budget, "why": agg_why, "warnings": warnings["aggregator"]},
    }
    for role, (n, pid) in longest.items():
        record[role].update(longest_tokens=n, longest_id=pid)
    log(
        f"{len(problems)} problems fit: longest solver prompt {longest['solver'][0]} tokens "
        f"(budget {solver_budget}), longest aggregator prompt without candidate texts "
        f"{longest['aggregator'][0]} tokens (budget {agg_budget})"
    )
    return record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", required=True, help="normalised problem JSONL")
    ap.add_argument("--generator", required=True, help="the generator's model folder")
    ap.add_argument("--aggregator", required=True, help="the aggregator's model folder")
    ap.add_argument("--settings", required=True, help="source, solver, aggregator (JSON)")
    ap.add_argument("out", help="JSON record of the longest prompts")
    args = ap.parse_args(argv)
    record = check_prompts(
        args.problems, load(Settings, args.settings), args.generator, args.aggregator
    )
    print(json.dumps(record, indent=2))
    # the output holds nothing that an aggregator setting changes: the sampling jobs that read
    # it see the same checksum after such a recheck and are not rerun
    write_json({k: record[k] for k in ("problems", "solver")}, Path(args.out))


if __name__ == "__main__":
    try:
        main()
    except (ProblemFileError, ThinkingError) as e:  # the message names file and line, or keys
        raise SystemExit(f"error: {e}") from None
