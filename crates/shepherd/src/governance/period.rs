//! Budget periods in UTC: the start of the current day, week (Monday), month, or of time.

use crate::config::BudgetPeriod;

const DAY_MS: i64 = 86_400_000;

/// The start (unix ms) of the period that holds `now_ms`.
pub fn start_ms(period: BudgetPeriod, now_ms: i64) -> i64 {
    let day = now_ms.div_euclid(DAY_MS);
    match period {
        BudgetPeriod::Total => 0,
        BudgetPeriod::Day => day * DAY_MS,
        // 1970-01-01 was a Thursday: Monday is 3 days before it.
        BudgetPeriod::Week => (day - (day + 3).rem_euclid(7)) * DAY_MS,
        BudgetPeriod::Month => {
            let (year, month, _) = civil_from_days(day);
            days_from_civil(year, month, 1) * DAY_MS
        }
    }
}

/// Days since 1970-01-01 -> (year, month 1-12, day 1-31) (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) -> days since 1970-01-01.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-25T15:30:00Z, a Wednesday.
    const NOW: i64 = 1_795_620_600_000;

    #[test]
    fn periods_start_where_the_calendar_says() {
        assert_eq!(civil_from_days(NOW / DAY_MS), (2026, 11, 25));
        assert_eq!(
            start_ms(BudgetPeriod::Day, NOW),
            days_from_civil(2026, 11, 25) * DAY_MS
        );
        assert_eq!(
            start_ms(BudgetPeriod::Week, NOW),
            days_from_civil(2026, 11, 23) * DAY_MS
        );
        assert_eq!(
            start_ms(BudgetPeriod::Month, NOW),
            days_from_civil(2026, 11, 1) * DAY_MS
        );
        assert_eq!(start_ms(BudgetPeriod::Total, NOW), 0);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        // A Monday is its own week's start.
        let monday = days_from_civil(2026, 11, 23) * DAY_MS + 5;
        assert_eq!(
            start_ms(BudgetPeriod::Week, monday),
            days_from_civil(2026, 11, 23) * DAY_MS
        );
    }
}
