//! Kubernetes CronJob schedules: `spec.retrain.schedule` and `spec.retrain.timeZone` of a
//! `VectorIndex`.
//!
//! [`Schedule::parse`] accepts what a CronJob's `spec.schedule` accepts (Kubernetes parses it with
//! robfig/cron v3 `cron.ParseStandard`) and refuses the rest with a message that names the field
//! and the offending text:
//!
//! * Five fields separated by white space: minute `0-59`, hour `0-23`, day of month `1-31`, month
//!   `1-12` or `JAN-DEC`, day of week `0-6` or `SUN-SAT` (names in any case; `7` is not Sunday).
//!   Each field is a comma list of `*`, `?` (the same as `*`), a value `a`, a range `a-b`, or any
//!   of these with a step: `*/n`, `a-b/n`, `a/n` (which means `a-max/n`).
//! * Descriptors, written alone (no white space around them, as robfig compares the whole text)
//!   and in lower case: `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`),
//!   `@hourly`.
//! * Refused: `@every <duration>` (only calendar schedules), seconds or years (6 or 7 fields),
//!   Quartz's `L`, `W` and `#`, and a `TZ=`/`CRON_TZ=` prefix (a CronJob refuses it too: the
//!   zone belongs in `spec.retrain.timeZone`).
//!
//! Two of robfig's quirks are refused rather than copied, as a CronJob would run something other
//! than what was most likely meant: an empty list item (`1,,2`, `5,`, which robfig drops) and a
//! range that starts with a star (`*-5`, which robfig reads as `*`).
//!
//! Days: as in robfig (and Vixie cron), when the day-of-month or the day-of-week field is a star
//! (`*` or `?`, also with step 1; a star with a step > 1 such as `*/2` is not a star) a day must
//! match both fields, otherwise it is enough that it matches either: `0 0 1 * MON` fires on the
//! 1st of each month and on every Monday.
//!
//! Time zone: an IANA name (`Europe/Berlin`, `UTC`) from the time zone database bundled into the
//! binary, spelt as there (names are case-sensitive, as Go's `time.LoadLocation` on a CronJob's
//! `spec.timeZone`); not `Local`; `None` is UTC. The fire times are the wall-clock minutes of that zone the fields match, each
//! fired once:
//!
//! * A wall-clock minute that does not exist (spring forward: 02:30 on the night Europe/Berlin
//!   goes from 02:00 to 03:00) does not fire at all that day; a `30 2 * * *` schedule skips it.
//! * A wall-clock minute that exists twice (fall back: 02:30 on the night Europe/Berlin goes from
//!   03:00 back to 02:00) fires once, at its first occurrence (02:30 summer time), so `@hourly`
//!   has two hours between 02:00 summer time and 03:00 winter time that night. robfig's `Next`
//!   (so a CronJob) gives both occurrences; a retrain should not run twice for one fire time.
//!
//! Searching is field-wise (whole months, days and hours that cannot match are skipped), in both
//! directions: [`Schedule::next_after`] looks forward, [`Schedule::due`] backwards from `now`.
//! Like robfig, neither looks further than about five years.

use std::fmt;

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};

/// How far (in years from the start) a search goes before it answers that nothing fires, as
/// robfig's `Next` does.
const SEARCH_YEARS: i32 = 5;

/// A parsed CronJob schedule and its time zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Bit `n` set: minute `n` (0-59) matches.
    minutes: u64,
    /// Bit `n`: hour `n` (0-23).
    hours: u64,
    /// Bit `n`: day of month `n` (1-31).
    days_of_month: u64,
    /// Bit `n`: month `n` (1-12).
    months: u64,
    /// Bit `n`: day of week `n` (0 = Sunday .. 6 = Saturday).
    days_of_week: u64,
    /// The day-of-month field has a star (`*`, `?`, with no step or step 1).
    dom_star: bool,
    /// Likewise the day-of-week field.
    dow_star: bool,
    time_zone: TimeZone,
}

/// A field of a five-field schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl Field {
    const ALL: [Field; 5] = [
        Field::Minute,
        Field::Hour,
        Field::DayOfMonth,
        Field::Month,
        Field::DayOfWeek,
    ];

    /// Smallest and largest value.
    fn bounds(self) -> (u32, u32) {
        match self {
            Field::Minute => (0, 59),
            Field::Hour => (0, 23),
            Field::DayOfMonth => (1, 31),
            Field::Month => (1, 12),
            Field::DayOfWeek => (0, 6),
        }
    }

    /// Names of the values, from the smallest value on (lower case).
    fn names(self) -> &'static [&'static str] {
        match self {
            Field::Month => &[
                "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
            ],
            Field::DayOfWeek => &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
            _ => &[],
        }
    }

    /// What a value of this field may be written as, for messages.
    fn expected(self) -> &'static str {
        match self {
            Field::Month => "a number 1-12 or a month name JAN-DEC",
            Field::DayOfWeek => "a number 0-6 or a day name SUN-SAT",
            Field::Minute => "a number 0-59",
            Field::Hour => "a number 0-23",
            Field::DayOfMonth => "a number 1-31",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfMonth => "day of month",
            Field::Month => "month",
            Field::DayOfWeek => "day of week",
        })
    }
}

/// What is wrong with an item of a field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldProblem {
    /// `1,,2`, `5,`, `,5`.
    EmptyItem,
    /// Neither a number nor (in the month and day-of-week fields) a name.
    NotAValue {
        token: String,
        expected: &'static str,
    },
    /// A value outside the field's range.
    OutOfRange { value: String, min: u32, max: u32 },
    /// `-5`, `5-`: a range without its start or end.
    MissingValue,
    /// `7` in the day-of-week field.
    SundayIsZero,
    /// `a-b` with `a > b`.
    Reversed { start: u32, end: u32 },
    /// The step of `*/n`, `a-b/n`, `a/n` is not a positive number.
    BadStep { token: String },
    /// `*-5`.
    StarRange,
    /// `1-2-3`.
    TooManyHyphens,
    /// `*/2/3`.
    TooManySlashes,
    /// Quartz's `L` (last day of the month, last weekday of the month).
    Last,
    /// Quartz's `W` (nearest weekday).
    NearestWeekday,
    /// Quartz's `#` (n-th weekday of the month).
    NthWeekday,
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldProblem::EmptyItem => f.write_str("has an empty list item"),
            FieldProblem::NotAValue { token, expected } => {
                write!(f, "{token:?} is not {expected}")
            }
            FieldProblem::OutOfRange { value, min, max } => {
                write!(f, "{value} is out of range {min}-{max}")
            }
            FieldProblem::MissingValue => f.write_str("a range needs a value on both sides of '-'"),
            FieldProblem::SundayIsZero => {
                f.write_str("7 is out of range 0-6; write Sunday as 0 or SUN")
            }
            FieldProblem::Reversed { start, end } => {
                write!(f, "range starts at {start}, after its end {end}")
            }
            FieldProblem::BadStep { token } => {
                write!(f, "step {token:?} is not a positive number")
            }
            FieldProblem::StarRange => f.write_str("a range cannot start with * (use a-b)"),
            FieldProblem::TooManyHyphens => f.write_str("has too many '-'"),
            FieldProblem::TooManySlashes => f.write_str("has too many '/'"),
            FieldProblem::Last => {
                f.write_str("L (last) is not supported by Kubernetes CronJob schedules")
            }
            FieldProblem::NearestWeekday => {
                f.write_str("W (nearest weekday) is not supported by Kubernetes CronJob schedules")
            }
            FieldProblem::NthWeekday => f.write_str(
                "# (n-th weekday of the month) is not supported by Kubernetes CronJob schedules",
            ),
        }
    }
}

/// Why a schedule or time zone is refused. Messages name the field and quote the text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Nothing but white space.
    #[error("is empty")]
    Empty,
    /// `TZ=Europe/Berlin 0 3 * * *`.
    #[error(
        "{prefix:?} sets the time zone inside the schedule, which a CronJob refuses; use spec.retrain.timeZone"
    )]
    TimeZoneInSchedule { prefix: String },
    /// Not 5 fields (6 or 7: seconds or years).
    #[error(
        "{expr:?} has {found} fields; a schedule has 5 (minute hour day-of-month month day-of-week){}",
        if matches!(.found, 6 | 7) { ", without seconds or years" } else { "" }
    )]
    FieldCount { expr: String, found: usize },
    /// `@every 1h`.
    #[error(
        "{expr:?}: @every is not supported, only calendar schedules (e.g. \"0 */6 * * *\" for every 6 hours)"
    )]
    Every { expr: String },
    /// `@...` other than the descriptors, `@Daily`, `@daily ` (robfig compares the whole text).
    #[error(
        "{expr:?} is not a descriptor; use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly, in lower case and without spaces around it"
    )]
    UnknownDescriptor { expr: String },
    /// A field's list item.
    #[error("{field} {text:?}: {problem}")]
    Field {
        field: Field,
        text: String,
        problem: FieldProblem,
    },
    /// The time zone.
    #[error("unknown time zone {name:?}: {reason}")]
    TimeZone { name: String, reason: String },
}

/// The descriptors and the fields they stand for.
const DESCRIPTORS: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

/// An IANA time zone, as a CronJob's `spec.timeZone` accepts it: a name of the time zone database
/// (case-sensitive), not `Local`.
pub fn parse_time_zone(name: &str) -> Result<TimeZone, ScheduleError> {
    let refuse = |reason: &str| ScheduleError::TimeZone {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(refuse("the name is empty; leave it out for UTC"));
    }
    if name.eq_ignore_ascii_case("local") {
        return Err(refuse(
            "name an explicit IANA time zone such as Europe/Berlin",
        ));
    }
    // Kubernetes' own check before it loads the zone: each `/`-separated part has 1 to 14 of
    // `A-Za-z0-9._-+`, is not `.` or `..` and does not start with `-`.
    let part_ok = |p: &str| {
        (1..=14).contains(&p.len())
            && p != "."
            && p != ".."
            && !p.starts_with('-')
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'))
    };
    if !name.split('/').all(part_ok) {
        return Err(refuse(
            "not an IANA time zone name (such as Europe/Berlin or UTC)",
        ));
    }
    let Ok(tz) = TimeZone::get(name) else {
        return Err(refuse("not in the time zone database"));
    };
    match tz.iana_name() {
        Some(found) if found == name && found != "Etc/Unknown" => Ok(tz),
        Some(found) if found != "Etc/Unknown" => Err(refuse(&format!(
            "names are case-sensitive; did you mean {found:?}?"
        ))),
        _ => Err(refuse("not in the time zone database")),
    }
}

impl Schedule {
    /// Parses a CronJob schedule and its time zone (`None`: UTC).
    pub fn parse(expr: &str, time_zone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let fields = parse_fields(expr)?;
        let time_zone = match time_zone {
            Some(name) => parse_time_zone(name)?,
            None => TimeZone::UTC,
        };
        Ok(Schedule {
            minutes: fields[0].0,
            hours: fields[1].0,
            days_of_month: fields[2].0,
            months: fields[3].0,
            days_of_week: fields[4].0,
            dom_star: fields[2].1,
            dow_star: fields[4].1,
            time_zone,
        })
    }

    /// The time zone of the schedule's wall-clock times.
    pub fn time_zone(&self) -> &TimeZone {
        &self.time_zone
    }

    /// The first fire time strictly after `t`; `None` if it does not fire within about five
    /// years (e.g. `0 0 30 2 *`, which a CronJob accepts).
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let wall = self.time_zone.to_datetime(t);
        let max_year = i32::from(wall.year()) + SEARCH_YEARS;
        let mut from = Wall::of(wall);
        // The wall-clock minutes after `from` fire in their order, except that a minute of a
        // fall-back hour whose first occurrence is already past (`t` in the repeated hour) does
        // not fire again: those are skipped (at most an hour's worth).
        loop {
            let wall = self.next_match(from, max_year)?;
            if let Occurrence::At(at) = self.first_occurrence(wall)?
                && at > t
            {
                return Some(at);
            }
            from = wall.succ();
        }
    }

    /// The latest fire time in `(since, now]`: the run that is due. Many missed runs count once,
    /// as the most recent, as a CronJob's do. Looks no further back than about five years.
    pub fn due(&self, since: Timestamp, now: Timestamp) -> Option<Timestamp> {
        if now <= since {
            return None;
        }
        let tz = &self.time_zone;
        let wall = tz.to_datetime(now);
        // In the second pass of a fall-back hour, the minutes of that hour after `now`'s wall
        // time have fired too (in the first pass): start from the wall time before the clock
        // went back (and skip, below, what is after `now`).
        let start = match tz.to_ambiguous_timestamp(wall).offset() {
            AmbiguousOffset::Fold { before, after }
                if before != after && tz.to_offset(now) == after =>
            {
                before.to_datetime(now)
            }
            _ => wall,
        };
        // No wall-clock minute before `since`'s fires after `since`.
        let lowest = Wall::of(tz.to_datetime(since));
        let min_year = lowest.year.max(i32::from(wall.year()) - SEARCH_YEARS);
        let mut from = Wall::of(start);
        loop {
            let wall = self.prev_match(from, min_year)?;
            if wall < lowest {
                return None;
            }
            if let Occurrence::At(at) = self.first_occurrence(wall)?
                && at <= now
            {
                return (at > since).then_some(at);
            }
            from = wall.pred();
        }
    }

    /// The days (bits 1-31) of a month that match the day-of-month and day-of-week fields.
    fn day_mask(&self, year: i32, month: u32) -> u64 {
        let days = days_in_month(year, month);
        let valid = ((1u64 << (days + 1)) - 1) & !1;
        let by_dom = self.days_of_month & valid;
        let first = weekday(year, month, 1);
        let mut by_dow = 0u64;
        for day in 1..=days {
            if bit(self.days_of_week, (first + day - 1) % 7) {
                by_dow |= 1 << day;
            }
        }
        if self.dom_star || self.dow_star {
            by_dom & by_dow
        } else {
            by_dom | by_dow
        }
    }

    /// The first matching wall-clock minute at or after `from` (whose fields may overflow by
    /// one: minute 60, hour 24, day 32, month 13), in a year up to `max_year`.
    fn next_match(&self, from: Wall, max_year: i32) -> Option<Wall> {
        let Wall {
            mut year,
            mut month,
            mut day,
            mut hour,
            mut minute,
        } = from;
        loop {
            if year > max_year {
                return None;
            }
            let Some(m) = lowest_from(self.months, month) else {
                (year, month, day, hour, minute) = (year + 1, 1, 1, 0, 0);
                continue;
            };
            if m != month {
                (month, day, hour, minute) = (m, 1, 0, 0);
            }
            let Some(d) = lowest_from(self.day_mask(year, month), day) else {
                (month, day, hour, minute) = (month + 1, 1, 0, 0);
                continue;
            };
            if d != day {
                (day, hour, minute) = (d, 0, 0);
            }
            let Some(h) = lowest_from(self.hours, hour) else {
                (day, hour, minute) = (day + 1, 0, 0);
                continue;
            };
            if h != hour {
                (hour, minute) = (h, 0);
            }
            let Some(mi) = lowest_from(self.minutes, minute) else {
                (hour, minute) = (hour + 1, 0);
                continue;
            };
            return Some(Wall {
                year,
                month,
                day,
                hour,
                minute: mi,
            });
        }
    }

    /// The last matching wall-clock minute at or before `from` (whose day may be 0 and month 0,
    /// meaning the end of the month or year before), in a year from `min_year` on.
    fn prev_match(&self, from: Wall, min_year: i32) -> Option<Wall> {
        let Wall {
            mut year,
            mut month,
            mut day,
            mut hour,
            mut minute,
        } = from;
        loop {
            if year < min_year {
                return None;
            }
            let Some(m) = highest_upto(self.months, month) else {
                (year, month, day, hour, minute) = (year - 1, 12, 31, 23, 59);
                continue;
            };
            if m != month {
                (month, day, hour, minute) = (m, 31, 23, 59);
            }
            let last = days_in_month(year, month);
            if day > last {
                (day, hour, minute) = (last, 23, 59);
            }
            let Some(d) = highest_upto(self.day_mask(year, month), day) else {
                (month, day, hour, minute) = (month - 1, 31, 23, 59);
                continue;
            };
            if d != day {
                (day, hour, minute) = (d, 23, 59);
            }
            let Some(h) = highest_upto(self.hours, hour) else {
                (day, hour, minute) = (day - 1, 23, 59);
                continue;
            };
            if h != hour {
                (hour, minute) = (h, 59);
            }
            let Some(mi) = highest_upto(self.minutes, minute) else {
                (day, hour, minute) = if hour == 0 {
                    (day - 1, 23, 59)
                } else {
                    (day, hour - 1, 59)
                };
                continue;
            };
            return Some(Wall {
                year,
                month,
                day,
                hour,
                minute: mi,
            });
        }
    }

    /// When the wall-clock minute first happens in the schedule's zone. `None`: out of the range
    /// of dates that can be represented.
    fn first_occurrence(&self, w: Wall) -> Option<Occurrence> {
        let dt = DateTime::new(
            i16::try_from(w.year).ok()?,
            i8::try_from(w.month).ok()?,
            i8::try_from(w.day).ok()?,
            i8::try_from(w.hour).ok()?,
            i8::try_from(w.minute).ok()?,
            0,
            0,
        )
        .ok()?;
        let ambiguous = self.time_zone.to_ambiguous_timestamp(dt);
        if let AmbiguousOffset::Gap { .. } = ambiguous.offset() {
            return Some(Occurrence::Missing);
        }
        ambiguous.earlier().ok().map(Occurrence::At)
    }
}

/// A wall-clock minute, compared in calendar order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Wall {
    year: i32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
}

impl Wall {
    /// The minute `dt` is in.
    fn of(dt: DateTime) -> Wall {
        // jiff's fields are in range, so never negative (but for the year).
        let u = |v: i8| u32::try_from(v).unwrap_or(0);
        Wall {
            year: i32::from(dt.year()),
            month: u(dt.month()),
            day: u(dt.day()),
            hour: u(dt.hour()),
            minute: u(dt.minute()),
        }
    }

    /// The next minute, possibly with minute 60 (which `next_match` carries over).
    fn succ(self) -> Wall {
        Wall {
            minute: self.minute + 1,
            ..self
        }
    }

    /// The minute before, possibly with day 0 (which `prev_match` carries over).
    fn pred(self) -> Wall {
        match (self.hour, self.minute) {
            (_, 1..) => Wall {
                minute: self.minute - 1,
                ..self
            },
            (1.., 0) => Wall {
                hour: self.hour - 1,
                minute: 59,
                ..self
            },
            (0, 0) => Wall {
                day: self.day - 1,
                hour: 23,
                minute: 59,
                ..self
            },
        }
    }
}

enum Occurrence {
    /// The wall-clock minute does not exist (spring forward).
    Missing,
    /// Its first instant.
    At(Timestamp),
}

fn bit(bits: u64, n: u32) -> bool {
    n < 64 && bits & (1 << n) != 0
}

/// The lowest set bit at or above `n`.
fn lowest_from(bits: u64, n: u32) -> Option<u32> {
    if n >= 64 {
        return None;
    }
    let above = bits & (u64::MAX << n);
    (above != 0).then(|| above.trailing_zeros())
}

/// The highest set bit at or below `n`.
fn highest_upto(bits: u64, n: u32) -> Option<u32> {
    let mask = if n >= 63 {
        u64::MAX
    } else {
        (1u64 << (n + 1)) - 1
    };
    let below = bits & mask;
    (below != 0).then(|| 63 - below.leading_zeros())
}

fn is_leap(year: i32) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Day of the week, 0 = Sunday (proleptic Gregorian calendar).
fn weekday(year: i32, month: u32, day: u32) -> u32 {
    // Days since 1970-01-01 (a Thursday), after Howard Hinnant's `days_from_civil`.
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    // 0..7, so the conversion cannot fail.
    u32::try_from((days + 4).rem_euclid(7)).unwrap_or(0)
}

/// The five fields' bits and star flags.
fn parse_fields(expr: &str) -> Result<[(u64, bool); 5], ScheduleError> {
    if expr.trim().is_empty() {
        return Err(ScheduleError::Empty);
    }
    let words: Vec<&str> = expr.split_whitespace().collect();
    if let Some(first) = words.first() {
        let upper = first.to_ascii_uppercase();
        if upper.starts_with("TZ=") || upper.starts_with("CRON_TZ=") {
            return Err(ScheduleError::TimeZoneInSchedule {
                prefix: (*first).to_string(),
            });
        }
    }
    let descriptor;
    let words = if expr.trim_start().starts_with('@') {
        // robfig matches the whole text, so `@daily ` and ` @daily` are refused too.
        if expr.trim_start().starts_with("@every") {
            return Err(ScheduleError::Every {
                expr: expr.to_string(),
            });
        }
        let Some((_, fields)) = DESCRIPTORS.iter().find(|(name, _)| *name == expr) else {
            return Err(ScheduleError::UnknownDescriptor {
                expr: expr.to_string(),
            });
        };
        descriptor = fields.split(' ').collect::<Vec<_>>();
        &descriptor
    } else {
        &words
    };
    if words.len() != 5 {
        return Err(ScheduleError::FieldCount {
            expr: expr.to_string(),
            found: words.len(),
        });
    }
    let mut out = [(0, false); 5];
    for ((slot, field), text) in out.iter_mut().zip(Field::ALL).zip(words) {
        *slot = parse_field(field, text)?;
    }
    Ok(out)
}

/// One field: its bits and whether it is a star.
fn parse_field(field: Field, text: &str) -> Result<(u64, bool), ScheduleError> {
    let mut bits = 0u64;
    let mut star = false;
    for item in text.split(',') {
        let refuse = |problem| ScheduleError::Field {
            field,
            text: if item.is_empty() { text } else { item }.to_string(),
            problem,
        };
        if item.is_empty() {
            return Err(refuse(FieldProblem::EmptyItem));
        }
        let (item_bits, item_star) = parse_item(field, item).map_err(refuse)?;
        bits |= item_bits;
        star |= item_star;
    }
    Ok((bits, star))
}

/// One list item (`*`, `a`, `a-b`, with an optional `/n`): its bits and whether it is a star.
fn parse_item(field: Field, item: &str) -> Result<(u64, bool), FieldProblem> {
    let (min, max) = field.bounds();
    let mut slashes = item.split('/');
    let range = slashes.next().unwrap_or_default();
    let step = slashes.next();
    if slashes.next().is_some() {
        return Err(FieldProblem::TooManySlashes);
    }
    let ends: Vec<&str> = range.split('-').collect();
    let (start, mut end, is_star) = match ends.as_slice() {
        ["*" | "?"] => (u64::from(min), u64::from(max), true),
        ["*" | "?", ..] => return Err(FieldProblem::StarRange),
        [one] => {
            let v = parse_value(field, one)?;
            (v, v, false)
        }
        [a, b] => (parse_value(field, a)?, parse_value(field, b)?, false),
        _ => return Err(FieldProblem::TooManyHyphens),
    };
    let step = match step {
        None => 1,
        Some(token) => {
            // Go's `strconv.Atoi`: an optional `+`, decimal digits, at most `i64::MAX`.
            let bad = || FieldProblem::BadStep {
                token: token.to_string(),
            };
            let n: u64 = token.parse().map_err(|_| bad())?;
            if n == 0 || n > i64::MAX.unsigned_abs() {
                return Err(bad());
            }
            // `a/n` is `a-max/n`.
            if ends.len() == 1 {
                end = u64::from(max);
            }
            n
        }
    };
    for v in [start, end] {
        if v < u64::from(min) || v > u64::from(max) {
            return Err(if field == Field::DayOfWeek && v == 7 {
                FieldProblem::SundayIsZero
            } else {
                FieldProblem::OutOfRange {
                    value: v.to_string(),
                    min,
                    max,
                }
            });
        }
    }
    if start > end {
        // Both are in range, so small.
        let small = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        return Err(FieldProblem::Reversed {
            start: small(start),
            end: small(end),
        });
    }
    let mut bits = 0u64;
    let mut v = start;
    while v <= end {
        bits |= 1 << v;
        v = v.saturating_add(step);
    }
    Ok((bits, is_star && step == 1))
}

/// A value: a number (Go's `strconv.Atoi`: optional `+`, decimal digits) or a name of the field,
/// in any case. Quartz's `L`, `W` and `#` get their own refusal.
fn parse_value(field: Field, token: &str) -> Result<u64, FieldProblem> {
    if let Some(i) = field
        .names()
        .iter()
        .position(|name| name.eq_ignore_ascii_case(token))
    {
        let (min, _) = field.bounds();
        return Ok(u64::from(min) + i as u64);
    }
    match token.parse::<u64>() {
        Ok(v) => return Ok(v),
        Err(e) if matches!(e.kind(), std::num::IntErrorKind::PosOverflow) => {
            return Err(FieldProblem::OutOfRange {
                value: token.to_string(),
                min: field.bounds().0,
                max: field.bounds().1,
            });
        }
        Err(_) => {}
    }
    if token.is_empty() {
        return Err(FieldProblem::MissingValue);
    }
    let upper = token.to_ascii_uppercase();
    let is_value = |t: &str| {
        t.is_empty()
            || t.bytes().all(|b| b.is_ascii_digit())
            || field.names().iter().any(|n| n.eq_ignore_ascii_case(t))
    };
    if token.contains('#') {
        Err(FieldProblem::NthWeekday)
    } else if upper == "LW" || upper.strip_suffix('L').is_some_and(is_value) {
        Err(FieldProblem::Last)
    } else if upper.strip_suffix('W').is_some_and(is_value) {
        Err(FieldProblem::NearestWeekday)
    } else {
        Err(FieldProblem::NotAValue {
            token: token.to_string(),
            expected: field.expected(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;

    fn sched(expr: &str, tz: Option<&str>) -> Schedule {
        Schedule::parse(expr, tz).unwrap_or_else(|e| panic!("{expr:?} {tz:?}: {e}"))
    }

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// A fire time as wall-clock time and offset in the schedule's zone.
    fn wall(s: &Schedule, t: Option<Timestamp>) -> Option<String> {
        t.map(|t| {
            t.to_zoned(s.time_zone().clone())
                .strftime("%Y-%m-%dT%H:%M%:z")
                .to_string()
        })
    }

    /// `next_after` of `expr` (UTC) from `from`, as wall-clock text.
    fn next_utc(expr: &str, from: &str) -> Option<String> {
        let s = sched(expr, None);
        wall(&s, s.next_after(ts(from)))
    }

    /// The successive fire times from `from`.
    fn fires(s: &Schedule, from: &str, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut t = ts(from);
        for _ in 0..n {
            let next = s.next_after(t).expect("fires");
            assert!(next > t);
            out.extend(wall(s, Some(next)));
            t = next;
        }
        out
    }

    #[test]
    fn accepted_expressions() {
        let minutes = |expr: &str| sched(expr, None).minutes;
        let bits = |vs: &[u32]| vs.iter().fold(0u64, |b, v| b | 1 << v);
        for (expr, want) in [
            ("* * * * *", (0..60).collect::<Vec<_>>()),
            ("? * * * *", (0..60).collect()),
            ("*/1 * * * *", (0..60).collect()),
            ("*/15 * * * *", vec![0, 15, 30, 45]),
            ("5/20 * * * *", vec![5, 25, 45]),
            ("10-20/5 * * * *", vec![10, 15, 20]),
            ("1-3,7,50-59/4 * * * *", vec![1, 2, 3, 7, 50, 54, 58]),
            ("*/100 * * * *", vec![0]),
            ("00 03 * * *", vec![0]),
            ("+7 * * * *", vec![7]),
            ("59 23 31 12 6", vec![59]),
            ("  0\t3 *  * *  ", vec![0]),
            ("@hourly", vec![0]),
        ] {
            assert_eq!(minutes(expr), bits(&want), "{expr}");
        }
        for expr in [
            "0 3 * * 0",
            "0 0 1,15 * MON-FRI",
            "0 0 * jan-Mar sun",
            "0 0 * * sat,SUN",
            "0 0 * * 0-6",
            "0 0 * * 6/1",
            "0 0 ? * ?",
            "0 0 1-5 * *",
            "0 0 1 DEC/2 *",
            "0 0 * JUL *",
            "0 0 * * WED",
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
        ] {
            assert!(Schedule::parse(expr, None).is_ok(), "{expr}");
        }
        let s = sched("0 0 * * sat,SUN", None);
        assert_eq!(s.days_of_week, 1 | 1 << 6);
        let s = sched("0 0 * jan-Mar sun", None);
        assert_eq!(s.months, 0b1110);
        // Stars: `*`, `?`, `*/1` and a list holding one are stars; `*/2` is not.
        assert!(sched("0 0 ? * ?", None).dom_star);
        assert!(sched("0 0 */1 * *", None).dom_star);
        assert!(sched("0 0 5,* * *", None).dom_star);
        assert!(!sched("0 0 */2 * *", None).dom_star);
        assert!(!sched("0 0 1-31 * 0-6", None).dow_star);
        for tz in [
            "UTC",
            "Europe/Berlin",
            "America/New_York",
            "America/Argentina/Buenos_Aires",
            "Asia/Kathmandu",
            "Etc/GMT+5",
            "US/Eastern",
        ] {
            assert_eq!(sched("@daily", Some(tz)).time_zone().iana_name(), Some(tz));
        }
    }

    #[test]
    fn refused_expressions() {
        let cases: &[(&str, &[&str])] = &[
            ("", &["is empty"]),
            ("   ", &["is empty"]),
            ("0 0 * * 7", &["day of week \"7\"", "Sunday as 0 or SUN"]),
            (
                "0 0 * * 1-7",
                &["day of week \"1-7\"", "Sunday as 0 or SUN"],
            ),
            (
                "0 0 0 * * *",
                &["\"0 0 0 * * *\" has 6 fields", "without seconds or years"],
            ),
            (
                "0 0 0 * * * 2030",
                &["has 7 fields", "without seconds or years"],
            ),
            ("0 0 *", &["\"0 0 *\" has 3 fields", "a schedule has 5"]),
            ("0 0 L * *", &["day of month \"L\"", "L (last)"]),
            ("0 0 L-3 * *", &["day of month \"L-3\"", "L (last)"]),
            ("0 0 LW * *", &["day of month \"LW\"", "L (last)"]),
            ("0 0 * * 5L", &["day of week \"5L\"", "L (last)"]),
            ("0 0 * * FRIL", &["day of week \"FRIL\"", "L (last)"]),
            (
                "0 0 15W * *",
                &["day of month \"15W\"", "W (nearest weekday)"],
            ),
            ("0 0 * * 5#3", &["day of week \"5#3\"", "# (n-th weekday"]),
            (
                "0 0 * * MON#1",
                &["day of week \"MON#1\"", "# (n-th weekday"],
            ),
            (
                "TZ=Europe/Berlin 0 3 * * *",
                &["\"TZ=Europe/Berlin\"", "use spec.retrain.timeZone"],
            ),
            (
                "CRON_TZ=UTC 0 3 * * *",
                &["\"CRON_TZ=UTC\"", "use spec.retrain.timeZone"],
            ),
            (
                "@every 1h",
                &["\"@every 1h\"", "@every is not supported", "calendar"],
            ),
            ("@every 90s", &["@every is not supported"]),
            (
                "@fortnightly",
                &["\"@fortnightly\" is not a descriptor", "@daily"],
            ),
            ("@DAILY", &["\"@DAILY\" is not a descriptor", "lower case"]),
            (
                "@daily ",
                &["\"@daily \" is not a descriptor", "without spaces"],
            ),
            (" @daily", &["\" @daily\" is not a descriptor"]),
            ("@daily *", &["is not a descriptor"]),
            ("*/0 * * * *", &["minute \"*/0\"", "step \"0\""]),
            ("1-5/0 * * * *", &["minute \"1-5/0\"", "step \"0\""]),
            ("*/x * * * *", &["minute \"*/x\"", "step \"x\""]),
            ("*/ * * * *", &["minute \"*/\"", "step \"\""]),
            (
                "*/-1 * * * *",
                &["minute \"*/-1\"", "not a positive number"],
            ),
            (
                "5-1 * * * *",
                &["minute \"5-1\"", "starts at 5, after its end 1"],
            ),
            (
                "0 0 * * SAT-SUN",
                &["day of week \"SAT-SUN\"", "starts at 6, after its end 0"],
            ),
            ("60 * * * *", &["minute \"60\"", "60 is out of range 0-59"]),
            ("0 24 * * *", &["hour \"24\"", "out of range 0-23"]),
            ("0 0 0 * *", &["day of month \"0\"", "out of range 1-31"]),
            ("0 0 32 * *", &["day of month \"32\"", "out of range 1-31"]),
            ("0 0 * 0 *", &["month \"0\"", "out of range 1-12"]),
            ("0 0 * 13 *", &["month \"13\"", "out of range 1-12"]),
            (
                "0 0 * 1-13/2 *",
                &["month \"1-13/2\"", "13 is out of range 1-12"],
            ),
            (
                "99999999999999999999 * * * *",
                &["minute \"99999999999999999999\"", "out of range"],
            ),
            ("1,,2 * * * *", &["minute \"1,,2\"", "empty list item"]),
            ("0 1, * * *", &["hour \"1,\"", "empty list item"]),
            ("0 0 ,1 * *", &["day of month \",1\"", "empty list item"]),
            ("0 0 * * ,", &["day of week \",\"", "empty list item"]),
            (
                "0 0 * JANUARY *",
                &["month \"JANUARY\"", "month name JAN-DEC"],
            ),
            ("0 0 * FRI *", &["month \"FRI\"", "month name JAN-DEC"]),
            (
                "0 0 * * MONDAY",
                &["day of week \"MONDAY\"", "day name SUN-SAT"],
            ),
            ("0 0 * * JAN", &["day of week \"JAN\"", "day name SUN-SAT"]),
            ("0 0 MON * *", &["day of month \"MON\"", "a number 1-31"]),
            ("x * * * *", &["minute \"x\"", "\"x\" is not a number 0-59"]),
            ("1.5 * * * *", &["minute \"1.5\"", "not a number"]),
            ("*-5 * * * *", &["minute \"*-5\"", "cannot start with *"]),
            ("?-5 * * * *", &["minute \"?-5\"", "cannot start with *"]),
            ("1-2-3 * * * *", &["minute \"1-2-3\"", "too many '-'"]),
            ("-5 * * * *", &["minute \"-5\"", "both sides of '-'"]),
            ("5- * * * *", &["minute \"5-\"", "both sides of '-'"]),
            ("*/2/3 * * * *", &["minute \"*/2/3\"", "too many '/'"]),
        ];
        for (expr, needles) in cases {
            let err = Schedule::parse(expr, None).expect_err(expr).to_string();
            for needle in *needles {
                assert!(err.contains(needle), "{expr:?}: {err:?} lacks {needle:?}");
            }
        }
        // The first field in error is reported.
        assert_eq!(
            Schedule::parse("60 24 * * *", None),
            Err(ScheduleError::Field {
                field: Field::Minute,
                text: "60".into(),
                problem: FieldProblem::OutOfRange {
                    value: "60".into(),
                    min: 0,
                    max: 59
                },
            })
        );
    }

    #[test]
    fn refused_time_zones() {
        let cases: &[(&str, &[&str])] = &[
            (
                "Mars/Olympus_Mons",
                &["\"Mars/Olympus_Mons\"", "not in the time zone database"],
            ),
            (
                "europe/berlin",
                &["\"europe/berlin\"", "did you mean \"Europe/Berlin\""],
            ),
            ("utc", &["\"utc\"", "did you mean \"UTC\""]),
            ("Local", &["\"Local\"", "explicit IANA time zone"]),
            ("", &["is empty"]),
            (
                "../etc/passwd",
                &["\"../etc/passwd\"", "not an IANA time zone name"],
            ),
            ("Europe/Berlin ", &["not an IANA time zone name"]),
            (
                "America/Much_Too_Long_Name",
                &["not an IANA time zone name"],
            ),
            (
                "Etc/Unknown",
                &["\"Etc/Unknown\"", "not in the time zone database"],
            ),
            ("+01:00", &["\"+01:00\""]),
        ];
        for (tz, needles) in cases {
            let err = Schedule::parse("@daily", Some(tz))
                .expect_err(tz)
                .to_string();
            assert!(err.starts_with("unknown time zone"), "{err}");
            for needle in *needles {
                assert!(err.contains(needle), "{tz:?}: {err:?} lacks {needle:?}");
            }
            assert_eq!(
                parse_time_zone(tz).map(|_| ()),
                Err(Schedule::parse("@daily", Some(tz)).expect_err(tz))
            );
        }
    }

    #[test]
    fn weekday_agrees_with_jiff() {
        let mut d = jiff::civil::date(1999, 12, 25);
        for _ in 0..3000 {
            let w = weekday(i32::from(d.year()), d.month() as u32, d.day() as u32);
            assert_eq!(
                w,
                u32::from(d.weekday().to_sunday_zero_offset().unsigned_abs()),
                "{d}"
            );
            assert_eq!(
                days_in_month(i32::from(d.year()), d.month() as u32),
                d.days_in_month() as u32
            );
            d = d.tomorrow().expect("in range");
        }
    }

    #[test]
    fn next_after_basics() {
        // 2025-01-01 is a Wednesday.
        assert_eq!(
            next_utc("0 3 * * 0", "2025-01-01T00:00:00Z").as_deref(),
            Some("2025-01-05T03:00+00:00")
        );
        // Strictly after: on a fire time, the next one; a moment before it, it.
        assert_eq!(
            next_utc("0 3 * * *", "2025-01-01T03:00:00Z").as_deref(),
            Some("2025-01-02T03:00+00:00")
        );
        assert_eq!(
            next_utc("0 3 * * *", "2025-01-01T02:59:59.999Z").as_deref(),
            Some("2025-01-01T03:00+00:00")
        );
        assert_eq!(
            next_utc("5 * * * *", "2025-01-01T10:04:30Z").as_deref(),
            Some("2025-01-01T10:05+00:00")
        );
        assert_eq!(
            next_utc("5 * * * *", "2025-01-01T10:05:30Z").as_deref(),
            Some("2025-01-01T11:05+00:00")
        );
        // `a/n` is `a-max/n`.
        let s = sched("5/20 * * * *", None);
        assert_eq!(
            fires(&s, "2025-01-01T10:00:00Z", 4),
            [
                "2025-01-01T10:05+00:00",
                "2025-01-01T10:25+00:00",
                "2025-01-01T10:45+00:00",
                "2025-01-01T11:05+00:00"
            ]
        );
        let s = sched("0 22/1 * * *", None);
        assert_eq!(
            fires(&s, "2025-01-01T21:00:00Z", 3),
            [
                "2025-01-01T22:00+00:00",
                "2025-01-01T23:00+00:00",
                "2025-01-02T22:00+00:00"
            ]
        );
        // Names, any case; ranges of names.
        assert_eq!(
            next_utc("0 9 * jan,JUL Mon-Fri", "2025-02-01T00:00:00Z").as_deref(),
            Some("2025-07-01T09:00+00:00")
        );
        // Year end.
        assert_eq!(
            next_utc("59 23 31 12 *", "2025-12-31T23:59:00Z").as_deref(),
            Some("2026-12-31T23:59+00:00")
        );
    }

    #[test]
    fn next_after_day_of_month_or_day_of_week() {
        // Neither is a star: either matches. 2025-01-06 and 2025-01-27 are Mondays.
        let s = sched("0 0 1 * MON", None);
        assert_eq!(
            fires(&s, "2025-01-01T00:00:00Z", 6),
            [
                "2025-01-06T00:00+00:00",
                "2025-01-13T00:00+00:00",
                "2025-01-20T00:00+00:00",
                "2025-01-27T00:00+00:00",
                "2025-02-01T00:00+00:00",
                "2025-02-03T00:00+00:00",
            ]
        );
        // A star on either side: both must match.
        assert_eq!(
            next_utc("0 0 1 * *", "2025-01-01T00:00:00Z").as_deref(),
            Some("2025-02-01T00:00+00:00")
        );
        assert_eq!(
            next_utc("0 0 * * MON", "2025-01-01T00:00:00Z").as_deref(),
            Some("2025-01-06T00:00+00:00")
        );
        assert_eq!(
            next_utc("0 0 ? * MON", "2025-01-01T00:00:00Z").as_deref(),
            Some("2025-01-06T00:00+00:00")
        );
        assert_eq!(
            next_utc("0 0 */1 * MON", "2025-01-01T00:00:00Z").as_deref(),
            Some("2025-01-06T00:00+00:00")
        );
        // Not "Friday the 13th" (2025-06-13): neither field is a star, so "the 13th or a
        // Friday", and 2025-01-03 is a Friday.
        assert_eq!(
            next_utc("0 0 13 * FRI", "2025-01-01T00:00:00Z").as_deref(),
            Some("2025-01-03T00:00+00:00")
        );
        // A star with a step is not a star: `*/2` (odd days) or Monday.
        let s = sched("0 0 */2 * MON", None);
        assert_eq!(
            fires(&s, "2025-01-05T00:00:00Z", 3),
            [
                "2025-01-06T00:00+00:00",
                "2025-01-07T00:00+00:00",
                "2025-01-09T00:00+00:00"
            ]
        );
        // Weekends of June only (month and day of week).
        let s = sched("30 6 * 6 sat,sun", None);
        assert_eq!(
            fires(&s, "2025-01-01T00:00:00Z", 3),
            [
                "2025-06-01T06:30+00:00",
                "2025-06-07T06:30+00:00",
                "2025-06-08T06:30+00:00"
            ]
        );
    }

    #[test]
    fn next_after_descriptors() {
        let from = "2025-01-31T12:34:00Z"; // a Friday
        for (expr, want) in [
            ("@yearly", "2026-01-01T00:00+00:00"),
            ("@annually", "2026-01-01T00:00+00:00"),
            ("@monthly", "2025-02-01T00:00+00:00"),
            ("@weekly", "2025-02-02T00:00+00:00"),
            ("@daily", "2025-02-01T00:00+00:00"),
            ("@midnight", "2025-02-01T00:00+00:00"),
            ("@hourly", "2025-01-31T13:00+00:00"),
        ] {
            assert_eq!(next_utc(expr, from).as_deref(), Some(want), "{expr}");
        }
    }

    #[test]
    fn next_after_month_ends_and_leap_years() {
        let s = sched("0 0 31 * *", None);
        assert_eq!(
            fires(&s, "2025-01-31T00:00:00Z", 3),
            [
                "2025-03-31T00:00+00:00",
                "2025-05-31T00:00+00:00",
                "2025-07-31T00:00+00:00"
            ]
        );
        assert_eq!(
            next_utc("0 0 30 * *", "2025-01-30T01:00:00Z").as_deref(),
            Some("2025-03-30T00:00+00:00")
        );
        assert_eq!(
            next_utc("0 0 29 2 *", "2024-01-01T00:00:00Z").as_deref(),
            Some("2024-02-29T00:00+00:00")
        );
        assert_eq!(
            next_utc("0 0 29 2 *", "2024-02-29T00:00:00Z").as_deref(),
            Some("2028-02-29T00:00+00:00")
        );
        // 2100 is not a leap year: the next 29 February after 2096 is in 2104, more than five
        // years on (robfig gives up there too).
        assert_eq!(next_utc("0 0 29 2 *", "2096-03-01T00:00:00Z"), None);
        assert_eq!(
            next_utc("0 0 29 2 *", "2099-03-01T00:00:00Z").as_deref(),
            Some("2104-02-29T00:00+00:00")
        );
        // Accepted by a CronJob, never fires.
        assert_eq!(next_utc("0 0 30 2 *", "2025-01-01T00:00:00Z"), None);
        assert_eq!(next_utc("0 0 31 4,6,9,11 *", "2025-01-01T00:00:00Z"), None);
        let never = sched("0 0 30 2 *", None);
        assert_eq!(
            never.due(ts("2000-01-01T00:00:00Z"), ts("2025-01-01T00:00:00Z")),
            None
        );
        // ...but with a day of week too, it fires on those days (Mondays of February).
        assert_eq!(
            next_utc("0 0 30 2 MON", "2025-01-01T00:00:00Z").as_deref(),
            Some("2025-02-03T00:00+00:00")
        );
        // The end of the representable range.
        assert_eq!(next_utc("0 0 * * *", "9999-12-30T21:00:00Z"), None);
    }

    #[test]
    fn dst_europe_berlin() {
        let tz = Some("Europe/Berlin");
        // 2025-03-30: 02:00 CET becomes 03:00 CEST; 02:30 does not exist and does not fire.
        let s = sched("30 2 * * *", tz);
        assert_eq!(
            fires(&s, "2025-03-28T12:00:00+01:00", 3),
            [
                "2025-03-29T02:30+01:00",
                "2025-03-31T02:30+02:00",
                "2025-04-01T02:30+02:00"
            ]
        );
        assert_eq!(
            s.due(
                ts("2025-03-29T02:30:00+01:00"),
                ts("2025-03-30T23:00:00+02:00")
            ),
            None
        );
        let s = sched("*/30 * * * *", tz);
        assert_eq!(
            fires(&s, "2025-03-30T01:00:00+01:00", 3),
            [
                "2025-03-30T01:30+01:00",
                "2025-03-30T03:00+02:00",
                "2025-03-30T03:30+02:00"
            ]
        );
        // 2025-10-26: 03:00 CEST becomes 02:00 CET; 02:00-02:59 happen twice and fire once,
        // the first time.
        let s = sched("30 2 * * *", tz);
        assert_eq!(
            fires(&s, "2025-10-25T12:00:00+02:00", 2),
            ["2025-10-26T02:30+02:00", "2025-10-27T02:30+01:00"]
        );
        let s = sched("*/30 * * * *", tz);
        assert_eq!(
            fires(&s, "2025-10-26T01:45:00+02:00", 4),
            [
                "2025-10-26T02:00+02:00",
                "2025-10-26T02:30+02:00",
                "2025-10-26T03:00+01:00",
                "2025-10-26T03:30+01:00",
            ]
        );
        // From inside the repeated hour (second pass): its minutes have fired already.
        assert_eq!(
            wall(&s, s.next_after(ts("2025-10-26T02:10:00+01:00"))).as_deref(),
            Some("2025-10-26T03:00+01:00")
        );
        // Hourly: 02:00 fires at its first occurrence only.
        let s = sched("@hourly", tz);
        assert_eq!(
            fires(&s, "2025-10-26T00:30:00+02:00", 3),
            [
                "2025-10-26T01:00+02:00",
                "2025-10-26T02:00+02:00",
                "2025-10-26T03:00+01:00"
            ]
        );
    }

    #[test]
    fn dst_america_new_york() {
        let tz = Some("America/New_York");
        // 2025-03-09: 02:00 EST becomes 03:00 EDT.
        let s = sched("30 2 * * *", tz);
        assert_eq!(
            fires(&s, "2025-03-08T00:00:00-05:00", 2),
            ["2025-03-08T02:30-05:00", "2025-03-10T02:30-04:00"]
        );
        let s = sched("0 3 * * *", tz);
        assert_eq!(
            fires(&s, "2025-03-08T12:00:00-05:00", 2),
            ["2025-03-09T03:00-04:00", "2025-03-10T03:00-04:00"]
        );
        // 2025-11-02: 02:00 EDT becomes 01:00 EST; 01:30 fires once, at 01:30 EDT.
        let s = sched("30 1 * * *", tz);
        assert_eq!(
            fires(&s, "2025-11-01T12:00:00-04:00", 2),
            ["2025-11-02T01:30-04:00", "2025-11-03T01:30-05:00"]
        );
        // due: in the second pass (01:10 EST), 01:30 EDT is past, and due once.
        let first = ts("2025-11-02T01:30:00-04:00");
        assert_eq!(
            s.due(
                ts("2025-11-01T12:00:00-04:00"),
                ts("2025-11-02T01:10:00-05:00")
            ),
            Some(first)
        );
        assert_eq!(s.due(first, ts("2025-11-02T01:45:00-05:00")), None);
        assert_eq!(
            s.due(
                ts("2025-11-01T12:00:00-04:00"),
                ts("2025-11-02T01:29:00-04:00")
            ),
            None
        );
        // A minute of the repeated hour is due at its first pass only.
        let s = sched("15,45 1 * * *", tz);
        assert_eq!(
            s.due(
                ts("2025-11-02T00:00:00-04:00"),
                ts("2025-11-02T01:20:00-05:00")
            ),
            Some(ts("2025-11-02T01:45:00-04:00"))
        );
    }

    #[test]
    fn due_examples() {
        let s = sched("0 3 * * *", None);
        let fired = ts("2025-01-01T03:00:00Z");
        // Nothing due yet.
        assert_eq!(s.due(fired, ts("2025-01-01T12:00:00Z")), None);
        assert_eq!(s.due(fired, ts("2025-01-02T02:59:59Z")), None);
        // `since` on a fire time is not due again.
        assert_eq!(s.due(fired, fired), None);
        assert_eq!(s.due(ts("2025-01-01T02:59:59Z"), fired), Some(fired));
        // One due: `now` is included.
        assert_eq!(
            s.due(fired, ts("2025-01-02T03:00:00Z")),
            Some(ts("2025-01-02T03:00:00Z"))
        );
        assert_eq!(
            s.due(fired, ts("2025-01-02T09:00:00Z")),
            Some(ts("2025-01-02T03:00:00Z"))
        );
        // Many missed: the most recent only.
        assert_eq!(
            s.due(fired, ts("2025-03-15T10:00:00Z")),
            Some(ts("2025-03-15T03:00:00Z"))
        );
        assert_eq!(
            s.due(fired, ts("2025-03-15T02:00:00Z")),
            Some(ts("2025-03-14T03:00:00Z"))
        );
        // `now` before `since`.
        assert_eq!(s.due(ts("2025-01-05T00:00:00Z"), fired), None);
        // Rare schedules.
        let s = sched("0 0 29 2 *", None);
        assert_eq!(
            s.due(ts("2001-01-01T00:00:00Z"), ts("2025-06-01T00:00:00Z")),
            Some(ts("2024-02-29T00:00:00Z"))
        );
        assert_eq!(
            s.due(ts("2024-02-29T00:00:00Z"), ts("2025-06-01T00:00:00Z")),
            None
        );
        let s = sched("@yearly", Some("Asia/Kathmandu"));
        assert_eq!(
            s.due(ts("2020-01-01T00:00:00Z"), ts("2025-06-01T00:00:00Z")),
            Some(ts("2025-01-01T00:00:00+05:45"))
        );
    }

    /// A deterministic pseudo-random generator (SplitMix64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// In `lo..=hi`.
        fn range(&mut self, lo: u32, hi: u32) -> u32 {
            lo + (self.next() % u64::from(hi - lo + 1)) as u32
        }

        fn chance(&mut self, percent: u32) -> bool {
            self.range(1, 100) <= percent
        }
    }

    /// A random field; a star more often in the day and month fields, so that most schedules
    /// fire within the brute force's horizon.
    fn random_field(rng: &mut Rng, field: Field) -> String {
        let (min, max) = field.bounds();
        let star_percent = match field {
            Field::Minute | Field::Hour => 15,
            Field::DayOfMonth | Field::DayOfWeek => 45,
            Field::Month => 65,
        };
        let value = |rng: &mut Rng, v: u32| -> String {
            let names = field.names();
            if !names.is_empty() && rng.chance(30) {
                let name = names[(v - min) as usize];
                if rng.chance(50) {
                    name.to_ascii_uppercase()
                } else {
                    name.to_string()
                }
            } else {
                v.to_string()
            }
        };
        if rng.chance(star_percent) {
            return if rng.chance(80) { "*" } else { "?" }.to_string();
        }
        let items = if rng.chance(60) { 1 } else { rng.range(2, 3) };
        let mut out = Vec::new();
        for _ in 0..items {
            let a = rng.range(min, max);
            let b = rng.range(a, max);
            let step = rng.range(1, (max - min).max(2) / 2 + 1);
            out.push(match rng.range(0, 6) {
                0 => format!("*/{step}"),
                1 | 2 => value(rng, a),
                3 => format!("{}-{}", value(rng, a), value(rng, b)),
                4 => format!("{}-{}/{step}", value(rng, a), value(rng, b)),
                5 => format!("{}/{step}", value(rng, a)),
                _ => "*".into(),
            });
        }
        out.join(",")
    }

    const ZONES: [Option<&str>; 7] = [
        None,
        Some("Europe/Berlin"),
        Some("America/New_York"),
        Some("Australia/Lord_Howe"), // 30-minute DST shifts
        Some("America/Sao_Paulo"),   // DST at midnight until 2019
        Some("Pacific/Apia"),        // skipped 2011-12-30 whole
        Some("Asia/Kathmandu"),
    ];

    /// Whether wall-clock minute `dt` matches, by the rules, independently of the search code.
    fn reference_matches(s: &Schedule, dt: DateTime) -> bool {
        let b = |bits: u64, v: i8| bits & (1 << v) != 0;
        let dom = b(s.days_of_month, dt.day());
        let dow = b(s.days_of_week, dt.weekday().to_sunday_zero_offset());
        let day = if s.dom_star || s.dow_star {
            dom && dow
        } else {
            dom || dow
        };
        b(s.minutes, dt.minute()) && b(s.hours, dt.hour()) && b(s.months, dt.month()) && day
    }

    /// Whether the instant `u` is a fire time: the first occurrence of a matching wall-clock
    /// minute (the same wall time did not happen in the 3 hours before).
    fn reference_fires(s: &Schedule, u: Timestamp) -> bool {
        let tz = s.time_zone();
        let dt = tz.to_datetime(u);
        dt.second() == 0
            && dt.subsec_nanosecond() == 0
            && reference_matches(s, dt)
            && (1..=12).all(|k| tz.to_datetime(u - SignedDuration::from_mins(15 * k)) != dt)
    }

    fn floor_minute(t: Timestamp) -> Timestamp {
        Timestamp::from_second(t.as_second().div_euclid(60) * 60).expect("in range")
    }

    const HORIZON_MINUTES: i64 = 40 * 24 * 60;

    fn reference_next(s: &Schedule, t: Timestamp) -> Option<Timestamp> {
        let mut u = floor_minute(t);
        for _ in 0..=HORIZON_MINUTES {
            u += SignedDuration::from_mins(1);
            if u > t && reference_fires(s, u) {
                return Some(u);
            }
        }
        None
    }

    fn reference_due(s: &Schedule, since: Timestamp, now: Timestamp) -> Option<Timestamp> {
        let mut u = floor_minute(now);
        while u > since {
            if reference_fires(s, u) {
                return Some(u);
            }
            u -= SignedDuration::from_mins(1);
        }
        None
    }

    /// A random instant from 2010 to 2030: a quarter of the time within two days of a time zone
    /// transition of `tz`, a quarter within two hours of one; on a whole minute a third of the
    /// time.
    fn random_instant(rng: &mut Rng, tz: &TimeZone) -> Timestamp {
        let lo = ts("2010-01-01T00:00:00Z").as_second();
        let hi = ts("2030-01-01T00:00:00Z").as_second();
        let mut t =
            Timestamp::from_second(lo + (rng.next() % (hi - lo) as u64) as i64).expect("in range");
        let window = match rng.range(0, 3) {
            0 => 2 * 24 * 60,
            1 => 2 * 60,
            _ => 0,
        };
        if window > 0
            && let Some(tr) = tz.following(t).next()
        {
            let off = i64::from(rng.range(0, 2 * window)) - i64::from(window);
            t = tr.timestamp() + SignedDuration::from_mins(off);
        }
        if rng.chance(66) {
            t += SignedDuration::from_secs(i64::from(rng.range(0, 59)));
        }
        t
    }

    #[test]
    fn next_after_and_due_agree_with_brute_force() {
        let mut rng = Rng(0x5EED_CAFE);
        let (mut fired, mut due_some) = (0, 0);
        for case in 0..1000 {
            let expr = if rng.chance(5) {
                ["@hourly", "@daily", "@weekly", "@monthly"][rng.range(0, 3) as usize].to_string()
            } else {
                Field::ALL.map(|f| random_field(&mut rng, f)).join(" ")
            };
            let tz = ZONES[rng.range(0, ZONES.len() as u32 - 1) as usize];
            let s = Schedule::parse(&expr, tz).unwrap_or_else(|e| panic!("{expr:?}: {e}"));
            let t = random_instant(&mut rng, s.time_zone());
            let what = format!("case {case}: {expr:?} in {tz:?} from {t}");

            let got = s.next_after(t);
            match reference_next(&s, t) {
                Some(want) => {
                    assert_eq!(got, Some(want), "next_after, {what}");
                    fired += 1;
                }
                None => assert!(
                    got.is_none_or(|g| g > t + SignedDuration::from_mins(HORIZON_MINUTES)),
                    "next_after {got:?}, {what}"
                ),
            }

            let window = if rng.chance(50) { 3 * 24 * 60 } else { 3 * 60 };
            let now = t
                + SignedDuration::from_mins(i64::from(rng.range(0, window)))
                + SignedDuration::from_secs(i64::from(rng.range(0, 59)));
            let due = s.due(t, now);
            assert_eq!(due, reference_due(&s, t, now), "due until {now}, {what}");
            // And the two agree: something is due when the next fire time is at most `now`.
            assert_eq!(due.is_some(), got.is_some_and(|g| g <= now), "{what}");
            due_some += usize::from(due.is_some());
        }
        // The generator is useful: most schedules fire, and many are due.
        assert!(fired > 750, "{fired}");
        assert!(due_some > 300, "{due_some}");
    }

    #[test]
    fn searches_are_field_wise() {
        // A schedule that fires once a year, and one that never does: each search is quick
        // even over years (a minute-by-minute search would take ~2.6 million steps a year).
        let yearly = sched("0 0 1 1 *", Some("Europe/Berlin"));
        let never = sched("0 0 30 2 *", Some("Europe/Berlin"));
        let start = std::time::Instant::now();
        let mut t = ts("2025-01-01T12:00:00Z");
        for _ in 0..2000 {
            let next = yearly.next_after(t).expect("yearly");
            assert!(next > t);
            assert_eq!(never.next_after(t), None);
            assert_eq!(
                never.due(t - SignedDuration::from_hours(3 * 365 * 24), t),
                None
            );
            t = next;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }
}
