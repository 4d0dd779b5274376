# Sampling with vLLM, per data set x seed x shard.


rule sample_shard:
    """n solutions per problem of one shard with vLLM, with per-token confidence."""
    input:
        problems=f"{OUT}/data/{{dataset}}.jsonl",
        model=model_dir("generator"),
        # prompt lengths checked first (a checkpoint: a recheck that finds nothing new, after
        # an aggregator setting changed, does not resample)
        checked=f"{OUT}/data/{{dataset}}.check.json",
    output:
        f"{OUT}/samples/{{dataset}}/seed{{seed}}/shard{{shard}}.parquet",
    log:
        f"{LOGS}/sample_shard/{{dataset}}/seed{{seed}}/shard{{shard}}.log",
    benchmark:
        f"{LOGS}/sample_shard/{{dataset}}/seed{{seed}}/shard{{shard}}.benchmark.tsv"
    conda:
        f"../../envs/vllm{CUDA_ENV}.yaml"
    threads: 8
    resources:
        gpu=1,
        # Follows the in-flight bound (confagg.sample): the token ids and confidences of
        # problems_in_flight problems at max_tokens (6 bytes a token; 8 with slack), over a base
        # for vLLM, torch and CUDA, plus the KV cache when it lives in host memory (CPU).
        mem_mb=lambda wc: (
            16000
            + config["generator"]["engine"].get("kv_cache_memory_bytes", 0) // 2**20
            + sampling(config, wc.dataset)["problems_in_flight"]
            * samples_per_problem(config, wc.dataset)
            * sampling(config, wc.dataset)["max_tokens"]
            * 8
            // 2**20
        ),
        runtime="12h",
    params:
        settings=stage_settings("sample_shard"),
    shell:
        # every string :q-quoted (a prompt may hold quotes, $, backticks, newlines); the log
        # starts with the very word the stage receives as its settings
        "settings={params.settings:q}; printf 'settings: %s\\n' \"$settings\" > {log:q};"
        " HF_HUB_OFFLINE=1 python -m confagg.sample --problems {input.problems:q}"
        " --dataset {wildcards.dataset} --shard {wildcards.shard}"
        ' --seed {wildcards.seed} --model {input.model:q} --settings "$settings"'
        " {output:q} >> {log:q} 2>&1"
