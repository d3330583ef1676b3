//! Simulated time: millisecond units of event time, and the diurnal profile that thins session
//! arrivals (most at 19:00, fewest at 07:00).

use propensity_actors::event::Millis;

pub(super) const SECOND: Millis = 1_000;
pub(super) const MINUTE: Millis = 60 * SECOND;
pub(super) const HOUR: Millis = 60 * MINUTE;
pub(super) const DAY: Millis = 24 * HOUR;

pub(super) const DIURNAL_AMPLITUDE: f64 = 0.7;
const DIURNAL_PEAK_HOUR: f64 = 19.0;

/// The diurnal session-rate multiplier at `time`, between `1 − A` and `1 + A`.
pub(super) fn diurnal(time: Millis) -> f64 {
    let hour = time.rem_euclid(DAY) as f64 / HOUR as f64;
    1.0 + DIURNAL_AMPLITUDE * (std::f64::consts::TAU * (hour - DIURNAL_PEAK_HOUR) / 24.0).cos()
}
