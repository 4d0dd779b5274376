# Grading every sample against its gold answer (math-verify), and the AggLM training sets
# curated from the graded training pool.


rule grade_shard:
    """Verdict (correct, status) of every sample of one shard against its gold answer."""
    input:
        problems=f"{OUT}/data/{{dataset}}.jsonl",
        samples=f"{OUT}/samples/{{dataset}}/seed{{seed}}/shard{{shard}}.parquet",
    output:
        f"{OUT}/grades/{{dataset}}/seed{{seed}}/shard{{shard}}.parquet",
    params:
        timeout=config["curation"]["verify_timeout"],
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{LOGS}/grade_shard/{{dataset}}/seed{{seed}}/shard{{shard}}.log",
    threads: config["curation"]["verify_processes"]
    resources:
        mem_mb=lambda wc, threads: 4000 + 2000 * threads,
        runtime="2h",
    shell:
        "python -m confagg.grade --problems {input.problems} --processes {threads}"
        " --timeout {params.timeout} {input.samples} {output} > {log} 2>&1"


rule curate_sets:
    """AggLM training and validation sets (hard + easy) from the graded training pool."""
    input:
        problems=f"{OUT}/data/{POOL}.jsonl",
        samples=shard_files("samples", POOL),
        scores=shard_files("scores", POOL),
        grades=shard_files("grades", POOL),
        benchmarks=expand(f"{OUT}/data/{{benchmark}}.jsonl", benchmark=BENCHMARKS),
    output:
        train=f"{OUT}/curated/train.parquet",
        val=f"{OUT}/curated/val.parquet",
        summary=f"{OUT}/curated/summary.json",
    params:
        # the set-building keys only: a verifier setting alone does not rebuild the sets
        settings=json.dumps(
            {k: v for k, v in config["curation"].items() if not k.startswith("verify_")},
            sort_keys=True,
        ),
        run_seed=config["seed"],
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{LOGS}/curate_sets/curate_sets.log",
    threads: 1
    resources:
        mem_mb=32000,
        runtime="2h",
    shell:
        "python -m confagg.curate --problems {input.problems} --samples {input.samples}"
        " --scores {input.scores} --grades {input.grades} --benchmarks {input.benchmarks}"
        " --settings {params.settings:q} --run-seed {params.run_seed}"
        " --train {output.train} --val {output.val} --summary {output.summary} > {log} 2>&1"
