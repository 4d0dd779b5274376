# Grading every sample against its gold answer (math-verify), and the AggLM training sets
# curated from the graded training pool.

# Keys of the config's curation section that the grading rule reads (not curate_sets).
GRADING_KEYS = ("verify_timeout", "verify_processes", "require_think_end")


rule grade_shard:
    """Verdict (correct, status) of every sample of one shard against its gold answer."""
    input:
        problems=f"{OUT}/data/{{dataset}}.jsonl",
        samples=f"{OUT}/samples/{{dataset}}/seed{{seed}}/shard{{shard}}.parquet",
    output:
        f"{OUT}/grades/{{dataset}}/seed{{seed}}/shard{{shard}}.parquet",
    params:
        timeout=config["curation"]["verify_timeout"],
        think_end="--require-think-end" if think_end_required("generator") else "",
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{LOGS}/grade_shard/{{dataset}}/seed{{seed}}/shard{{shard}}.log",
    threads: config["curation"]["verify_processes"]
    resources:
        # the texts are read batch by batch (0.35 GB for a full-size shard: benchmarks/
        # bench_scale.py), plus the math-verify workers; time follows the shard's size
        # (~40 MB/s measured on fast-path answers; math-verify's own time depends on the
        # answers: 20x slack)
        mem_mb=lambda wc, threads: 2000 + 1000 * threads,
        runtime=lambda wc, input: 30 + int(input.size_mb / 50),
    shell:
        "python -m confagg.grade --problems {input.problems} --processes {threads}"
        " --timeout {params.timeout} {params.think_end} {input.samples} {output} > {log} 2>&1"


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
        # the set-building keys only: a grading setting alone does not rebuild the sets
        settings=json.dumps(
            {k: v for k, v in config["curation"].items() if k not in GRADING_KEYS},
            sort_keys=True,
        ),
        run_seed=config["seed"],
        # candidate texts longer than the aggregator's prompt budget are cut (confagg.curate)
        budget=(
            f"--max-prompt-tokens {config['aggregator']['prompt']['max_prompt_tokens']}"
            if config["aggregator"]["prompt"]["max_prompt_tokens"] is not None
            else ""
        ),
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{LOGS}/curate_sets/curate_sets.log",
    threads: 1
    resources:
        # one row of metadata per sample (~1 KB, 3 KB with the join's copies) over a base for
        # the bounded chunks of texts (0.6 GB for one full-size shard: benchmarks/bench_scale.py);
        # time follows the pool's size (~45 MB/s measured: 10x slack)
        mem_mb=lambda wc, input: 2000 + scores_rows(input.scores) * 3 // 1024,
        runtime=lambda wc, input: 30 + int(input.size_mb / 250),
    shell:
        "python -m confagg.curate --problems {input.problems} --samples {input.samples}"
        " --scores {input.scores} --grades {input.grades} --benchmarks {input.benchmarks}"
        " --settings {params.settings:q} --run-seed {params.run_seed}"
        " --train {output.train} --val {output.val} --summary {output.summary}"
        " {params.budget} > {log} 2>&1"
