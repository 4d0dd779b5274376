# The AggLM training sets curated from the graded training pool.


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
    log:
        f"{LOGS}/curate_sets/curate_sets.log",
    benchmark:
        f"{LOGS}/curate_sets/curate_sets.benchmark.tsv"
    conda:
        "../../envs/cpu.yaml"
    threads: 1
    resources:
        # one row of metadata per sample (~1 KB, 3 KB with the join's copies) over a base for
        # the bounded chunks of texts (0.6 GB for one full-size shard: benchmarks/bench_scale.py);
        # time follows the pool's size (~45 MB/s measured: 10x slack)
        mem_mb=lambda wc, input: 2000 + scores_rows(input.scores) * 3 // 1024,
        runtime=lambda wc, input: 30 + int(input.size_mb / 250),
    params:
        settings=stage_settings("curate_sets"),
    shell:
        "python -m confagg.curate --problems {input.problems} --samples {input.samples}"
        " --scores {input.scores} --grades {input.grades} --benchmarks {input.benchmarks}"
        " --settings {params.settings:q}"
        " --train {output.train} --val {output.val} --summary {output.summary} > {log} 2>&1"
