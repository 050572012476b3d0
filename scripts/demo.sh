#!/usr/bin/env bash
# Set up (first run) and run the main job: init the embedded model, SFT warm-start, SDAR training on the
# household environment, evaluation before/after. Extra arguments go to `sdar demo`.
source "$(dirname "$0")/_venv.sh"
python -m sdar demo "$@"
