use super::loudness::{trim_to_speech, Span};
use super::segments::{kept_by_word_ends, split_segments};
use super::*;

fn tokenizer() -> Tokenizer {
    // Ids 0..4 text, 5 <|endoftext|>, 6 <|startoftranscript|>, 7 <|notimestamps|>, 8.. timestamps.
    let json = serde_json::json!({
        "model": {"type": "BPE", "vocab": {"ĠA": 0, "ĠB": 1, "ĠC": 2, ".": 3, "ĠD": 4}, "merges": []},
        "added_tokens": [
            {"id": 5, "content": "<|endoftext|>", "special": true},
            {"id": 6, "content": "<|startoftranscript|>", "special": true},
            {"id": 7, "content": "<|notimestamps|>", "special": true}
        ]
    });
    Tokenizer::from_json(&json, 600).unwrap()
}

#[test]
fn segments_split_at_timestamp_pairs() {
    let t = tokenizer();
    let ts = |i: u32| 8 + i;
    // <0.00> A B <1.00><1.20> C . <2.00><3.00> D
    let toks = [ts(0), 0, 1, ts(50), ts(60), 2, 3, ts(100), ts(150), 4];
    let s = split_segments(&t, &toks);
    assert_eq!(s.len(), 3);
    assert_eq!((s[0].start, s[0].end), (0, Some(50)));
    assert_eq!(s[0].tokens, vec![ts(0), 0, 1, ts(50)]);
    assert_eq!((s[1].start, s[1].end), (60, Some(100)));
    assert_eq!((s[2].start, s[2].end), (150, None));
    assert_eq!(s[2].tokens, vec![ts(150), 4]);
    // A trailing lone start timestamp.
    let s = split_segments(&t, &[ts(0), 0, ts(20), ts(30)]);
    assert_eq!(s.len(), 2);
    assert_eq!((s[1].start, s[1].end), (30, None));
    assert_eq!(t.decode(&toks), " A B C. D");
}

#[test]
fn segments_trimmed_to_speech() {
    // Frames 0..10 quiet, 10..20 loud, 20..30 quiet; window from sample 1000.
    let loud: Vec<bool> = (0..30).map(|f| (10..20).contains(&f)).collect();
    assert_eq!(
        trim_to_speech(&loud, 1000, 1000, 1000 + 30 * 320),
        Span::new(1000 + 5 * 320, 1000 + 25 * 320)
    );
    // Never widened, and left alone without loud frames.
    assert_eq!(
        trim_to_speech(&loud, 1000, 1000 + 12 * 320, 1000 + 14 * 320),
        Span::new(1000 + 12 * 320, 1000 + 14 * 320)
    );
    assert_eq!(
        trim_to_speech(&loud, 1000, 1000, 1000 + 5 * 320),
        Span::new(1000, 1000 + 5 * 320)
    );
}

#[test]
fn share_of_a_segment_in_audio_shown() {
    // (segment start, end, where the text shown ends, share before it): samples.
    let table: &[(u64, u64, u64, f64)] = &[
        (100, 200, 50, 0.0),
        (100, 200, 100, 0.0),
        (100, 200, 150, 0.5),
        (100, 200, 190, 0.9),
        (100, 200, 300, 1.0),
        (100, 100, 150, 1.0),
        (100, 100, 100, 0.0),
    ];
    for &(start, end, at, share) in table {
        let got = share_before(start, end, at);
        assert!(
            (got - share).abs() < 1e-12,
            "{start}..{end} before {at}: {got}, expected {share}"
        );
    }
    // The rule's threshold: half.
    assert!(share_before(100, 200, 150) >= MAX_SHOWN_SHARE);
    assert!(share_before(100, 200, 149) < MAX_SHOWN_SHARE);
}

#[test]
fn segments_whose_words_run_into_the_window_end_held_back() {
    // (aligned word ends, segments kept) for a window ending at 1000 with a margin of 100.
    let table: &[(&[Option<u64>], usize)] = &[
        (&[Some(300), Some(600)], 2),
        (&[Some(300), Some(900)], 2),
        (&[Some(300), Some(901)], 1),
        (&[Some(300), Some(950), Some(990)], 1),
        (&[Some(300), Some(950), Some(600)], 3),
        // Not aligned: judged by its timestamps only.
        (&[Some(300), None], 2),
        // Never the first.
        (&[Some(990)], 1),
        (&[Some(950), Some(990)], 1),
        (&[], 0),
    ];
    for &(ends, kept) in table {
        assert_eq!(
            kept_by_word_ends(ends, 1000, 100),
            kept,
            "word ends {ends:?}"
        );
    }
}

#[test]
fn a_segment_running_into_the_windows_end_is_cut_after_its_last_sentence() {
    let t = tokenizer();
    let ts = |i: u32| 8 + i;
    let sec = |s: f64| (s * f64::from(SAMPLE_RATE)) as u64;
    // Words as (tokens, start s) of one segment of a window starting at 100 s; its end timestamp
    // is <|7.00|>.
    let segment = |words: &[(&[u32], f64)]| Emit {
        start: sec(100.0),
        end: sec(107.0),
        tokens: std::iter::once(ts(0))
            .chain(words.iter().flat_map(|(t, _)| t.iter().copied()))
            .chain(std::iter::once(ts(350)))
            .collect(),
        words: Some(Span::new(sec(100.0), sec(107.0))),
        word_list: words
            .iter()
            .enumerate()
            .map(|(i, (tokens, at))| Word {
                text: t.decode(tokens).trim().to_string(),
                start_sample: sec(*at),
                end_sample: words.get(i + 1).map_or(sec(107.0), |w| sec(w.1)),
            })
            .collect(),
    };
    /// A segment's words as (tokens, start s), the tokens it keeps, and the cut (s: where the
    /// next window starts), or none: left as it was.
    struct Case<'a> {
        name: &'a str,
        words: &'a [(&'a [u32], f64)],
        kept: &'a [u32],
        cut: Option<f64>,
    }
    let table = [
        Case {
            name: "the words after the last sentence are held back",
            words: &[
                (&[0, 3], 100.5),
                (&[1], 103.0),
                (&[2, 3], 105.0),
                (&[4], 109.8),
            ],
            kept: &[ts(0), 0, 3, 1, 2, 3, ts(490)],
            cut: Some(109.8),
        },
        Case {
            name: "the last sentence cut by the window's end is held back",
            words: &[
                (&[0, 3], 100.5),
                (&[1], 103.0),
                (&[2], 105.0),
                (&[4], 109.8),
            ],
            kept: &[ts(0), 0, 3, ts(150)],
            cut: Some(103.0),
        },
        Case {
            name: "no sentence ends before the last word: kept whole",
            words: &[(&[0], 100.5), (&[1], 103.0), (&[2, 3], 109.8)],
            kept: &[ts(0), 0, 1, 2, 3, ts(350)],
            cut: None,
        },
        Case {
            name: "a cut less than a second in would not move on",
            words: &[(&[0, 3], 100.2), (&[1], 100.6), (&[2], 109.8)],
            kept: &[ts(0), 0, 3, 1, 2, ts(350)],
            cut: None,
        },
    ];
    for Case {
        name: case,
        words,
        kept,
        cut: cut_at,
    } in table
    {
        let mut e = segment(words);
        let cut = super::words::cut_after_last_sentence(&t, &mut e, sec(100.0), sec(101.0));
        assert_eq!(cut, cut_at.map(sec), "{case}: cut");
        assert_eq!(e.tokens, kept, "{case}: tokens kept");
        if let Some(cut) = cut {
            assert_eq!(e.end, cut, "{case}: end");
            assert_eq!(e.words.map(|w| w.end), Some(cut), "{case}: words' end");
            assert_eq!(
                e.word_list.last().map(|w| w.end_sample),
                Some(cut),
                "{case}: last word's end"
            );
        }
    }
}
