//! ISO-8601 durations and date-times as used by BPMN timer definitions.

use chrono::{DateTime, Duration, Months, NaiveDateTime, TimeZone, Utc};

/// An ISO-8601 duration such as `P1DT2H`, `PT5M`, `PT0.5S`, `P2W`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct IsoDuration {
    pub months: u32,
    pub days: u64,
    pub millis: u64,
}

impl IsoDuration {
    /// The instant this duration after `t` (calendar-aware for months and years).
    pub fn after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let t = t.checked_add_months(Months::new(self.months))?;
        let t = t.checked_add_signed(Duration::days(i64::try_from(self.days).ok()?))?;
        t.checked_add_signed(Duration::milliseconds(i64::try_from(self.millis).ok()?))
    }
}

/// Parses `PnYnMnWnDTnHnMnS` (fractions allowed on the last, seconds, field).
pub fn parse_duration(text: &str) -> Option<IsoDuration> {
    let s = text.trim();
    let rest = s.strip_prefix('P').or_else(|| s.strip_prefix('p'))?;
    if rest.is_empty() {
        return None;
    }
    let mut d = IsoDuration::default();
    let mut in_time = false;
    let mut num = String::new();
    let mut any = false;
    for c in rest.chars() {
        match c {
            '0'..='9' | '.' | ',' => num.push(if c == ',' { '.' } else { c }),
            'T' | 't' if num.is_empty() && !in_time => in_time = true,
            _ => {
                if num.is_empty() {
                    return None;
                }
                let value: f64 = num.parse().ok()?;
                let whole = || -> Option<u64> {
                    (value.fract() == 0.0 && value >= 0.0).then_some(value as u64)
                };
                match (c.to_ascii_uppercase(), in_time) {
                    ('Y', false) => d.months += u32::try_from(whole()? * 12).ok()?,
                    ('M', false) => d.months += u32::try_from(whole()?).ok()?,
                    ('W', false) => d.days += whole()? * 7,
                    ('D', false) => d.days += whole()?,
                    ('H', true) => d.millis += whole()? * 3_600_000,
                    ('M', true) => d.millis += whole()? * 60_000,
                    ('S', true) => d.millis += (value * 1000.0).round() as u64,
                    _ => return None,
                }
                num.clear();
                any = true;
            }
        }
    }
    (any && num.is_empty()).then_some(d)
}

/// Parses an ISO-8601 date-time. With an offset (`Z`, `+02:00`) it is exact; without one
/// (`2026-01-01T10:00:00`, as Camunda's tests write local times) it is read as UTC.
pub fn parse_date_time(text: &str) -> Option<DateTime<Utc>> {
    let s = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(Utc.from_utc_datetime(&t));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("PT5M").unwrap().millis, 300_000);
        assert_eq!(parse_duration("PT50M5S").unwrap().millis, 3_005_000);
        let d = parse_duration("P1Y2M3DT4H").unwrap();
        assert_eq!((d.months, d.days, d.millis), (14, 3, 4 * 3_600_000));
        assert_eq!(parse_duration("P2W").unwrap().days, 14);
        assert_eq!(parse_duration("PT0.5S").unwrap().millis, 500);
        for bad in ["", "P", "PT", "5M", "PT5", "P5H", "PTM", "PT1.5H"] {
            assert!(parse_duration(bad).is_none(), "{bad} must be refused");
        }
    }

    #[test]
    fn duration_after_is_calendar_aware() {
        let t = parse_date_time("2026-01-31T00:00:00Z").unwrap();
        let one_month = parse_duration("P1M").unwrap();
        assert_eq!(
            one_month.after(t).unwrap(),
            parse_date_time("2026-02-28T00:00:00Z").unwrap()
        );
    }

    #[test]
    fn date_times() {
        let a = parse_date_time("2026-03-01T10:00:00+02:00").unwrap();
        let b = parse_date_time("2026-03-01T08:00:00").unwrap();
        assert_eq!(a, b);
        assert!(parse_date_time("yesterday").is_none());
    }
}
