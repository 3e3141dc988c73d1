#!/usr/bin/env bash
# Live captions from the microphone over video: speech from pulsesrc is transcribed in the
# low-latency mode (latency-mode=auto on a live source) and drawn over a test video as rolling
# captions: the last two lines of committed text, then the words not yet committed in grey.
# SOURCE, VIDEO and SINK may be replaced, e.g. to run it without a microphone or a display:
# SOURCE='filesrc location=a.wav ! decodebin' SINK=fakesink VIDEO='videotestsrc is-live=true num-buffers=300'.
# Arguments are element properties (prop=value), e.g. model=... precision=int8.
# The captions are drawn by the application (examples/pipelines/captions.py --overlay) from the
# element's bus messages; a pipeline of its own that wants the text stream links the element's
# src pad instead (text/x-raw: committed words, each run once, at the time they were said).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
sets=()
for prop in "$@"; do sets+=(--set "$prop"); done
export SOURCE=${SOURCE:-pulsesrc}
exec "$here/captions.py" --overlay "${sets[@]}"
