#!/usr/bin/env bash
# Live captions from the microphone over video: speech from pulsesrc is transcribed and the text
# overlaid on a test video. SOURCE, VIDEO and SINK may be replaced, e.g. to run it without a
# microphone or a display: SOURCE='filesrc location=a.wav ! decodebin' SINK=fakesink
# VIDEO='videotestsrc is-live=true num-buffers=300'.
# Expect the captions some 20 s late: the pipeline latency covers a 10.24 s window and its decoding.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
export GST_PLUGIN_PATH="$here/target/release${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
SOURCE=${SOURCE:-pulsesrc}
SINK=${SINK:-autovideosink}
VIDEO=${VIDEO:-videotestsrc is-live=true pattern=smpte}
# shellcheck disable=SC2086
exec gst-launch-1.0 -e \
  $VIDEO ! video/x-raw,width=1280,height=720,framerate=25/1 ! \
    textoverlay name=overlay valignment=bottom font-desc="Sans 28" ! videoconvert ! $SINK \
  $SOURCE ! audioconvert ! audioresample ! \
    whisperencnpu mode=transcription "$@" ! queue ! overlay.text_sink
