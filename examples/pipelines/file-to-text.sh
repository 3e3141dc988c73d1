#!/usr/bin/env bash
# An audio file to plain text on stdout, one segment a line.
# Usage: file-to-text.sh INPUT [--model DIR] [--language CODE]
set -euo pipefail
in=${1:?input file}; shift
exec "$(dirname "$0")/captions.py" "$in" --plain "$@"
