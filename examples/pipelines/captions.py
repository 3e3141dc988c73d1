#!/usr/bin/python3
"""Embeds a whisperencnpu pipeline in a Python application and prints segments as they come.

Usage: captions.py [AUDIO_FILE] [--srt OUT.srt] [--plain] [--model DIR] [--language en]
Without a file it listens to the microphone (pulsesrc). Segments come from the element's
`whisperencnpu-segment` bus messages; with --srt they are also written as SubRip subtitles.
Run from anywhere: the plugin is looked up in the project's target/release.
"""
import argparse
import os
import sys

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GLib, Gst  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "target", "release"))


def srt_time(ns):
    ms = ns // 1_000_000
    return "%02d:%02d:%02d,%03d" % (ms // 3_600_000, ms // 60_000 % 60, ms // 1000 % 60, ms % 1000)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", help="audio file (default: the microphone)")
    parser.add_argument("--srt", help="also write the segments to this .srt file")
    parser.add_argument("--plain", action="store_true", help="print the text only, a segment a line")
    parser.add_argument("--model", help="model directory (default: the element's, Whisper base)")
    parser.add_argument("--language", default="en", help="Whisper language code")
    args = parser.parse_args()

    os.environ["GST_PLUGIN_PATH"] = PLUGIN_DIR + os.pathsep + os.environ.get("GST_PLUGIN_PATH", "")
    Gst.init(None)
    if args.file:
        source = 'filesrc location="%s" ! decodebin' % args.file
    else:
        source = "pulsesrc"
    model = ' model="%s"' % args.model if args.model else ""
    pipeline = Gst.parse_launch(
        "%s ! audioconvert ! audioresample ! whisperencnpu mode=transcription language=%s%s ! fakesink"
        % (source, args.language, model)
    )
    srt = open(args.srt, "w", encoding="utf-8") if args.srt else None
    count = 0
    loop = GLib.MainLoop()
    status = {"code": 0}

    def on_message(_bus, message):
        nonlocal count
        if message.type == Gst.MessageType.ELEMENT:
            s = message.get_structure()
            if s.get_name() == "whisperencnpu-segment":
                start, end = s.get_uint64("start")[1], s.get_uint64("end")[1]
                text = s.get_string("text")
                if args.plain:
                    print(text, flush=True)
                else:
                    print("[%s --> %s] %s" % (srt_time(start), srt_time(end), text), flush=True)
                if srt:
                    count += 1
                    srt.write("%d\n%s --> %s\n%s\n\n" % (count, srt_time(start), srt_time(end), text))
        elif message.type == Gst.MessageType.ERROR:
            err, debug = message.parse_error()
            print("error: %s (%s)" % (err.message, debug), file=sys.stderr)
            status["code"] = 1
            loop.quit()
        elif message.type == Gst.MessageType.EOS:
            loop.quit()

    bus = pipeline.get_bus()
    bus.add_signal_watch()
    bus.connect("message", on_message)
    if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
        # The error message on the bus says why.
        loop.run()
        status["code"] = 1
    else:
        try:
            loop.run()
        except KeyboardInterrupt:
            pass
    pipeline.set_state(Gst.State.NULL)
    if srt:
        srt.close()
    return status["code"]


if __name__ == "__main__":
    sys.exit(main())
