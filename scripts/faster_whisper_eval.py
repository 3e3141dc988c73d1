#!/usr/bin/env python3
"""Transcribes WAV files with faster-whisper, for examples/eval.rs --faster-whisper.

    faster_whisper_eval.py --model-dir DIR [--threads N] [--language en|auto] [--beam N]
                           [--no-prompt] WAV ...

Loads the CTranslate2 model directory as it is (the one our engine reads: model.bin, config.json,
tokenizer.json), on the CPU in float32, and never downloads anything. Decoding is faster-whisper's
default but for the options given: greedy (beam_size 1) unless --beam, best_of 5, the temperature
fallback 0.0, 0.2, ... 1.0 with its thresholds, condition_on_previous_text unless --no-prompt, no
VAD.

Prints on stdout a first line `#<TAB>faster-whisper<TAB>VERSION<TAB>ctranslate2<TAB>VERSION`, then
one line per file, in the order given:

    FILE<TAB>TEXT<TAB>SECONDS<TAB>AUDIO_SECONDS

TEXT is the segments' texts joined (tabs and newlines made spaces), SECONDS the wall time of the
transcription (decoding the file, features, every segment; the model is loaded before),
AUDIO_SECONDS the duration of the file.
"""
import argparse
import os
import sys
import time

# A local directory is never looked up on the hub; make sure nothing else is either.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, help="CTranslate2 Whisper model directory")
    p.add_argument("--threads", type=int, default=2, help="cpu_threads (default 2)")
    p.add_argument("--language", default="en", help="language code, or auto (default en)")
    p.add_argument("--beam", type=int, default=1, help="beam_size (default 1: greedy)")
    p.add_argument("--no-prompt", action="store_true", help="condition_on_previous_text=False")
    p.add_argument("files", nargs="+", help="16 kHz WAV files")
    a = p.parse_args()

    if not os.path.isfile(os.path.join(a.model_dir, "model.bin")):
        print(f"faster_whisper_eval: {a.model_dir}/model.bin is missing", file=sys.stderr)
        return 1
    import ctranslate2
    import faster_whisper
    from faster_whisper import WhisperModel

    model = WhisperModel(
        a.model_dir,
        device="cpu",
        compute_type="float32",
        cpu_threads=a.threads,
        local_files_only=True,
    )
    print(f"#\tfaster-whisper\t{faster_whisper.__version__}\tctranslate2\t{ctranslate2.__version__}", flush=True)
    for f in a.files:
        started = time.perf_counter()
        segments, info = model.transcribe(
            f,
            language=None if a.language == "auto" else a.language,
            beam_size=a.beam,
            condition_on_previous_text=not a.no_prompt,
            vad_filter=False,
        )
        # The segments are decoded as the generator is consumed.
        text = "".join(s.text for s in segments)
        seconds = time.perf_counter() - started
        text = " ".join(text.replace("\t", " ").split())
        print(f"{f}\t{text}\t{seconds:.3f}\t{info.duration:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
