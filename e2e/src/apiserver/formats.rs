//! The string `format`s a real API server enforces on custom resources (kube-openapi's
//! strfmt registry as apiextensions configures it), and the parsers CEL uses to turn
//! `date-time` and `duration` strings into timestamps and durations.
//!
//! Checked as the real server checks them: `uri`, `hostname`, `ipv4`, `ipv6`, `cidr`, `mac`,
//! `uuid`, `uuid3`, `uuid4`, `uuid5`, `byte`, `date`, `date-time`/`datetime`, `duration`.
//! The other names of that list (`bsonobjectid`, `email`, `isbn*`, `creditcard`, `ssn`,
//! `hexcolor`, `rgbcolor`, `password`) and any unknown format are accepted.

use std::net::IpAddr;
use std::sync::OnceLock;

use base64::Engine;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, TimeZone};
use regex::Regex;

/// Whether `s` is valid for `format`; formats that are not checked accept everything.
pub fn valid(format: &str, s: &str) -> bool {
    match format {
        "uri" => is_uri(s),
        "hostname" => is_hostname(s),
        "ipv4" => s.parse::<IpAddr>().is_ok() && s.contains('.'),
        "ipv6" => s.parse::<IpAddr>().is_ok() && s.contains(':'),
        "cidr" => is_cidr(s),
        "mac" => is_mac(s),
        "uuid" => is_uuid(0, s),
        "uuid3" => is_uuid(3, s),
        "uuid4" => is_uuid(4, s),
        "uuid5" => is_uuid(5, s),
        "byte" => base64::engine::general_purpose::STANDARD.decode(s).is_ok(),
        "date" => is_date(s),
        "date-time" | "datetime" => parse_datetime(s).is_some(),
        "duration" => parse_duration(s).is_some(),
        _ => true,
    }
}

/// Go's `url.ParseRequestURI`: an absolute path, or a scheme followed by an opaque part
/// or an authority whose host has no spaces; no control characters anywhere.
fn is_uri(s: &str) -> bool {
    if s.is_empty() || s.chars().any(|c| c.is_ascii_control()) {
        return false;
    }
    if s.starts_with('/') {
        return true;
    }
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return false;
    }
    match rest.strip_prefix("//") {
        Some(auth) => {
            let host = auth.split(['/', '?', '#']).next().unwrap_or_default();
            let host = host.rsplit('@').next().unwrap_or_default();
            !host.contains([' ', '<', '>', '"', '{', '}', '|', '\\', '^', '`'])
        }
        None => true,
    }
}

fn is_hostname(s: &str) -> bool {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    // kube-openapi's rxHostname.
    let re = RE.get_or_init(|| {
        Regex::new(
            r"^([a-zA-Z0-9\p{S}\p{L}]((-?[a-zA-Z0-9\p{S}\p{L}]{0,62})?)|([a-zA-Z0-9\p{S}\p{L}](([a-zA-Z0-9-\p{S}\p{L}]{0,61}[a-zA-Z0-9\p{S}\p{L}])?)(\.)){1,}([a-zA-Z\p{L}]){2,63})$",
        )
        .ok()
    });
    s.len() <= 255 && re.as_ref().is_some_and(|r| r.is_match(s))
}

fn is_cidr(s: &str) -> bool {
    let Some((addr, bits)) = s.split_once('/') else {
        return false;
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    !bits.is_empty()
        && bits.len() <= 3
        && bits.chars().all(|c| c.is_ascii_digit())
        && bits.parse::<u32>().is_ok_and(|b| b <= max)
}

/// Go's `net.ParseMAC`: 6, 8 or 20 octets as `xx:xx:…`, `xx-xx-…` or `xxxx.xxxx.…`.
fn is_mac(s: &str) -> bool {
    let hex = |p: &str, n: usize| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit());
    let octets = |n: usize| matches!(n, 6 | 8 | 20);
    for sep in [':', '-'] {
        if s.contains(sep) {
            let parts: Vec<&str> = s.split(sep).collect();
            return octets(parts.len()) && parts.iter().all(|p| hex(p, 2));
        }
    }
    if s.contains('.') {
        let parts: Vec<&str> = s.split('.').collect();
        return octets(parts.len() * 2) && parts.iter().all(|p| hex(p, 4));
    }
    false
}

fn is_uuid(version: u8, s: &str) -> bool {
    static RES: OnceLock<Vec<Option<Regex>>> = OnceLock::new();
    let all = RES.get_or_init(|| {
        [
            r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$",
            r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?3[0-9a-f]{3}-?[0-9a-f]{4}-?[0-9a-f]{12}$",
            r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?4[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$",
            r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?5[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$",
        ]
        .iter()
        .map(|p| Regex::new(p).ok())
        .collect()
    });
    let i = match version {
        3 => 1,
        4 => 2,
        5 => 3,
        _ => 0,
    };
    all.get(i)
        .and_then(Option::as_ref)
        .is_some_and(|r| r.is_match(s))
}

/// `time.Parse("2006-01-02", s)`: exactly four, two and two digits, a real day.
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
        && NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
}

/// kube-openapi's `ParseDateTime`: RFC 3339 (with or without fractional seconds, `Z`,
/// `±hh:mm` or `±hhmm`), local date-times without an offset (read as UTC), and the
/// reduced-precision forms without seconds.
pub fn parse_datetime(s: &str) -> Option<DateTime<FixedOffset>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t);
    }
    if s.len() < 16 || s.as_bytes().get(10) != Some(&b'T') {
        return None;
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%dT%H:%M:%S%z",
        "%Y-%m-%dT%H:%M%z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Some(t);
        }
    }
    let utc = FixedOffset::east_opt(0)?;
    if let Some(rest) = s.strip_suffix('Z') {
        for f in ["%Y-%m-%dT%H:%M"] {
            if let Ok(t) = NaiveDateTime::parse_from_str(rest, f) {
                return utc.from_local_datetime(&t).single();
            }
        }
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return utc.from_local_datetime(&t).single();
        }
    }
    None
}

/// kube-openapi's `ParseDuration`: Go's `time.ParseDuration` (`1h30m`, `-1.5s`, `300ms`),
/// else a sequence of `<integer> <unit>` with units up to weeks (`3d`, `2 weeks`).
pub fn parse_duration(s: &str) -> Option<chrono::Duration> {
    if let Some(d) = parse_go_duration(s) {
        return Some(d);
    }
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    let re = RE
        .get_or_init(|| Regex::new(r"((\d+)\s*([A-Za-zµ]+))").ok())
        .as_ref()?;
    let mut total = chrono::Duration::zero();
    let mut any = false;
    for c in re.captures_iter(s) {
        let n: i64 = c.get(2)?.as_str().parse().ok()?;
        let unit = c.get(3)?.as_str().to_lowercase();
        let nanos: i64 = match unit.as_str() {
            "ns" | "nanosecond" | "nanoseconds" => 1,
            "us" | "µs" | "microsecond" | "microseconds" => 1_000,
            "ms" | "millisecond" | "milliseconds" => 1_000_000,
            "s" | "sec" | "secs" | "second" | "seconds" => 1_000_000_000,
            "m" | "min" | "mins" | "minute" | "minutes" => 60_000_000_000,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000_000_000,
            "d" | "day" | "days" => 86_400_000_000_000,
            "w" | "wk" | "wks" | "week" | "weeks" => 604_800_000_000_000,
            _ => return None,
        };
        total += chrono::Duration::nanoseconds(n.checked_mul(nanos)?);
        any = true;
    }
    any.then_some(total)
}

/// Go's `time.ParseDuration`.
fn parse_go_duration(s: &str) -> Option<chrono::Duration> {
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(chrono::Duration::zero());
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_end];
        if num.is_empty() || num == "." {
            return None;
        }
        let v: f64 = num.parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let nanos = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += v * nanos;
    }
    if total > i64::MAX as f64 {
        return None;
    }
    let n = total as i64;
    Some(chrono::Duration::nanoseconds(if neg { -n } else { n }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_as_the_real_server_checks_them() {
        for (f, ok, bad) in [
            ("uri", "https://example.com/x?y=1", "not a uri"),
            ("uri", "/absolute/path", "relative/path"),
            ("hostname", "db-0.example.com", "-bad-.com"),
            ("ipv4", "10.0.0.1", "10.0.0.256"),
            ("ipv6", "fd00::1", "10.0.0.1"),
            ("cidr", "10.0.0.0/8", "10.0.0.0/33"),
            ("mac", "00:1a:2b:3c:4d:5e", "00:1a:2b"),
            ("uuid", "7f3a9c2e-1b2c-4d5e-8f90-123456789abc", "7f3a9c2e"),
            (
                "uuid4",
                "7f3a9c2e-1b2c-4d5e-8f90-123456789abc",
                "7f3a9c2e-1b2c-3d5e-8f90-123456789abc",
            ),
            ("byte", "aGVsbG8=", "aGVsbG8"),
            ("date", "2026-02-28", "2026-02-30"),
            ("date-time", "2026-02-28T10:00:00Z", "2026-02-28 10:00"),
            ("datetime", "2026-02-28T10:00:00.5+01:00", "yesterday"),
            ("duration", "1h30m", "soon"),
            ("duration", "3d", "3x"),
        ] {
            assert!(valid(f, ok), "{f}: {ok} should pass");
            assert!(!valid(f, bad), "{f}: {bad} should fail");
        }
        assert!(valid("email", "anything"), "unchecked formats pass");
        assert_eq!(parse_duration("1h30m"), Some(chrono::Duration::minutes(90)));
    }
}
