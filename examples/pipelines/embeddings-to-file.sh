#!/usr/bin/env bash
# Any audio file -> Whisper encoder embeddings, one 512 x d_model float32 window after another.
# Usage: embeddings-to-file.sh INPUT.wav OUTPUT.f32 [element properties...]
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
in=${1:?input file}; out=${2:?output file}; shift 2
export GST_PLUGIN_PATH="$here/target/release${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"

gst-launch-1.0 -m filesrc location="$in" ! decodebin ! audioconvert ! audioresample ! \
  whisperencnpu "$@" ! filesink location="$out" | grep --line-buffered -E 'whisperencnpu-timing|ERROR|EOS'

bytes=$(stat -c %s "$out")
echo "wrote $out: $bytes bytes"
