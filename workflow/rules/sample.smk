# Sampling with vLLM and confidence scoring, per data set x seed x shard.


rule sample_shard:
    """n solutions per problem of one shard with vLLM, with per-token confidence."""
    input:
        problems=f"{OUT}/data/{{dataset}}.jsonl",
        model=model_dir(config["generator"]["model"]),
        # prompt lengths checked first (a checkpoint: a recheck that finds nothing new, after
        # an aggregator setting changed, does not resample)
        checked=f"{OUT}/data/{{dataset}}.check.json",
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
        # Follows the in-flight bound (confagg.sample): the token ids and confidences of
        # problems_in_flight problems at max_tokens (6 bytes a token; 8 with slack), over a base
        # for vLLM, torch and CUDA, plus the KV cache when it lives in host memory (CPU).
        mem_mb=lambda wc: (
            16000
            + config["generator"]["engine"].get("kv_cache_memory_bytes", 0) // 2**20
            + config["sampling"]["problems_in_flight"]
            * samples_per_problem(wc.dataset)
            * config["sampling"]["max_tokens"]
            * 8
            // 2**20
        ),
        runtime="12h",
    shell:
        # every string :q-quoted (a prompt may hold quotes, $, backticks, newlines); the log
        # starts with the very word the stage receives as its settings
        "settings={params.settings:q}; printf 'settings: %s\\n' \"$settings\" > {log:q};"
        " HF_HUB_OFFLINE=1 python -m confagg.sample --problems {input.problems:q}"
        " --dataset {wildcards.dataset} --shard {wildcards.shard} --shards {params.shards}"
        " --seed {wildcards.seed} --model {input.model:q} --settings \"$settings\""
        " {output:q} >> {log:q} 2>&1"


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
        # batch by batch: about 0.5 GB whatever the shard (benchmarks/bench_scale.py); time
        # follows its size (~20 MB/s measured on 2 slow cores: 10x slack)
        mem_mb=2000,
        runtime=lambda wc, input: 10 + int(input.size_mb / 200),
    shell:
        "python -m confagg.score --window {params.window} --tail-tokens {params.tail_tokens}"
        " {input:q} {output:q} > {log:q} 2>&1"
