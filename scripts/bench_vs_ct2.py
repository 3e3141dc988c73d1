"""Our encoder against CTranslate2's, same mel, same weights, same thread count, one run; and
the report of the element's run on a long input (--element-report).

Driven by scripts/bench-vs-ct2 (which makes the venv and builds the Rust side). CTranslate2 runs in
this process; ours runs in `encoder_bench --serve` processes (one per precision) that encode once
per `run` line. After a warm-up, the two engines take turns, a few runs each (one untimed, then
--per-round timed), the order flipping every round: both see the same machine noise. Prints
medians, the ratio ours / CT2, and the relative L2 error of each output against the CTranslate2
float32 reference of the golden data.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def rel_l2(a, ref):
    a = np.asarray(a, dtype=np.float64).reshape(ref.shape)
    ref = ref.astype(np.float64)
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


class Ours:
    """One `encoder_bench --serve` process."""

    def __init__(self, exe, model_dir, precision, threads, mel, warmup, save):
        cmd = [
            exe, "--serve", "--model", model_dir, "--precision", precision,
            "--threads", str(threads), "--mel", mel, "--warmup", str(warmup), "--save", save,
        ]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = self._read()
        if not ready.get("ready"):
            raise SystemExit(f"encoder_bench did not start: {ready}")

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"encoder_bench exited (status {self.proc.wait()})")
        return json.loads(line)

    def run(self):
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self._read()["ms"]

    def close(self):
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        if self.proc.wait() != 0:
            raise SystemExit("encoder_bench failed")


def element_report(gst_log, time_log, label):
    """Realtime factor and peak memory of a `gst-launch-1.0 -m ... whisperencnpu ...` run."""
    text = open(gst_log, encoding="utf-8", errors="replace").read()
    field = lambda name: [int(v) for v in re.findall(rf"{name}=\(guint64\)(\d+)", text)]
    audio, processing, encoder = field("audio-duration"), field("processing-time"), field("encoder-time")
    if not audio:
        raise SystemExit(f"no whisperencnpu-timing messages in {gst_log}")
    tv = open(time_log, encoding="utf-8").read()
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", tv)[1])
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", tv)[1]
    wall_s = sum(float(x) * 60**i for i, x in enumerate(reversed(wall.split(":"))))
    audio_s = sum(audio) / 1e9
    proc_s = sum(processing) / 1e9
    enc_ms = sorted(encoder)[len(encoder) // 2] / 1e6
    print(
        f"element {label}: {len(audio)} windows, {audio_s:.1f} s of audio; whole process (start-up, "
        f"model load, warm-up window, every window) {wall_s:.2f} s: {audio_s / wall_s:.1f}x "
        f"realtime; the windows' processing (mel + encoder, summed) {proc_s:.2f} s: "
        f"{audio_s / proc_s:.1f}x; median encoder {enc_ms:.1f} ms per window; "
        f"peak RSS {rss_kib / 1024:.0f} MiB"
    )
    print("json " + json.dumps({
        "label": label, "windows": len(audio), "audio_s": audio_s, "wall_s": wall_s,
        "realtime_factor": audio_s / wall_s, "processing_s": proc_s,
        "processing_realtime_factor": audio_s / proc_s, "median_encoder_ms": enc_ms,
        "peak_rss_mib": rss_kib / 1024,
    }))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--element-report", help="gst-launch -m log: report the element's run")
    ap.add_argument("--time-report", help="/usr/bin/time -v output of that run")
    ap.add_argument("--label", default="")
    ap.add_argument("--ours", help="path of the encoder_bench example")
    ap.add_argument("--model-dir")
    ap.add_argument("--mel")
    ap.add_argument("--golden", help="CT2 float32 encoder output for --mel")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=3, help="timed runs per engine and round")
    ap.add_argument("--pause", type=float, default=0.02, help="seconds between the engines' turns")
    ap.add_argument("--precisions", default="f32,int8")
    args = ap.parse_args()
    if args.element_report:
        return element_report(args.element_report, args.time_report, args.label)
    for need in ("ours", "model_dir", "mel", "golden"):
        if getattr(args, need) is None:
            ap.error(f"--{need.replace('_', '-')} is required")

    import ctranslate2

    mel = np.load(args.mel).astype(np.float32)
    golden = np.load(args.golden)
    features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None]))
    ct2_types = {"f32": "float32", "int8": "int8"}
    model_name = os.path.basename(os.path.normpath(args.model_dir))
    print(
        f"model {model_name}, mel {os.path.basename(args.mel)} {mel.shape[0]}x{mel.shape[1]}, "
        f"{args.threads} threads, {args.runs} timed runs each after {args.warmup} warm-up, in turns of "
        f"{args.per_round}, "
        f"ctranslate2 {ctranslate2.__version__}"
    )

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for prec in args.precisions.split(","):
            ct2 = ctranslate2.models.Whisper(
                args.model_dir, device="cpu", compute_type=ct2_types[prec],
                intra_threads=args.threads, inter_threads=1,
            )
            save = os.path.join(tmp, f"ours_{prec}.npy")
            ours = Ours(args.ours, args.model_dir, prec, args.threads, args.mel, args.warmup, save)
            ct2_out = None
            for _ in range(args.warmup):
                ct2_out = ct2.encode(features)
            t_ct2, t_ours = [], []
            # Rounds: each engine in turn (the order flips every round) runs once untimed (its
            # threads wake up and its caches refill after the other engine's turn), then
            # --per-round timed runs back to back. Both see the same machine noise, and neither
            # is timed cold nor while the other's worker threads still spin.
            rounds = -(-args.runs // args.per_round)
            for i in range(rounds):
                order = ("ct2", "ours") if i % 2 == 0 else ("ours", "ct2")
                for who in order:
                    time.sleep(args.pause)
                    for j in range(args.per_round + 1):
                        if who == "ct2":
                            t0 = time.perf_counter()
                            ct2_out = ct2.encode(features)
                            dt = (time.perf_counter() - t0) * 1e3
                            if j:
                                t_ct2.append(dt)
                        else:
                            dt = ours.run()
                            if j:
                                t_ours.append(dt)
            ours.close()
            ct2_arr = np.array(ct2_out)
            ours_arr = np.load(save)
            del ct2
            results.append((prec, t_ct2, t_ours, rel_l2(ct2_arr, golden), rel_l2(ours_arr, golden)))

    def q(v, p):
        return float(np.percentile(v, p))

    print()
    print(f"{'precision':<10}{'engine':<8}{'median ms':>10}{'p10':>8}{'p90':>8}{'rel L2 vs golden':>19}")
    summary = {}
    for prec, t_ct2, t_ours, e_ct2, e_ours in results:
        for name, t, e in (("ct2", t_ct2, e_ct2), ("ours", t_ours, e_ours)):
            print(f"{prec:<10}{name:<8}{statistics.median(t):>10.1f}{q(t, 10):>8.1f}{q(t, 90):>8.1f}{e:>19.3e}")
        ratio = statistics.median(t_ours) / statistics.median(t_ct2)
        summary[prec] = {
            "ct2_median_ms": statistics.median(t_ct2),
            "ours_median_ms": statistics.median(t_ours),
            "ratio": ratio,
            "ct2_rel_l2": e_ct2,
            "ours_rel_l2": e_ours,
        }
    print()
    for prec, s in summary.items():
        verdict = "meets" if s["ratio"] <= 0.8 else "MISSES"
        print(f"{prec}: ours / CT2 = {s['ratio']:.3f} ({verdict} the <= 0.8 target)")
    print("json " + json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
