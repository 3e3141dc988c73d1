#!/usr/bin/env bash
# An audio file to SubRip subtitles. Usage: file-to-srt.sh INPUT OUTPUT.srt [--model DIR]
set -euo pipefail
in=${1:?input file}; out=${2:?output .srt}; shift 2
exec "$(dirname "$0")/captions.py" "$in" --srt "$out" "$@" > /dev/null
