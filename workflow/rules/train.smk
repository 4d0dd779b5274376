# GRPO training of the confidence-aware aggregator (TRL + PEFT LoRA), one accelerate job.
# One run per training variant (training.variants: with or without confidences in the prompt)
# and training seed (training.seeds), in {OUT}/train/<variant>/seed<s>/.
# Resumable: checkpoints live in {OUT}/train/<variant>/seed<s>/checkpoints/, which is no output
# (Snakemake keeps it when the job fails); the job saves and stops before its `runtime` (or on
# SIGTERM/SIGUSR1, after the step in progress) with exit code 75, and a rerun resumes.
# On one node always (`nodes`: sbatch --nodes=1); the rendezvous port comes from the Slurm job
# id, so that two training jobs sharing a node never collide.


wildcard_constraints:
    variant="|".join(config["training"]["variants"]),
    train_seed=r"\d+",


rule train_aggregator:
    """LoRA adapter of one aggregator variant trained with GRPO on the curated training sets
    (the same sets, budget and seed for every variant)."""
    input:
        train=f"{OUT}/curated/train.parquet",
        val=f"{OUT}/curated/val.parquet",
        model=model_dir("aggregator"),
    output:
        adapter=directory(f"{OUT}/train/{{variant}}/seed{{train_seed}}/adapter"),
        log=f"{OUT}/train/{{variant}}/seed{{train_seed}}/log.jsonl",
        manifest=f"{OUT}/train/{{variant}}/seed{{train_seed}}/manifest.json",
    log:
        f"{LOGS}/train_aggregator/{{variant}}/seed{{train_seed}}.log",
    benchmark:
        f"{LOGS}/train_aggregator/{{variant}}/seed{{train_seed}}.benchmark.tsv"
    conda:
        f"../../envs/train{CUDA_ENV}.yaml"
    threads: 8
    resources:
        gpu=config["training"]["gpus"],
        nodes=1,
        mem_mb=64000,
        runtime="24h",
    params:
        out=lambda wc, output: os.path.dirname(output.log),
        launch=accelerate_args,
        settings=stage_settings("train_aggregator"),
        # training seed s trains with the run seed + s (seed 0: the run seed)
        seed=lambda wc: config["seed"] + int(wc.train_seed),
        run_name=lambda wc: f"{config['run_name']}-{wc.variant}-seed{wc.train_seed}",
    shell:
        # TERM and USR1 are ignored by this shell, the launcher and torchrun (it would kill the
        # trainers 30 s after a TERM); the trainers handle them: finish the step, save, exit 75
        "trap '' TERM USR1; export TORCHELASTIC_SIGNALS_TO_HANDLE=SIGINT,SIGHUP,SIGQUIT;"
        " port=$(python -m confagg.train --rendezvous-port) &&"
        " HF_HUB_OFFLINE=1 accelerate launch {params.launch} --main_process_port $port"
        " -m confagg.train --train {input.train} --val {input.val} --model {input.model:q}"
        " --out {params.out} --settings {params.settings:q} --seed {params.seed}"
        " --run-name {params.run_name:q} --runtime-min {resources.runtime} > {log} 2>&1"


rule merge_adapter:
    """The trained adapter merged into a copy of the aggregator's base model (a plain model
    folder: evaluation.trained_model "merged" serves it without LoRA; users can ship it)."""
    input:
        adapter=f"{OUT}/train/{{variant}}/seed{{train_seed}}/adapter",
        model=model_dir("aggregator"),
    output:
        directory(f"{OUT}/train/{{variant}}/seed{{train_seed}}/merged"),
    log:
        f"{LOGS}/merge_adapter/{{variant}}/seed{{train_seed}}.log",
    benchmark:
        f"{LOGS}/merge_adapter/{{variant}}/seed{{train_seed}}.benchmark.tsv"
    conda:
        f"../../envs/train{CUDA_ENV}.yaml"
    threads: 4
    resources:
        mem_mb=32000,
        runtime="1h",
    shell:
        "HF_HUB_OFFLINE=1 python -m confagg.merge --model {input.model:q} --adapter {input.adapter}"
        " {output} > {log} 2>&1"
