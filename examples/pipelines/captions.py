#!/usr/bin/python3
"""Embeds a whisperencnpu pipeline in a Python application and shows captions as they come.

Usage: captions.py [AUDIO_FILE] [--srt OUT.srt] [--plain] [--model DIR] [--language en]
                   [--latency-mode auto|low|full] [--overlay] [--set PROP=VALUE ...]
Without a file it listens to the microphone (pulsesrc), and `latency-mode=auto` picks the
low-latency mode for it: on a terminal the words not yet committed are shown in place (they may
still change) and each segment is printed once it is final. Segments come from the element's
`whisperencnpu-segment` bus messages, interim text from `whisperencnpu-partial`; with --srt the
segments are also written as SubRip subtitles. With --overlay the captions are drawn over a video
(rolling: the last two lines of committed text, then the interim words in grey); SOURCE, VIDEO and
SINK in the environment replace the pipeline's parts. Run from anywhere: the plugin is looked up in
the project's target/release.
"""
import argparse
import os
import sys
import textwrap

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GLib, Gst  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "target", "release"))
# Rolling captions: at most this many lines of this many characters (broadcast captions' 2 x 42).
CAPTION_LINES = 2
CAPTION_WIDTH = 42


def srt_time(ns):
    ms = ns // 1_000_000
    return "%02d:%02d:%02d,%03d" % (ms // 3_600_000, ms // 60_000 % 60, ms // 1000 % 60, ms % 1000)


def markup_escape(text):
    return GLib.markup_escape_text(text, -1)


class Captions:
    """What is on screen: final and committed text (rolling), then the interim words."""

    def __init__(self):
        self.final = ""  # closed segments
        self.committed = ""  # committed words of the segment still open
        self.interim = ""  # words that may still change

    def close(self, text):
        # Keep a few lines' worth: the rest has scrolled away.
        self.final = (self.final + " " + text).strip()[-(CAPTION_LINES * CAPTION_WIDTH * 2):]
        self.committed = ""

    def lines(self):
        text = (self.final + " " + self.committed).strip()
        if self.interim:
            text += " \x00" + self.interim
        return textwrap.wrap(text, CAPTION_WIDTH)[-CAPTION_LINES:]

    def markup(self):
        out = []
        for line in self.lines():
            if "\x00" in line:
                stable, interim = line.split("\x00", 1)
                out.append(markup_escape(stable) + '<span foreground="#bbbbbb">%s</span>'
                           % markup_escape(interim))
            else:
                out.append(markup_escape(line))
        return "\n".join(out).replace("\x00", "")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", help="audio file (default: the microphone)")
    parser.add_argument("--srt", help="also write the segments to this .srt file")
    parser.add_argument("--plain", action="store_true", help="print the text only, a segment a line")
    parser.add_argument("--model", help="model directory (default: the element's, Whisper base)")
    parser.add_argument("--language", default="en", help="Whisper language code")
    parser.add_argument("--latency-mode", default="auto", choices=["auto", "low", "full"],
                        help="low: captions within seconds; full: whole windows (default: low "
                             "for a live source)")
    parser.add_argument("--overlay", action="store_true", help="draw rolling captions over video")
    parser.add_argument("--set", action="append", default=[], metavar="PROP=VALUE",
                        help="another property of the element")
    args = parser.parse_args()

    os.environ["GST_PLUGIN_PATH"] = PLUGIN_DIR + os.pathsep + os.environ.get("GST_PLUGIN_PATH", "")
    Gst.init(None)
    if "SOURCE" in os.environ:
        source = os.environ["SOURCE"]
    elif args.file:
        source = 'filesrc location="%s" ! decodebin' % args.file
    else:
        source = "pulsesrc"
    props = ["mode=transcription", "language=%s" % args.language,
             "latency-mode=%s" % args.latency_mode]
    if args.model:
        props.append('model="%s"' % args.model)
    props += args.set
    audio = "%s ! audioconvert ! audioresample ! whisperencnpu %s ! fakesink" % (
        source, " ".join(props))
    if args.overlay:
        video = os.environ.get("VIDEO", "videotestsrc is-live=true pattern=smpte")
        sink = os.environ.get("SINK", "autovideosink")
        audio = ("%s ! video/x-raw,width=1280,height=720,framerate=25/1 ! textoverlay name=overlay "
                 'valignment=bottom halignment=left line-alignment=left font-desc="Sans 20" '
                 "wait-text=false ! videoconvert ! %s  %s" % (video, sink, audio))
    pipeline = Gst.parse_launch(audio)
    overlay = pipeline.get_by_name("overlay") if args.overlay else None
    captions = Captions()
    interactive = sys.stdout.isatty() and not args.plain
    srt = open(args.srt, "w", encoding="utf-8") if args.srt else None
    count = 0
    loop = GLib.MainLoop()
    status = {"code": 0}

    def show_interim(text):
        if interactive:
            sys.stdout.write("\r\033[K\033[2m%s\033[0m" % text[-150:])
            sys.stdout.flush()

    def on_message(_bus, message):
        nonlocal count
        if message.type == Gst.MessageType.ELEMENT:
            s = message.get_structure()
            if s.get_name() == "whisperencnpu-segment":
                start, end = s.get_uint64("start")[1], s.get_uint64("end")[1]
                text = s.get_string("text")
                if interactive:
                    sys.stdout.write("\r\033[K")
                if args.plain:
                    print(text, flush=True)
                else:
                    print("[%s --> %s] %s" % (srt_time(start), srt_time(end), text), flush=True)
                if srt:
                    count += 1
                    srt.write("%d\n%s --> %s\n%s\n\n" % (count, srt_time(start), srt_time(end), text))
                captions.close(text)
            elif s.get_name() == "whisperencnpu-partial":
                captions.committed = s.get_string("committed") or ""
                captions.interim = s.get_string("text") or ""
                show_interim((captions.committed + " " + captions.interim).strip())
            if overlay is not None:
                overlay.set_property("text", captions.markup())
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
    if interactive:
        sys.stdout.write("\r\033[K")
    pipeline.set_state(Gst.State.NULL)
    if srt:
        srt.close()
    return status["code"]


if __name__ == "__main__":
    sys.exit(main())
