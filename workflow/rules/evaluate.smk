# Evaluation per benchmark x seed (aggregator variants, every voting method) and one report per
# benchmark. One benchmark alone: snakemake results/<run>/reports/<benchmark>/report.html
# Rule -> module: aggregate_sets -> confagg.aggregate, evaluate_seed -> confagg.evaluate,
# report_benchmark / report_summary -> confagg.report.


rule aggregate_sets:
    """Every aggregator variant on the disjoint candidate sets of one benchmark x seed."""
    input:
        problems=f"{OUT}/data/{{benchmark}}.jsonl",
        samples=eval_shards("samples"),
        scores=eval_shards("scores"),
        grades=eval_shards("grades"),
        model=model_dir("aggregator"),
        trained=list(trained_aggregators().values()),
    output:
        f"{OUT}/eval/{{benchmark}}/seed{{seed}}/aggregators.parquet",
    log:
        f"{LOGS}/aggregate_sets/{{benchmark}}/seed{{seed}}.log",
    benchmark:
        f"{LOGS}/aggregate_sets/{{benchmark}}/seed{{seed}}.benchmark.tsv"
    conda:
        "../../envs/vllm.yaml"
    threads: 8
    resources:
        gpu=1,
        mem_mb=64000,
        runtime="6h",
    params:
        settings=stage_settings("aggregate_sets"),
        # --trained <variant>=<adapter or merged model> ...
        trained=lambda wc: " ".join(
            f"--trained {v}={path}" for v, path in trained_aggregators().items()
        ),
    shell:
        "HF_HUB_OFFLINE=1 python -m confagg.aggregate --problems {input.problems}"
        " --samples {input.samples} --scores {input.scores} --grades {input.grades}"
        " --model {input.model:q} {params.trained} --settings {params.settings:q}"
        " --processes {threads} {output} > {log} 2>&1"


rule evaluate_seed:
    """Every method (voting, filtering, best-of-k, aggregators) on one benchmark x seed."""
    input:
        samples=eval_shards("samples"),
        scores=eval_shards("scores"),
        grades=eval_shards("grades"),
        aggregators=f"{OUT}/eval/{{benchmark}}/seed{{seed}}/aggregators.parquet",
    output:
        metrics=f"{OUT}/eval/{{benchmark}}/seed{{seed}}/metrics.json",
        candidates=f"{OUT}/eval/{{benchmark}}/seed{{seed}}/candidates.parquet",
    log:
        f"{LOGS}/evaluate_seed/{{benchmark}}/seed{{seed}}.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    resources:
        # a row of metadata per sample (3 KB with copies); confidences read batch by batch
        mem_mb=lambda wc, input: 2000 + scores_rows(input.scores) * 3 // 1024,
        runtime=lambda wc, input: 10 + int(input.size_mb / 200),
    params:
        settings=stage_settings("evaluate_seed"),
    shell:
        "python -m confagg.evaluate --samples {input.samples} --scores {input.scores}"
        " --grades {input.grades} --aggregator {input.aggregators}"
        " --settings {params.settings:q} --seed {wildcards.seed} --metrics {output.metrics}"
        " --candidates {output.candidates} > {log} 2>&1"


rule report_benchmark:
    """report.html, metrics.json and summary.md of one benchmark, seeds as mean ± std."""
    input:
        metrics=lambda wc: expand(
            f"{OUT}/eval/{wc.benchmark}/seed{{seed}}/metrics.json",
            seed=config["evaluation"]["seeds"],
        ),
        candidates=lambda wc: expand(
            f"{OUT}/eval/{wc.benchmark}/seed{{seed}}/candidates.parquet",
            seed=config["evaluation"]["seeds"],
        ),
        # the contamination that curation found (pool problems copying this benchmark's)
        curation=f"{OUT}/curated/summary.json",
    output:
        html=report(
            f"{OUT}/reports/{{benchmark}}/report.html",
            caption="../report/benchmark.rst",
            category="Benchmarks",
            labels={"benchmark": "{benchmark}"},
        ),
        metrics=f"{OUT}/reports/{{benchmark}}/metrics.json",
        summary=f"{OUT}/reports/{{benchmark}}/summary.md",
    log:
        f"{LOGS}/report_benchmark/{{benchmark}}.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    resources:
        # the seeds' candidates tables (a few columns a sample, read whole) and the plots
        mem_mb=lambda wc, input: 2000 + 20 * int(input.size_mb),
        runtime=lambda wc, input: 10 + int(input.size_mb),
    shell:
        "python -m confagg.report benchmark --name {wildcards.benchmark}"
        " --metrics {input.metrics} --candidates {input.candidates} --curation {input.curation}"
        " --html {output.html} --metrics-out {output.metrics} --summary-out {output.summary}"
        " > {log} 2>&1"


rule report_summary:
    """One table across benchmarks: results/<run>/summary.md."""
    input:
        expand(f"{OUT}/reports/{{benchmark}}/metrics.json", benchmark=BENCHMARKS),
    output:
        report(f"{OUT}/summary.md", caption="../report/summary.rst", category="Summary"),
    log:
        f"{LOGS}/report_summary.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m confagg.report summary {input} --out {output} > {log} 2>&1"


for _name in BENCHMARKS:

    # A named target per benchmark: `snakemake report_aime25` rebuilds that report alone.
    rule:
        name:
            f"report_{_name}"
        default_target: False
        input:
            f"{OUT}/reports/{_name}/report.html",
        localrule: True
