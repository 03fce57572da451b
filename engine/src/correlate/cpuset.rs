//! CPU lists in the kernel's notation (`0-3,8`), as recommendation parameters carry them.

use std::collections::BTreeSet;
use std::fmt::Write as _;

/// Formats a set of CPU (or vCPU) numbers as a kernel CPU list: ranges of three or more
/// consecutive numbers as `a-b`, pairs as `a-b` too, singles alone, joined by commas
/// (`{1, 2, 3, 5}` → `1-3,5`). Empty for an empty set.
#[must_use]
pub fn format_cpu_list(cpus: &BTreeSet<u32>) -> String {
    let mut out = String::new();
    let mut iter = cpus.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while let Some(&next) = iter.peek() {
            if Some(next) == end.checked_add(1) {
                end = next;
                iter.next();
            } else {
                break;
            }
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            let _ = write!(out, "{start}");
        } else {
            let _ = write!(out, "{start}-{end}");
        }
    }
    out
}

/// Parses a kernel CPU list (`0-3,8`); `None` if any part is malformed or a range runs
/// backwards. Whitespace around parts is allowed. Ranges are capped at 4096 CPUs so a hostile
/// `0-4294967295` cannot allocate without bound.
#[must_use]
pub fn parse_cpu_list(list: &str) -> Option<BTreeSet<u32>> {
    const MAX_RANGE: u32 = 4096;
    let mut out = BTreeSet::new();
    for part in list.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return None;
        }
        match part.split_once('-') {
            Some((a, b)) => {
                let a: u32 = a.trim().parse().ok()?;
                let b: u32 = b.trim().parse().ok()?;
                if b < a || b - a >= MAX_RANGE {
                    return None;
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(part.parse().ok()?);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cpus: &[u32]) -> BTreeSet<u32> {
        cpus.iter().copied().collect()
    }

    #[test]
    fn lists_format_as_the_kernel_writes_them() {
        assert_eq!(format_cpu_list(&set(&[])), "");
        assert_eq!(format_cpu_list(&set(&[1])), "1");
        assert_eq!(format_cpu_list(&set(&[2, 3])), "2-3");
        assert_eq!(format_cpu_list(&set(&[1, 3])), "1,3");
        assert_eq!(
            format_cpu_list(&set(&[0, 1, 2, 3, 8, 10, 11])),
            "0-3,8,10-11"
        );
        assert_eq!(
            format_cpu_list(&set(&[u32::MAX - 1, u32::MAX])),
            format!("{}-{}", u32::MAX - 1, u32::MAX)
        );
    }

    #[test]
    fn lists_parse_back_and_bad_ones_are_refused() {
        for cpus in [&[1][..], &[2, 3], &[1, 3], &[0, 1, 2, 3, 8, 10, 11]] {
            let s = set(cpus);
            assert_eq!(parse_cpu_list(&format_cpu_list(&s)), Some(s));
        }
        assert_eq!(parse_cpu_list(" 1 , 4-5 "), Some(set(&[1, 4, 5])));
        for bad in ["", "a", "1,", "3-1", "1-", "-1", "0-4294967295", "1--2"] {
            assert_eq!(parse_cpu_list(bad), None, "{bad:?}");
        }
    }
}
