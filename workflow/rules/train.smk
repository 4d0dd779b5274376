# GRPO training of the confidence-aware aggregator (TRL + PEFT LoRA), one accelerate job.
# Resumable: checkpoints live in {OUT}/train/checkpoints/, which is no output (Snakemake keeps
# it when the job fails); the job saves and stops before its `runtime`, a rerun resumes.


rule train_aggregator:
    """LoRA adapter of the aggregator trained with GRPO on the curated training sets."""
    input:
        train=f"{OUT}/curated/train.parquet",
        val=f"{OUT}/curated/val.parquet",
        model=model_dir(config["aggregator"]["model"]),
    output:
        adapter=directory(f"{OUT}/train/adapter"),
        log=f"{OUT}/train/log.jsonl",
        manifest=f"{OUT}/train/manifest.json",
    params:
        out=lambda wc, output: os.path.dirname(output.log),
        launch=accelerate_args,
        settings=lambda wc: json.dumps(
            {"aggregator": config["aggregator"], "training": config["training"]}, sort_keys=True
        ),
        seed=config["seed"],
        run_name=config["run_name"],
    conda:
        "../../envs/train.yaml"
    log:
        f"{LOGS}/train_aggregator/train_aggregator.log",
    benchmark:
        f"{LOGS}/train_aggregator/train_aggregator.benchmark.tsv"
    threads: 8
    resources:
        gpu=config["training"]["gpus"],
        mem_mb=64000,
        runtime="24h",
    shell:
        # USR1 is ignored by the shell and the launcher (the trainer handles it: save, stop).
        "trap '' USR1; HF_HUB_OFFLINE=1 accelerate launch {params.launch} -m confagg.train"
        " --train {input.train} --val {input.val} --model {input.model:q} --out {params.out}"
        " --settings {params.settings:q} --seed {params.seed} --run_name {params.run_name}"
        " --runtime_min {resources.runtime} > {log} 2>&1"


rule merge_adapter:
    """The trained adapter merged into a copy of the aggregator's base model (a plain model
    folder: evaluation.trained_model "merged" serves it without LoRA; users can ship it)."""
    input:
        adapter=f"{OUT}/train/adapter",
        model=model_dir(config["aggregator"]["model"]),
    output:
        directory(f"{OUT}/train/merged"),
    conda:
        "../../envs/train.yaml"
    log:
        f"{LOGS}/merge_adapter/merge_adapter.log",
    threads: 4
    resources:
        mem_mb=32000,
        runtime="1h",
    shell:
        "HF_HUB_OFFLINE=1 python -m confagg.merge --model {input.model:q} --adapter {input.adapter}"
        " {output} > {log} 2>&1"
