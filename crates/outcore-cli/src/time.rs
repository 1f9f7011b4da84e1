//! Tids as text: hexadecimal tids, UTC ISO-8601 times, and durations like `7d`.

use std::time::Duration;

use outcore::storage::Tid;

/// A tid as 16 hexadecimal digits (what `outcore log` prints and `--before` takes).
pub fn tid_hex(tid: Tid) -> String {
    format!("{:016x}", tid.0)
}

/// Parses a tid written as hexadecimal digits, with or without `0x`.
pub fn parse_tid(text: &str) -> Result<Tid, String> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() || digits.len() > 16 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "{text:?} is not a tid: expected up to 16 hexadecimal digits as printed by `outcore log`"
        ));
    }
    u64::from_str_radix(digits, 16)
        .map(Tid)
        .map_err(|e| format!("{text:?} is not a tid: {e}"))
}

/// Parses a duration: a whole number followed by `s`, `m`, `h`, `d` or `w`
/// (seconds, minutes, hours, days, weeks), e.g. `30s`, `10m`, `2h`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("{text:?} is not a duration: use a whole number and a unit s, m, h, d or w (30s, 10m, 2h, 7d)")
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration {text:?} is too long"))
}

/// The tid `age` before now (zero if that is before the epoch).
pub fn tid_before_now(age: Duration) -> Tid {
    let age_ns = u64::try_from(age.as_nanos()).unwrap_or(u64::MAX);
    Tid(Tid::now().0.saturating_sub(age_ns))
}

/// The tid's time in UTC, ISO-8601 with microseconds: `2025-01-31T12:34:56.123456Z`.
pub fn iso_utc(tid: Tid) -> String {
    let secs = tid.0 / 1_000_000_000;
    let micros = (tid.0 % 1_000_000_000) / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Year, month, day of the proleptic Gregorian calendar for days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(iso_utc(Tid(0)), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29T12:00:00.5 UTC
        assert_eq!(
            iso_utc(Tid(951_825_600_500_000_000)),
            "2000-02-29T12:00:00.500000Z"
        );
        assert_eq!(
            iso_utc(Tid(1_735_689_599_999_999_999)),
            "2024-12-31T23:59:59.999999Z"
        );
    }

    #[test]
    fn durations_and_tids() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        for bad in ["", "7", "d", "7x", "-1d", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_tid("00000000000000ff"), Ok(Tid(255)));
        assert_eq!(parse_tid("0x10"), Ok(Tid(16)));
        assert!(parse_tid("xyz").is_err());
        assert!(parse_tid("12345678901234567").is_err());
        assert_eq!(tid_hex(Tid(255)), "00000000000000ff");
        assert_eq!(tid_before_now(Duration::from_secs(u64::MAX)), Tid(0));
    }
}
