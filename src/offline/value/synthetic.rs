//! Customers drawn from the BG/NBD process itself, for the fit benchmark and for tests that need
//! the truth: a cohort whose first purchases are spread over the first weeks, followed through
//! a calibration and a holdout period.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution, Gamma};

use super::bgnbd::BgNbdParams;
use super::summary::{DAYS_PER_WEEK, Purchase, RepeatHistory};

/// The shape of a simulated cohort, in weeks from the start of the data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cohort {
    /// Customers to draw.
    pub customers: usize,
    /// First purchases are uniform over `[0, first_purchase_weeks)`.
    pub first_purchase_weeks: f64,
    /// End of the calibration period.
    pub calibration_weeks: f64,
    /// End of the holdout period (at or after the calibration end); purchases are drawn up to it.
    pub end_weeks: f64,
}

impl Cohort {
    /// The CDNOW cohort's shape: first purchases over 12 weeks, 39 weeks of calibration, 78 of
    /// data in all.
    pub fn cdnow_like(customers: usize) -> Cohort {
        Cohort {
            customers,
            first_purchase_weeks: 12.0,
            calibration_weeks: 39.0,
            end_weeks: 78.0,
        }
    }
}

/// One simulated customer's purchase times, in weeks from the start of the data.
#[derive(Clone, Debug, PartialEq)]
pub struct SimulatedCustomer {
    /// The first purchase.
    pub first_purchase: f64,
    /// Every repeat purchase up to the end of the cohort's data, in order.
    pub repeat_purchases: Vec<f64>,
}

impl SimulatedCustomer {
    /// The exact (continuous-time) calibration history up to `calibration_weeks`.
    pub fn calibration_history(&self, calibration_weeks: f64) -> RepeatHistory {
        let repeats = self
            .repeat_purchases
            .iter()
            .take_while(|&&time| time <= calibration_weeks);
        let (frequency, last) = repeats.fold((0u32, self.first_purchase), |(count, _), &time| {
            (count + 1, time)
        });
        RepeatHistory {
            frequency,
            recency: last - self.first_purchase,
            age: calibration_weeks - self.first_purchase,
        }
    }

    /// Repeat purchases after `calibration_weeks`.
    pub fn holdout_purchases(&self, calibration_weeks: f64) -> u32 {
        self.repeat_purchases
            .iter()
            .filter(|&&time| time > calibration_weeks)
            .count() as u32
    }

    /// The purchases as they would be logged, each on its calendar day (`start_day` is the day
    /// of time 0), for 1 unit of money each.
    pub fn purchases(&self, customer_id: u64, start_day: i64) -> impl Iterator<Item = Purchase> {
        std::iter::once(self.first_purchase)
            .chain(self.repeat_purchases.iter().copied())
            .map(move |time| Purchase {
                customer_id,
                day: start_day + (time * DAYS_PER_WEEK).floor() as i64,
                amount: 1.0,
            })
    }
}

/// Draws `cohort.customers` customers from BG/NBD with `params`, deterministically for a `seed`:
/// each draws a purchase rate from Gamma(r, alpha) and a dropout probability from Beta(a, b),
/// buys at exponential intervals, and after each repeat purchase drops out with that probability.
pub fn simulate(params: BgNbdParams, cohort: Cohort, seed: u64) -> Vec<SimulatedCustomer> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let draws = CustomerDraws::new(params);
    (0..cohort.customers)
        .map(|_| {
            let first_purchase = rng.r#gen::<f64>() * cohort.first_purchase_weeks;
            draws.customer(first_purchase, cohort.end_weeks, &mut rng)
        })
        .collect()
}

/// The BG/NBD population as distributions: one customer's purchase rate and dropout
/// probability, then their purchases. `propensity generate --process repeat-buyers` draws its
/// shoppers with it too, so the generator and the fit's own tests share one definition.
#[derive(Clone, Copy, Debug)]
pub struct CustomerDraws {
    rates: Gamma<f64>,
    dropouts: Beta<f64>,
}

impl CustomerDraws {
    /// Panics unless every parameter is positive and finite (they are constants here).
    pub fn new(params: BgNbdParams) -> CustomerDraws {
        CustomerDraws {
            rates: Gamma::new(params.r, 1.0 / params.alpha).expect("BG/NBD r and alpha are > 0"),
            dropouts: Beta::new(params.a, params.b).expect("BG/NBD a and b are > 0"),
        }
    }

    /// One customer whose first purchase is at `first_purchase` (weeks): draws a rate and a
    /// dropout probability, then repeat purchases at exponential intervals up to `end_weeks`,
    /// dropping out after each with that probability.
    pub fn customer<R: Rng>(
        &self,
        first_purchase: f64,
        end_weeks: f64,
        rng: &mut R,
    ) -> SimulatedCustomer {
        let rate: f64 = self.rates.sample(rng);
        let dropout: f64 = self.dropouts.sample(rng);
        let mut repeat_purchases = Vec::new();
        let mut time = first_purchase;
        loop {
            // An exponential wait by inversion. A rate that underflowed to 0 makes the wait
            // infinite or NaN; both end the customer's purchases.
            let uniform: f64 = 1.0 - rng.r#gen::<f64>();
            time += -uniform.ln() / rate;
            if time.is_nan() || time > end_weeks {
                break;
            }
            repeat_purchases.push(time);
            if rng.r#gen::<f64>() < dropout {
                break;
            }
        }
        SimulatedCustomer {
            first_purchase,
            repeat_purchases,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offline::value::bgnbd;

    const CDNOW: BgNbdParams = BgNbdParams {
        r: 0.243,
        alpha: 4.414,
        a: 0.793,
        b: 2.426,
    };

    #[test]
    fn the_same_seed_draws_the_same_customers() {
        let cohort = Cohort::cdnow_like(100);
        assert_eq!(simulate(CDNOW, cohort, 1), simulate(CDNOW, cohort, 1));
        assert_ne!(simulate(CDNOW, cohort, 1), simulate(CDNOW, cohort, 2));
    }

    #[test]
    fn summaries_cut_at_the_calibration_end() {
        let customer = SimulatedCustomer {
            first_purchase: 2.0,
            repeat_purchases: vec![3.0, 10.5, 39.0, 40.0, 70.0],
        };
        let history = customer.calibration_history(39.0);
        assert_eq!(history.frequency, 3);
        assert_eq!(history.recency, 37.0);
        assert_eq!(history.age, 37.0);
        assert_eq!(customer.holdout_purchases(39.0), 2);
        let days: Vec<i64> = customer.purchases(5, 100).map(|p| p.day).collect();
        assert_eq!(days, vec![114, 121, 173, 373, 380, 590]);
    }

    #[test]
    fn recovers_the_parameters_it_was_drawn_with() {
        let cohort = Cohort::cdnow_like(50_000);
        let customers = simulate(CDNOW, cohort, 11);
        let histories: Vec<RepeatHistory> = customers
            .iter()
            .map(|customer| customer.calibration_history(cohort.calibration_weeks))
            .collect();
        let fitted = bgnbd::fit(&histories).unwrap();
        let BgNbdParams { r, alpha, a, b } = fitted.params;
        // Sampling error at 50,000 customers: a few percent (a and b the loosest).
        for (name, actual, expected, tolerance) in [
            ("r", r, CDNOW.r, 0.05),
            ("alpha", alpha, CDNOW.alpha, 0.08),
            ("a", a, CDNOW.a, 0.15),
            ("b", b, CDNOW.b, 0.2),
        ] {
            assert!(
                (actual / expected - 1.0).abs() < tolerance,
                "{name}: {actual} vs {expected}"
            );
        }
    }

    #[test]
    fn predictions_match_what_the_process_does() {
        // With the true parameters, the model's expectations must equal the simulated averages
        // up to sampling error: new customers' purchases over 39 weeks (eq. 9) and the holdout
        // purchases of the calibrated cohort (eq. 10), in total and among the frequent buyers.
        let cohort = Cohort {
            customers: 200_000,
            first_purchase_weeks: 0.0,
            calibration_weeks: 39.0,
            end_weeks: 78.0,
        };
        let customers = simulate(CDNOW, cohort, 3);
        let mean_first_39 = customers
            .iter()
            .map(|customer| f64::from(customer.calibration_history(39.0).frequency))
            .sum::<f64>()
            / customers.len() as f64;
        let expected_first_39 = CDNOW.expected_purchases(39.0);
        assert!(
            (mean_first_39 / expected_first_39 - 1.0).abs() < 0.02,
            "{mean_first_39} vs {expected_first_39}"
        );
        let (mut predicted, mut actual) = (0.0, 0.0);
        let (mut predicted_frequent, mut actual_frequent) = (0.0, 0.0);
        for customer in &customers {
            let history = customer.calibration_history(39.0);
            let prediction = CDNOW.conditional_expected_purchases(39.0, history);
            let holdout = f64::from(customer.holdout_purchases(39.0));
            predicted += prediction;
            actual += holdout;
            if history.frequency >= 5 {
                predicted_frequent += prediction;
                actual_frequent += holdout;
            }
        }
        assert!(
            (predicted / actual - 1.0).abs() < 0.02,
            "{predicted} vs {actual}"
        );
        assert!(
            (predicted_frequent / actual_frequent - 1.0).abs() < 0.03,
            "{predicted_frequent} vs {actual_frequent}"
        );
    }
}
