#!/usr/bin/env python3
"""Scores transcriptions of a clip set against its references, several systems side by side, every
one with the same normaliser and word alignment, for scripts/eval.

    score_eval.py --manifest MANIFEST.tsv --title TITLE NAME=HYPOTHESES.tsv [NAME=HYPOTHESES.tsv ...]

MANIFEST.tsv: a header line, then `FILE<TAB>REFERENCE` (FILE relative to the manifest's folder).
HYPOTHESES.tsv: lines `FILE<TAB>TEXT<TAB>SECONDS<TAB>AUDIO_SECONDS` (lines starting with `#` are
comments: versions, settings); FILE relative to the manifest's folder (else to the current one) or
absolute, TEXT the clip's
whole transcription, SECONDS the wall time spent on it. Both examples/eval.rs (--hypotheses) and
scripts/faster_whisper_eval.py write this.

Text is normalised with OpenAI's EnglishTextNormalizer (the `whisper-normalizer` package: lower
case, punctuation and fillers removed, British spellings and numbers made uniform), and words are
aligned with `jiwer`: word error rate = (substitutions + deletions + insertions) / reference words,
per clip and over the whole set (errors summed, not rates averaged). Deletions are shown on their
own: they are the words a system lost.

Prints a table; exits 1 when a system has no text for a clip of the manifest.

    score_eval.py ... --parts PARTS.tsv

For a join (one file of many clips, `examples/eval --write-join`): PARTS.tsv has a header line,
then `ROUND<TAB>CLIP<TAB>REFERENCE` for each part in order. Each system's whole text is aligned
with the parts' normalised words once, every error charged to the part its reference word is in
(an insertion to the part of the word before it), and errors are shown per part and per round:
where in a long run a system loses words. (The parts are normalised one by one, so the sum can
differ from the whole text's count by a word where a number spans two parts.)
"""
import argparse
import os
import sys

import jiwer
from whisper_normalizer.english import EnglishTextNormalizer


def read_manifest(path):
    base = os.path.dirname(os.path.abspath(path))
    clips = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            cols = line.rstrip("\n").split("\t")
            if i == 0 or len(cols) < 2:
                continue
            clips.append((cols[0], os.path.realpath(os.path.join(base, cols[0])), cols[1]))
    return base, clips


def read_hypotheses(path, base):
    """Text, seconds and audio seconds by the file's real path."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                continue
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 4:
                continue
            key = os.path.realpath(os.path.join(base, cols[0]))
            if not os.path.exists(key):  # relative to where it was run
                key = os.path.realpath(cols[0])
            out[key] = (cols[1], float(cols[2]), float(cols[3]))
    return out


def errors(reference, hypothesis):
    """(substitutions + deletions + insertions, deletions) of normalised texts."""
    if not hypothesis.split():
        return len(reference.split()), len(reference.split())
    o = jiwer.process_words(reference, hypothesis)
    return o.substitutions + o.deletions + o.insertions, o.deletions


def read_parts(path):
    """(round, clip, reference) of each part of a join, in order."""
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    return [(r[0], r[1], r[2]) for r in rows if len(r) >= 3]


def errors_per_part(part_words, hypothesis):
    """Errors of `hypothesis` charged to the parts whose reference words they fall in."""
    owner = [i for i, words in enumerate(part_words) for _ in words]
    per = [0] * len(part_words)
    reference = " ".join(w for words in part_words for w in words)
    if not owner:
        return per
    if not hypothesis.split():
        return [len(words) for words in part_words]
    for a in jiwer.process_words(reference, hypothesis).alignments[0]:
        if a.type == "insert":
            per[owner[max(a.ref_start_idx - 1, 0)]] += a.hyp_end_idx - a.hyp_start_idx
        elif a.type != "equal":
            for k in range(a.ref_start_idx, a.ref_end_idx):
                per[owner[k]] += 1
    return per


def print_parts(parts, systems, key, normalise):
    part_words = [normalise(reference).split() for _, _, reference in parts]
    per_system = [errors_per_part(part_words, normalise(hyps[key][0])) for _, hyps in systems]
    print()
    header = f"{'round':>5} {'part':<34} {'words':>6}"
    for name, _ in systems:
        header += f" | {name[:22]:>22}"
    print(header)
    rounds = {}
    for i, (rnd, clip, _) in enumerate(parts):
        row = f"{rnd:>5} {clip[:34]:<34} {len(part_words[i]):>6}"
        totals = rounds.setdefault(rnd, [0] * (len(systems) + 1))
        totals[0] += len(part_words[i])
        for j, per in enumerate(per_system):
            row += f" | {per[i]:>22}"
            totals[j + 1] += per[i]
        print(row)
    for rnd, totals in rounds.items():
        row = f"{rnd:>5} {'round ' + rnd:<34} {totals[0]:>6}"
        for e in totals[1:]:
            row += f" | {e:>5} {e / max(totals[0], 1):>16.3f}"
        print(row)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--title", default="")
    p.add_argument("--parts", help="ROUND<TAB>CLIP<TAB>REFERENCE of a join's parts")
    p.add_argument("systems", nargs="+", help="NAME=HYPOTHESES.tsv")
    a = p.parse_args()

    normalise = EnglishTextNormalizer()
    base, clips = read_manifest(a.manifest)
    systems = []
    for s in a.systems:
        name, _, path = s.partition("=")
        systems.append((name, read_hypotheses(path, base)))
    for name, hyps in systems:
        missing = [c for c, key, _ in clips if key not in hyps]
        if missing:
            print(f"score_eval: {name} has no text for {', '.join(missing)}", file=sys.stderr)
            return 1

    if a.title:
        print(f"== {a.title}")
    header = f"{'clip':<40} {'words':>6}"
    for name, _ in systems:
        header += f" | {name[:22]:>22}"
    print(header)
    sub = f"{'':<40} {'':>6}"
    for _ in systems:
        sub += f" | {'err':>5} {'del':>4} {'WER':>6} {'RTF':>5}"
    print(sub)
    total_words = 0
    totals = [[0, 0, 0.0, 0.0] for _ in systems]  # errors, deletions, seconds, audio seconds
    for clip, key, reference in clips:
        ref = normalise(reference)
        n = len(ref.split())
        total_words += n
        row = f"{clip[:40]:<40} {n:>6}"
        for (name, hyps), t in zip(systems, totals):
            text, seconds, audio = hyps[key]
            e, d = errors(ref, normalise(text))
            t[0] += e
            t[1] += d
            t[2] += seconds
            t[3] += audio
            row += f" | {e:>5} {d:>4} {e / max(n, 1):>6.3f} {seconds / max(audio, 1e-9):>5.3f}"
        print(row)
    row = f"{'overall':<40} {total_words:>6}"
    for t in totals:
        row += f" | {t[0]:>5} {t[1]:>4} {t[0] / max(total_words, 1):>6.3f} {t[2] / max(t[3], 1e-9):>5.3f}"
    print(row)
    if a.parts:
        if len(clips) != 1:
            print("score_eval: --parts needs a manifest of one (joined) file", file=sys.stderr)
            return 1
        print_parts(read_parts(a.parts), systems, clips[0][1], normalise)
    return 0


if __name__ == "__main__":
    sys.exit(main())
