//! The next panel's weights, prefetched into L2 while a panel is walked (both kernels).
//!
//! The lines are shared among the kernel calls that walk the panel ([`Prefetch::share`]) and, in
//! each call, spread over its groups of inputs ([`Spread`]): issued in a burst before each call,
//! they stalled on the fill buffers (~4% of the encoder).
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};

/// Bytes per cache line.
pub(super) const LINE: usize = 64;

/// Cache lines from `at` for one kernel call to prefetch into L2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Prefetch {
    at: *const u8,
    lines: usize,
}

impl Prefetch {
    /// Call `call`'s share of the `lines` lines from `next` when `calls` calls walk the panel:
    /// equal shares in call order, the last ones shorter or empty.
    pub(super) fn share(next: *const u8, lines: usize, call: usize, calls: usize) -> Prefetch {
        let per = lines.div_ceil(calls.max(1));
        let first = (call * per).min(lines);
        Prefetch {
            at: next.wrapping_add(first * LINE),
            lines: ((call + 1) * per).min(lines) - first,
        }
    }

    /// The lines spread over a kernel's `groups` groups of inputs.
    #[inline(always)]
    pub(super) fn spread(self, groups: usize) -> Spread {
        Spread {
            next: self.at,
            issued: 0,
            lines: self.lines,
            groups,
        }
    }
}

/// A kernel call's prefetches as it walks its groups of inputs.
pub(super) struct Spread {
    next: *const u8,
    issued: usize,
    lines: usize,
    groups: usize,
}

impl Spread {
    /// Before group `g` (of `groups`): issues the lines due by its end.
    ///
    /// # Safety
    /// The lines are within one allocation (a prefetch does not fault, but the pointer
    /// arithmetic must stay in bounds).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(super) unsafe fn before_group(&mut self, g: usize) {
        while self.issued < (g + 1) * self.lines / self.groups {
            self.issue();
        }
    }

    /// After the groups: the lines left (all of them when the call has no whole group).
    ///
    /// # Safety
    /// As [`Self::before_group`].
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(super) unsafe fn rest(&mut self) {
        while self.issued < self.lines {
            self.issue();
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn issue(&mut self) {
        _mm_prefetch::<_MM_HINT_T1>(self.next.cast());
        self.next = self.next.add(LINE);
        self.issued += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_shared_among_calls() {
        /// Each call's first line and how many lines it issues.
        type Shares = &'static [(usize, usize)];
        // (lines, calls, each call's share)
        let table: &[(usize, usize, Shares)] = &[
            (8, 4, &[(0, 2), (2, 2), (4, 2), (6, 2)]),
            (9, 4, &[(0, 3), (3, 3), (6, 3), (9, 0)]),
            (2, 4, &[(0, 1), (1, 1), (2, 0), (2, 0)]),
            (0, 3, &[(0, 0), (0, 0), (0, 0)]),
            (5, 0, &[(0, 5)]),
        ];
        let base = std::ptr::null::<u8>();
        for &(lines, calls, expected) in table {
            for (call, &(first, n)) in expected.iter().enumerate() {
                let got = Prefetch::share(base, lines, call, calls);
                let want = Prefetch {
                    at: base.wrapping_add(first * LINE),
                    lines: n,
                };
                assert_eq!(got, want, "{lines} lines, {calls} calls: call {call}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_line_issued_once_spread_over_the_groups() {
        // (lines, groups, lines issued by the end of each group)
        let table: &[(usize, usize, &[usize])] = &[
            (4, 4, &[1, 2, 3, 4]),
            (2, 4, &[0, 1, 1, 2]),
            (5, 2, &[2, 5]),
            (3, 0, &[]),
        ];
        let lines_buf = vec![0u8; 8 * LINE];
        for &(lines, groups, due) in table {
            let mut s = Prefetch {
                at: lines_buf.as_ptr(),
                lines,
            }
            .spread(groups);
            for (g, &n) in due.iter().enumerate() {
                unsafe { s.before_group(g) };
                assert_eq!(s.issued, n, "{lines} lines over {groups} groups: group {g}");
            }
            unsafe { s.rest() };
            assert_eq!(s.issued, lines, "{lines} lines over {groups} groups: all");
            assert_eq!(
                s.next,
                lines_buf.as_ptr().wrapping_add(lines * LINE),
                "{lines} lines over {groups} groups: next line"
            );
        }
    }
}
