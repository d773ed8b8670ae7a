//! RFC 3339 event times in the shape nearly every feed writes them,
//! `2013-01-01T10:00:00Z` (with or without fractional seconds, `Z` or a
//! numeric offset), read without a general parser.
//!
//! [`crate::event::parse_time`] tries [`epoch_millis`] first and hands
//! anything else to chrono, whose answer is the reference: this reader
//! returns `None` wherever it is unsure (a leap second, a lowercase `t`, a
//! space for the `T`, an impossible date), never a different time. chrono's
//! general parser took 300 instructions a timestamp, as many as deciding
//! whether an event starts a flight pattern.

/// Milliseconds since the epoch of `s`, when it is exactly
/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)` and a real instant;
/// else `None` (which is not an error: the caller asks chrono).
pub fn epoch_millis(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || [b[4], b[7], b[10], b[13], b[16]] != *b"--T::" {
        return None;
    }
    let year = two_digits(b, 0)? * 100 + two_digits(b, 2)?;
    let (month, day) = (two_digits(b, 5)?, two_digits(b, 8)?);
    let (hour, minute, second) = (two_digits(b, 11)?, two_digits(b, 14)?, two_digits(b, 17)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let (millis, rest) = fraction(&b[19..])?;
    let offset = offset_seconds(rest)?;
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second - offset;
    Some(secs * 1_000 + millis)
}

/// The two ASCII digits at `at` as a number.
#[inline(always)]
fn two_digits(b: &[u8], at: usize) -> Option<i64> {
    let (tens, ones) = (b[at].wrapping_sub(b'0'), b[at + 1].wrapping_sub(b'0'));
    (tens < 10 && ones < 10).then(|| i64::from(tens * 10 + ones))
}

/// Optional fractional seconds (digits after a `.`, as many as given), as whole
/// milliseconds (truncated, as chrono's `timestamp_millis` does), and what
/// follows them.
fn fraction(b: &[u8]) -> Option<(i64, &[u8])> {
    let Some(after) = b.strip_prefix(b".") else {
        return Some((0, b));
    };
    let n = after.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 {
        return None;
    }
    let mut millis = 0;
    for i in 0..3 {
        millis = millis * 10
            + after
                .get(i)
                .filter(|_| i < n)
                .map_or(0, |&c| i64::from(c - b'0'));
    }
    Some((millis, &after[n..]))
}

/// `Z` (0) or `+HH:MM` / `-HH:MM` as seconds east of UTC, ending the text.
fn offset_seconds(b: &[u8]) -> Option<i64> {
    match b {
        b"Z" => Some(0),
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (h, m) = (two_digits(&[*h1, *h2], 0)?, two_digits(&[*m1, *m2], 0)?);
            if h > 23 || m > 59 {
                return None;
            }
            let east = h * 3_600 + m * 60;
            Some(if *sign == b'+' { east } else { -east })
        }
        _ => None,
    }
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chrono_millis(s: &str) -> Option<i64> {
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    #[test]
    fn common_shapes_read_as_chrono_reads_them() {
        for s in [
            "2013-01-01T10:00:00Z",
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59.999Z",
            "2024-02-29T12:30:45.5+05:30",
            "2000-02-29T23:59:59-23:59",
            "2000-03-01T00:00:00.123456789-08:00",
            "2013-01-01T10:00:00.1234567890123Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
        ] {
            assert_eq!(epoch_millis(s), chrono_millis(s), "{s}");
            assert!(epoch_millis(s).is_some(), "{s}");
        }
        // Left to chrono: not this shape, or not a real instant.
        for s in [
            "2013-02-29T10:00:00Z",
            "1900-02-29T10:00:00Z",
            "2013-01-01t10:00:00Z",
            "2013-01-01 10:00:00Z",
            "2013-01-01T10:00:60Z",
            "2013-01-01T10:00:00",
            "2013-01-01T10:00:00.Z",
            "2013-01-01T10:00:00+0100",
            "2013-13-01T10:00:00Z",
            "2013-01-01T10:00:00Zjunk",
            "+2013-01-01T10:00:00Z",
        ] {
            assert_eq!(epoch_millis(s), None, "{s}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4_000))]

        /// Whatever this reader answers, chrono answers the same; and it
        /// answers every real instant of the shape.
        #[test]
        fn never_differs_from_chrono(
            y in 0i64..10_000, mo in 0i64..14, d in 0i64..33, h in 0i64..25, mi in 0i64..61,
            se in 0i64..61, frac in proptest::option::of("[0-9]{0,14}"),
            off in prop_oneof![Just("Z".to_string()), "[+-][0-2][0-9]:[0-6][0-9]"],
        ) {
            let frac = frac.map_or(String::new(), |f| format!(".{f}"));
            let s = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{se:02}{frac}{off}");
            let ours = epoch_millis(&s);
            if ours.is_some() {
                prop_assert_eq!(ours, chrono_millis(&s), "{}", s);
            }
            let real = chrono_millis(&s).is_some() && se < 60;
            prop_assert_eq!(ours.is_some(), real, "{}", s);
        }

        #[test]
        fn arbitrary_text_is_never_misread(s in "[0-9T:Z.+-]{18,30}") {
            if let Some(ms) = epoch_millis(&s) {
                prop_assert_eq!(Some(ms), chrono_millis(&s), "{}", s);
            }
        }
    }
}
