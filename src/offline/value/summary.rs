//! Per-customer summaries of purchase histories: what the BG/NBD and Gamma-Gamma models see of
//! a customer.
//!
//! Time is counted in calendar days and reported in weeks. Several purchases by one customer on
//! one day count as one purchase whose spend is their total: that is how the CDNOW literature
//! (and `lifetimes`) counts, and it keeps a basket of several products, which the REES46 files
//! log as one purchase event per product, from looking like several visits.

use serde::Serialize;

/// Days in the models' unit of time, the week.
pub const DAYS_PER_WEEK: f64 = 7.0;

/// One purchase: who, on which day, for how much.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Purchase {
    /// The customer's id in the source data.
    pub customer_id: u64,
    /// Calendar day of the purchase, counted from 1970-01-01 (UTC).
    pub day: i64,
    /// What the purchase cost, in the data's currency.
    pub amount: f64,
}

/// What BG/NBD needs of one customer over the calibration period, in weeks.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RepeatHistory {
    /// Repeat purchase days, `x`: purchase days after the first one.
    pub frequency: u32,
    /// Weeks from the first purchase to the last, `t_x` (0 without repeat purchases).
    pub recency: f64,
    /// Weeks from the first purchase to the end of the calibration period, `T`.
    pub age: f64,
}

/// One customer's calibration summary, and their repeat purchases in the holdout period if any.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CustomerSummary {
    /// The customer's id in the source data.
    pub customer_id: u64,
    /// Repeat purchase days in the calibration period, `x`.
    pub frequency: u32,
    /// Weeks from the first purchase to the last one in the calibration period, `t_x`.
    pub recency: f64,
    /// Weeks from the first purchase to the end of the calibration period, `T`.
    pub age: f64,
    /// Mean spend of the repeat purchase days in the calibration period (each day's total; the
    /// first day excluded), `None` without repeat purchases.
    pub mean_repeat_spend: Option<f64>,
    /// Purchase days in the holdout period (0 without one).
    pub holdout_frequency: u32,
}

impl CustomerSummary {
    /// The part of the summary that BG/NBD is fitted on.
    pub fn history(&self) -> RepeatHistory {
        RepeatHistory {
            frequency: self.frequency,
            recency: self.recency,
            age: self.age,
        }
    }
}

/// The period a summary covers: calibration up to and including `calibration_end`, then the
/// holdout period up to and including `holdout_end`, if there is one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Periods {
    /// Last day of the calibration period (days since 1970-01-01).
    pub calibration_end: i64,
    /// Last day of the holdout period, after `calibration_end`.
    pub holdout_end: Option<i64>,
}

impl Periods {
    /// Length of the holdout period in weeks (0 without one).
    pub fn holdout_weeks(&self) -> f64 {
        self.holdout_end.map_or(0.0, |end| {
            (end - self.calibration_end) as f64 / DAYS_PER_WEEK
        })
    }
}

/// Summarises `purchases` (in any order; sorted here) per customer, one summary per customer
/// whose first purchase falls in the calibration period, in customer id order. Customers who
/// first bought later are left out: they are not part of the calibrated cohort, and counting
/// them would say they were seen and did not buy. Purchases after the holdout end are ignored.
pub fn summarize(purchases: &mut [Purchase], periods: Periods) -> Vec<CustomerSummary> {
    purchases.sort_unstable_by_key(|purchase| (purchase.customer_id, purchase.day));
    let mut summaries = Vec::new();
    for customer in purchases.chunk_by(|left, right| left.customer_id == right.customer_id) {
        if let Some(summary) = summarize_customer(customer, periods) {
            summaries.push(summary);
        }
    }
    summaries
}

/// One customer's purchases, sorted by day.
fn summarize_customer(purchases: &[Purchase], periods: Periods) -> Option<CustomerSummary> {
    let first_day = purchases.first()?.day;
    if first_day > periods.calibration_end {
        return None;
    }
    let mut frequency = 0u32;
    let mut last_day = first_day;
    let mut repeat_spend = 0.0;
    let mut holdout_frequency = 0u32;
    for day in purchases.chunk_by(|left, right| left.day == right.day) {
        let date = day[0].day;
        if date == first_day {
            continue;
        }
        if date <= periods.calibration_end {
            frequency += 1;
            last_day = date;
            repeat_spend += day.iter().map(|purchase| purchase.amount).sum::<f64>();
        } else if periods.holdout_end.is_some_and(|end| date <= end) {
            holdout_frequency += 1;
        }
    }
    Some(CustomerSummary {
        customer_id: purchases[0].customer_id,
        frequency,
        recency: (last_day - first_day) as f64 / DAYS_PER_WEEK,
        age: (periods.calibration_end - first_day) as f64 / DAYS_PER_WEEK,
        mean_repeat_spend: (frequency > 0).then(|| repeat_spend / f64::from(frequency)),
        holdout_frequency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purchase(customer_id: u64, day: i64, amount: f64) -> Purchase {
        Purchase {
            customer_id,
            day,
            amount,
        }
    }

    #[test]
    fn counts_repeat_days_not_purchases() {
        let mut purchases = vec![
            // Customer 7: two purchases on day 10 (the first day), two on day 17, one on 24.
            purchase(7, 17, 5.0),
            purchase(7, 10, 1.0),
            purchase(7, 24, 2.0),
            purchase(7, 10, 1.5),
            purchase(7, 17, 3.0),
            // Customer 3: one purchase only.
            purchase(3, 12, 9.0),
        ];
        let periods = Periods {
            calibration_end: 38,
            holdout_end: None,
        };
        let summaries = summarize(&mut purchases, periods);
        assert_eq!(summaries.len(), 2);
        let single = &summaries[0];
        assert_eq!(single.customer_id, 3);
        assert_eq!(single.frequency, 0);
        assert_eq!(single.recency, 0.0);
        assert_eq!(single.age, 26.0 / 7.0);
        assert_eq!(single.mean_repeat_spend, None);
        let repeat = &summaries[1];
        assert_eq!(repeat.customer_id, 7);
        assert_eq!(repeat.frequency, 2);
        assert_eq!(repeat.recency, 2.0);
        assert_eq!(repeat.age, 4.0);
        // Day 17 spent 8, day 24 spent 2; the first day's 2.5 is not a repeat.
        assert_eq!(repeat.mean_repeat_spend, Some(5.0));
    }

    #[test]
    fn splits_calibration_and_holdout_and_leaves_out_late_customers() {
        let mut purchases = vec![
            purchase(1, 0, 1.0),
            purchase(1, 7, 1.0),
            purchase(1, 14, 1.0), // the last calibration day: still calibration
            purchase(1, 15, 1.0),
            purchase(1, 15, 4.0), // one holdout day, two purchases
            purchase(1, 21, 1.0), // the last holdout day
            purchase(1, 22, 1.0), // after the holdout: ignored
            purchase(2, 15, 1.0), // first bought in the holdout: not in the cohort
        ];
        let periods = Periods {
            calibration_end: 14,
            holdout_end: Some(21),
        };
        assert_eq!(periods.holdout_weeks(), 1.0);
        let summaries = summarize(&mut purchases, periods);
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].frequency, 2);
        assert_eq!(summaries[0].recency, 2.0);
        assert_eq!(summaries[0].age, 2.0);
        assert_eq!(summaries[0].holdout_frequency, 2);
    }
}
