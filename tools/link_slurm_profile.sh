#!/usr/bin/env bash
# Lets `snakemake --profile slurm` (a bare profile name, as Snakemake's docs and the cluster
# profile templates teach) find this checkout's profiles/slurm: links it into the user's
# Snakemake profile folder, where Snakemake looks a name up after the current folder
# (~/.config/snakemake on Linux). Never replaces a profile already there (only a broken link):
# when `slurm` is taken, the link is named `confagg-slurm`. Says which name it linked; running it
# again changes nothing.
#   bash tools/link_slurm_profile.sh [PYTHON]    (setup.sh runs it with Snakemake's python)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${1:-.venv-snakemake/bin/python}
source_dir="$(pwd -P)/profiles/slurm"
# the folder Snakemake itself searches (snakemake.cli.get_profile_dir), for this user and OS
folder=$("$PYTHON" -c 'from snakemake.common import get_appdirs; print(get_appdirs().user_config_dir)')

ours() { [ -L "$1" ] && [ "$(readlink "$1")" = "$source_dir" ]; }
names=(slurm confagg-slurm)

for name in "${names[@]}"; do
    if ours "$folder/$name"; then
        echo "Snakemake profile '$name' already links $source_dir: snakemake --profile $name"
        exit 0
    fi
done
for name in "${names[@]}"; do
    link="$folder/$name"
    # free: nothing there, or a broken link (e.g. to a checkout since deleted), no profile
    if [ ! -e "$link" ]; then
        note=""
        [ -L "$link" ] && note=" (in place of a broken link to $(readlink "$link"))"
        [ "$name" = slurm ] || note="$note (the profile '$folder/slurm' there is left as it is)"
        mkdir -p "$folder"
        ln -sfn "$source_dir" "$link"
        echo "Linked Snakemake profile '$name' -> $source_dir$note: snakemake --profile $name"
        exit 0
    fi
done
echo "Snakemake profiles '$folder/slurm' and '$folder/confagg-slurm' both exist and are not" \
    "this checkout's: left as they are; use snakemake --profile profiles/slurm" >&2
