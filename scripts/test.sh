#!/usr/bin/env bash
# Set up (first run) and run the default test suite. Extra arguments go to pytest.
source "$(dirname "$0")/_venv.sh"
python -m pytest tests "$@"
