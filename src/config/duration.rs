//! Durations as written in config: `250ms`, `2s`, `1m`, `1h`, or sums like `1m30s`.

use std::time::Duration;

/// Parses a config duration; the error says what was wrong in words.
pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("{s:?} is not a duration (use 250ms, 2s, 1m, 1h)"));
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{s:?} is not a duration (use 250ms, 2s, 1m, 1h)"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s:?} is out of range"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => n
                .checked_mul(60)
                .map(Duration::from_secs)
                .ok_or_else(|| format!("{s:?} is out of range"))?,
            "h" => n
                .checked_mul(3600)
                .map(Duration::from_secs)
                .ok_or_else(|| format!("{s:?} is out of range"))?,
            "" => return Err(format!("{s:?} has no unit (use 250ms, 2s, 1m, 1h)")),
            other => {
                return Err(format!(
                    "{s:?} has unknown unit {other:?} (use ms, s, m or h)"
                ))
            }
        };
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("{s:?} is out of range"))?;
    }
    Ok(total)
}

/// Formats a duration the way config writes it, for dumps and logs.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".to_string()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sums() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "5",
            "s",
            "1.5s",
            "2 s",
            "3d",
            "-1s",
            "99999999999999999999h",
        ] {
            assert!(parse(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn formats_back() {
        for s in ["250ms", "2s", "1m", "1h"] {
            assert_eq!(format(parse(s).unwrap_or_default()), s);
        }
    }
}
