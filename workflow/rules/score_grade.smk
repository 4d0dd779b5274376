# Scoring and grading of every sample, per data set x seed x shard: the DeepConf confidence
# metrics (confagg.score) and the verdict against the gold answer (confagg.grade, the config's
# grading section). The training pool's and the benchmarks' samples alike.


rule score_shard:
    """The four DeepConf trace metrics of every sample of one shard."""
    input:
        f"{OUT}/samples/{{dataset}}/seed{{seed}}/shard{{shard}}.parquet",
    output:
        f"{OUT}/scores/{{dataset}}/seed{{seed}}/shard{{shard}}.parquet",
    log:
        f"{LOGS}/score_shard/{{dataset}}/seed{{seed}}/shard{{shard}}.log",
    benchmark:
        f"{LOGS}/score_shard/{{dataset}}/seed{{seed}}/shard{{shard}}.benchmark.tsv"
    conda:
        "../../envs/cpu.yaml"
    threads: 1
    resources:
        # batch by batch: about 0.5 GB whatever the shard (benchmarks/bench_scale.py); time
        # follows its size (~20 MB/s measured on 2 slow cores: 10x slack)
        mem_mb=2000,
        runtime=lambda wc, input: 10 + int(input.size_mb / 200),
    params:
        settings=stage_settings("score_shard"),
    shell:
        "python -m confagg.score --settings {params.settings:q} {input:q} {output:q}"
        " > {log:q} 2>&1"


rule grade_shard:
    """Verdict (correct, status) of every sample of one shard against its gold answer."""
    input:
        problems=f"{OUT}/data/{{dataset}}.jsonl",
        samples=f"{OUT}/samples/{{dataset}}/seed{{seed}}/shard{{shard}}.parquet",
    output:
        f"{OUT}/grades/{{dataset}}/seed{{seed}}/shard{{shard}}.parquet",
    log:
        f"{LOGS}/grade_shard/{{dataset}}/seed{{seed}}/shard{{shard}}.log",
    benchmark:
        f"{LOGS}/grade_shard/{{dataset}}/seed{{seed}}/shard{{shard}}.benchmark.tsv"
    conda:
        "../../envs/cpu.yaml"
    threads: config["grading"]["processes"]
    resources:
        # the texts are read batch by batch (0.35 GB for a full-size shard: benchmarks/
        # bench_scale.py), plus the math-verify workers; time follows the shard's size
        # (~40 MB/s measured on fast-path answers; math-verify's own time depends on the
        # answers: 20x slack)
        mem_mb=lambda wc, threads: 2000 + 1000 * threads,
        runtime=lambda wc, input: 30 + int(input.size_mb / 50),
    params:
        settings=stage_settings("grade_shard"),
    shell:
        "python -m confagg.grade --problems {input.problems:q} --processes {threads}"
        " --settings {params.settings:q} {input.samples:q} {output:q} > {log:q} 2>&1"
