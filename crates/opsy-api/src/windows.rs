//! Maintenance windows: when builds (PackerBuilder) and node group updates (AMIRefresher) may
//! start. A window opens at each time its cron schedule names, in its IANA time zone (jiff's
//! bundled time-zone database, so daylight-saving changes are honoured), and stays open for its
//! duration.

use std::str::FromStr;

use jiff::{SignedDuration, Timestamp, tz::TimeZone};
use jiff_cron::Schedule;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::common::{MaintenanceWindow, WindowStatus};

/// Occurrences looked at per window and question; a schedule firing every minute with a
/// seven-day duration needs 10 080.
const MAX_STEPS: usize = 20_000;

/// Parsed maintenance windows. No windows: always open.
#[derive(Debug, Clone, Default)]
pub struct Windows {
    windows: Vec<Window>,
}

#[derive(Debug, Clone)]
struct Window {
    schedule: Schedule,
    duration: SignedDuration,
    tz: TimeZone,
}

/// Where the windows stand at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowState {
    /// A window is open (always, when there are none).
    pub open: bool,
    /// When the open window closes.
    pub closes: Option<Timestamp>,
    /// When the next window opens.
    pub next_opens: Option<Timestamp>,
}

impl WindowState {
    /// As recorded in status.
    pub fn status(&self) -> WindowStatus {
        WindowStatus {
            open: self.open,
            closes: self.closes.map(Time),
            next_opens: self.next_opens.map(Time),
        }
    }

    /// `outside every maintenance window (spec.maintenanceWindows); the next opens at …`.
    pub fn closed_message(&self, field: &str) -> String {
        match self.next_opens {
            Some(at) => {
                format!("outside every maintenance window ({field}); the next opens at {at}")
            }
            None => format!("outside every maintenance window ({field}); none opens again"),
        }
    }
}

impl Windows {
    /// Parses `windows` (`field` names them in errors): the five-field schedule and the time
    /// zone of each.
    pub fn parse(windows: &[MaintenanceWindow], field: &str) -> Result<Self, String> {
        let windows = windows
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let fields: Vec<&str> = w.schedule.split_whitespace().collect();
                if fields.len() != 5 {
                    return Err(format!(
                        "{field}[{i}].schedule {:?} must have five fields (minute hour \
                         day-of-month month day-of-week), e.g. \"0 2 * * SAT,SUN\"",
                        w.schedule
                    ));
                }
                if fields[4].chars().any(|c| c.is_ascii_digit()) {
                    return Err(format!(
                        "{field}[{i}].schedule {:?}: name the days of the week (MON-FRI, \
                         SAT,SUN); cron dialects number them differently",
                        w.schedule
                    ));
                }
                if !matches!(fields[2], "*" | "?") && !matches!(fields[4], "*" | "?") {
                    return Err(format!(
                        "{field}[{i}].schedule {:?} restricts both the day of the month and the \
                         day of the week: cron dialects disagree on whether a day must match \
                         either (Vixie cron, Kubernetes CronJobs) or both; restrict one of them, \
                         or give two windows",
                        w.schedule
                    ));
                }
                let schedule = Schedule::from_str(&format!("0 {}", fields.join(" ")))
                    .map_err(|e| format!("{field}[{i}].schedule {:?}: {e}", w.schedule))?;
                let tz = TimeZone::get(&w.time_zone).map_err(|_| {
                    format!(
                        "{field}[{i}].timeZone {:?} is not an IANA time zone (e.g. UTC, \
                         Europe/Berlin, America/New_York)",
                        w.time_zone
                    )
                })?;
                let duration = SignedDuration::try_from(w.duration.as_std())
                    .map_err(|e| format!("{field}[{i}].duration: {e}"))?;
                if duration.is_zero() {
                    return Err(format!("{field}[{i}].duration must be more than zero"));
                }
                Ok(Window {
                    schedule,
                    duration,
                    tz,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { windows })
    }

    /// Whether there are no windows (always open).
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Where the windows stand at `now`.
    pub fn at(&self, now: Timestamp) -> WindowState {
        if self.windows.is_empty() {
            return WindowState {
                open: true,
                ..WindowState::default()
            };
        }
        let mut closes: Option<Timestamp> = None;
        for window in &self.windows {
            if let Some(until) = window.open_until(now) {
                closes = Some(closes.map_or(until, |c| c.max(until)));
            }
        }
        let after = closes.unwrap_or(now);
        let next_opens = self
            .windows
            .iter()
            .filter_map(|w| w.next_after(after))
            .min();
        WindowState {
            open: closes.is_some(),
            closes,
            next_opens,
        }
    }
}

impl Window {
    /// When the window closes, if it is open at `now`: the latest opening in
    /// `(now - duration, now]` plus the duration.
    fn open_until(&self, now: Timestamp) -> Option<Timestamp> {
        let from = now
            .checked_sub(self.duration)
            .ok()?
            .to_zoned(self.tz.clone());
        let mut until = None;
        for opened in self.schedule.after(from).take(MAX_STEPS) {
            let opened = opened.timestamp();
            if opened > now {
                break;
            }
            until = opened.checked_add(self.duration).ok();
        }
        until
    }

    /// The first opening after `at`.
    fn next_after(&self, at: Timestamp) -> Option<Timestamp> {
        self.schedule
            .after(at.to_zoned(self.tz.clone()))
            .next()
            .map(|z| z.timestamp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::Duration;

    fn window(schedule: &str, duration: &str, tz: &str) -> MaintenanceWindow {
        MaintenanceWindow {
            schedule: schedule.into(),
            duration: Duration::parse(duration).unwrap(),
            time_zone: tz.into(),
        }
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn no_windows_is_always_open() {
        let state = Windows::default().at(ts("2026-11-29T12:00:00Z"));
        assert!(state.open);
        assert_eq!(state.closes, None);
    }

    #[test]
    fn a_weekend_window_in_a_time_zone_opens_and_closes_on_local_time() {
        // 02:00 Berlin on Saturdays and Sundays for 4 hours. 2026-11-28 is a Saturday; Berlin
        // is UTC+1 in winter, so the window is 01:00–05:00 UTC.
        let w = Windows::parse(&[window("0 2 * * SAT,SUN", "4h", "Europe/Berlin")], "w").unwrap();
        let inside = w.at(ts("2026-11-28T03:00:00Z"));
        assert!(inside.open);
        assert_eq!(inside.closes, Some(ts("2026-11-28T05:00:00Z")));
        assert_eq!(inside.next_opens, Some(ts("2026-11-29T01:00:00Z")));
        let friday = w.at(ts("2026-11-27T12:00:00Z"));
        assert!(!friday.open);
        assert_eq!(friday.next_opens, Some(ts("2026-11-28T01:00:00Z")));
        let after_sunday = w.at(ts("2026-11-29T05:00:00Z"));
        assert!(!after_sunday.open, "closes exactly at the end");
        assert_eq!(after_sunday.next_opens, Some(ts("2026-12-05T01:00:00Z")));
        // Summer time: UTC+2, so 00:00–04:00 UTC.
        let summer = w.at(ts("2026-07-04T00:30:00Z"));
        assert!(summer.open);
        assert_eq!(summer.closes, Some(ts("2026-07-04T04:00:00Z")));
    }

    #[test]
    fn several_windows_combine() {
        let w = Windows::parse(
            &[
                window("0 22 * * MON-FRI", "2h", "UTC"),
                window("30 23 * * TUE", "3h", "UTC"),
            ],
            "w",
        )
        .unwrap();
        // Tuesday 2026-12-01 23:45: both open; the later close wins.
        let state = w.at(ts("2026-12-01T23:45:00Z"));
        assert!(state.open);
        assert_eq!(state.closes, Some(ts("2026-12-02T02:30:00Z")));
        assert_eq!(state.next_opens, Some(ts("2026-12-02T22:00:00Z")));
    }

    #[test]
    fn bad_windows_name_the_field_and_the_fix() {
        let cases = [
            (window("0 2 * *", "1h", "UTC"), "must have five fields"),
            (
                window("0 2 * * 6", "1h", "UTC"),
                "name the days of the week",
            ),
            (
                window("0 2 1 * MON", "1h", "UTC"),
                "restricts both the day of the month and the day of the week",
            ),
            (
                window("0 25 * * *", "1h", "UTC"),
                "spec.maintenanceWindows[0].schedule",
            ),
            (
                window("0 2 * * *", "1h", "Mars/Olympus"),
                "is not an IANA time zone",
            ),
        ];
        for (w, want) in cases {
            let error = Windows::parse(&[w], "spec.maintenanceWindows").unwrap_err();
            assert!(error.contains(want), "{error}");
        }
    }
}
