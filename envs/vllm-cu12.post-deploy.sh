#!/usr/bin/env bash
# Snakemake runs this once in the new environment: install this project's package (the code
# the rules run, `python -m confagg.<stage>`), editable and without its dependencies, which
# the environment file pins.
set -euo pipefail
python -m pip install --quiet --no-deps -e "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
