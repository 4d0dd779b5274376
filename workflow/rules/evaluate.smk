# Evaluation per benchmark x seed (aggregator variants, every voting method) and one report per
# benchmark. One benchmark alone: snakemake results/<run>/reports/<benchmark>/report.html
# Rule -> module: aggregate_sets -> confagg.aggregate, evaluate_seed -> confagg.evaluate,
# report_training / report_benchmark / report_summary -> confagg.report.


rule aggregate_sets:
    """Every aggregator variant (a trained one once per training seed) on the disjoint candidate
    sets of every set size of one shard of a benchmark x seed's problems
    (evaluation.aggregate_shards)."""
    input:
        problems=f"{OUT}/data/{{benchmark}}.jsonl",
        samples=eval_shards("samples"),
        scores=eval_shards("scores"),
        grades=eval_shards("grades"),
        model=model_dir("aggregator"),
        trained=list(trained_aggregators().values()),
    output:
        f"{OUT}/eval/{{benchmark}}/seed{{seed}}/aggregators/shard{{shard}}.parquet",
    log:
        f"{LOGS}/aggregate_sets/{{benchmark}}/seed{{seed}}/shard{{shard}}.log",
    benchmark:
        f"{LOGS}/aggregate_sets/{{benchmark}}/seed{{seed}}/shard{{shard}}.benchmark.tsv"
    conda:
        f"../../envs/vllm{CUDA_ENV}.yaml"
    threads: 8
    resources:
        gpu=1,
        mem_mb=64000,
        runtime="6h",
    params:
        settings=stage_settings("aggregate_sets"),
        # --trained <variant>/seed<s>=<adapter or merged model> ...
        trained=lambda wc: " ".join(
            f"--trained {v}={path}" for v, path in trained_aggregators().items()
        ),
    shell:
        "HF_HUB_OFFLINE=1 python -m confagg.aggregate --problems {input.problems}"
        " --samples {input.samples} --scores {input.scores} --grades {input.grades}"
        " --model {input.model:q} {params.trained} --settings {params.settings:q}"
        " --processes {threads} {output} > {log} 2>&1"


rule merge_aggregators:
    """The aggregation jobs' tables of one benchmark x seed as one table."""
    input:
        lambda wc: expand(
            f"{OUT}/eval/{wc.benchmark}/seed{wc.seed}/aggregators/shard{{shard}}.parquet",
            shard=range(config["evaluation"]["aggregate_shards"]),
        ),
    output:
        f"{OUT}/eval/{{benchmark}}/seed{{seed}}/aggregators.parquet",
    log:
        f"{LOGS}/merge_aggregators/{{benchmark}}/seed{{seed}}.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    resources:
        mem_mb=2000,  # one row group at a time
        runtime=lambda wc, input: 10 + int(input.size_mb / 200),
    shell:
        "python -m confagg.aggregate merge {output:q} {input:q} > {log:q} 2>&1"


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
    benchmark:
        f"{LOGS}/evaluate_seed/{{benchmark}}/seed{{seed}}.benchmark.tsv"
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


rule report_training:
    """The GRPO training curves of the training runs that evaluated variants use."""
    input:
        [f"{OUT}/train/{run}/log.jsonl" for run in trained_aggregators()],
    output:
        report(
            f"{OUT}/reports/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
            labels={"figure": "training curves"},
        ),
    log:
        f"{LOGS}/report_training.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m confagg.report training {input:q} --out {output:q} > {log:q} 2>&1"


rule report_benchmark:
    """report.html, metrics.json and summary.md of one benchmark, seeds as mean ± std, and its
    figures one PNG each (registered for `snakemake --report`)."""
    input:
        metrics=lambda wc: expand(
            f"{OUT}/eval/{wc.benchmark}/seed{{seed}}/metrics.json",
            seed=config["evaluation"]["seeds"],
        ),
        candidates=lambda wc: expand(
            f"{OUT}/eval/{wc.benchmark}/seed{{seed}}/candidates.parquet",
            seed=config["evaluation"]["seeds"],
        ),
        # per problem, for the accuracy by difficulty
        aggregators=lambda wc: expand(
            f"{OUT}/eval/{wc.benchmark}/seed{{seed}}/aggregators.parquet",
            seed=config["evaluation"]["seeds"],
        ),
        # the contamination that curation found (pool problems copying this benchmark's)
        curation=f"{OUT}/curated/summary.json",
        # what the numbers come from: the models' and data sets' revisions and commits
        sources=lambda wc: [
            f"{OUT}/models/generator.source.json",
            f"{OUT}/models/aggregator.source.json",
            f"{OUT}/data/{POOL}.source.json",
            f"{OUT}/data/{wc.benchmark}.source.json",
        ],
        # the training curves (none when every evaluated variant only prompts the base model)
        training=rules.report_training.output if trained_aggregators() else [],
    output:
        html=report(
            f"{OUT}/reports/{{benchmark}}/report.html",
            caption="../report/benchmark.rst",
            category="Benchmarks",
            subcategory="{benchmark}",
            labels={"benchmark": "{benchmark}", "figure": "the whole report"},
        ),
        metrics=f"{OUT}/reports/{{benchmark}}/metrics.json",
        summary=f"{OUT}/reports/{{benchmark}}/summary.md",
        # one PNG per figure of the page (confagg.report.FIGURES), named by it
        figures=[
            report(
                f"{OUT}/reports/{{benchmark}}/figures/{figure}.png",
                caption=f"../report/{figure}.rst",
                category="Benchmarks",
                subcategory="{benchmark}",
                labels={"benchmark": "{benchmark}", "figure": figure.replace("_", " ")},
            )
            for figure in (
                "accuracy_vs_k",
                "accuracy_vs_tokens",
                "reliability",
                "roc",
                "accuracy_by_difficulty",
                "confidence_histograms",
                "seed_spread",
            )
        ],
    log:
        f"{LOGS}/report_benchmark/{{benchmark}}.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    resources:
        # the seeds' candidates tables (a few columns a sample, read whole) and the plots
        mem_mb=lambda wc, input: 2000 + 20 * int(input.size_mb),
        runtime=lambda wc, input: 10 + int(input.size_mb),
    params:
        settings=stage_settings("report_benchmark"),
    shell:
        "python -m confagg.report benchmark --name {wildcards.benchmark:q}"
        " --settings {params.settings:q}"
        " --metrics {input.metrics:q} --candidates {input.candidates:q}"
        " --aggregators {input.aggregators:q} --curation {input.curation:q}"
        " --sources {input.sources:q}"
        " --training {input.training:q} --figures {output.figures:q}"
        " --html {output.html:q} --metrics-out {output.metrics:q}"
        " --summary-out {output.summary:q} > {log:q} 2>&1"


rule report_summary:
    """One table across benchmarks (results/<run>/summary.md) and every number of every
    benchmark (summary.csv: benchmark x method x k, lighteval's metric names)."""
    input:
        expand(f"{OUT}/reports/{{benchmark}}/metrics.json", benchmark=BENCHMARKS),
    output:
        md=report(f"{OUT}/summary.md", caption="../report/summary.rst", category="Summary"),
        csv=report(f"{OUT}/summary.csv", caption="../report/summary_csv.rst", category="Summary"),
    log:
        f"{LOGS}/report_summary.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        # what the run cost: its jobs' benchmark files and outputs (confagg.costs)
        run=lambda wc, output: os.path.dirname(output.md),
        logs=LOGS,
        config=lambda wc: rule_settings.to_json(config),
    shell:
        "python -m confagg.report summary {input:q} --out {output.md:q} --csv {output.csv:q}"
        " --costs {params.run:q} {params.logs:q} {params.config:q} > {log:q} 2>&1"


for _name in BENCHMARKS:

    # A named target per benchmark: `snakemake report_aime25` rebuilds that report alone.
    rule:
        name:
            f"report_{_name}"
        default_target: False
        input:
            f"{OUT}/reports/{_name}/report.html",
        localrule: True
