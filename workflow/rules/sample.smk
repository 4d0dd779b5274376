# Sampling with vLLM and confidence scoring, per data set x seed x shard.


rule sample_shard:
    """n solutions per problem of one shard with vLLM, with per-token confidence."""
    input:
        problems=f"{OUT}/data/{{dataset}}.jsonl",
        model=model_dir(config["generator"]["model"]),
    output:
        f"{OUT}/samples/{{dataset}}/seed{{seed}}/shard{{shard}}.parquet",
    params:
        shards=lambda wc: num_shards(wc.dataset),
        settings=sample_settings,
    conda:
        "../../envs/vllm.yaml"
    log:
        f"{LOGS}/sample_shard/{{dataset}}/seed{{seed}}/shard{{shard}}.log",
    benchmark:
        f"{LOGS}/sample_shard/{{dataset}}/seed{{seed}}/shard{{shard}}.benchmark.tsv"
    threads: 8
    resources:
        gpu=1,
        mem_mb=64000,
        runtime="12h",
    shell:
        "HF_HUB_OFFLINE=1 python -m confagg.sample --problems {input.problems}"
        " --dataset {wildcards.dataset} --shard {wildcards.shard} --shards {params.shards}"
        " --seed {wildcards.seed} --model {input.model} --settings '{params.settings}'"
        " {output} > {log} 2>&1"


rule score_shard:
    """The four DeepConf trace metrics of every sample of one shard."""
    input:
        f"{OUT}/samples/{{dataset}}/seed{{seed}}/shard{{shard}}.parquet",
    output:
        f"{OUT}/scores/{{dataset}}/seed{{seed}}/shard{{shard}}.parquet",
    params:
        window=config["confidence"]["window"],
        tail_tokens=config["confidence"]["tail_tokens"],
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{LOGS}/score_shard/{{dataset}}/seed{{seed}}/shard{{shard}}.log",
    threads: 1
    resources:
        mem_mb=8000,
        runtime="30m",
    shell:
        "python -m confagg.score --window {params.window} --tail-tokens {params.tail_tokens}"
        " {input} {output} > {log} 2>&1"
