//! The Gamma-Gamma model of spend per purchase (Fader and Hardie 2013, "The Gamma-Gamma model of
//! monetary value"): its maximum-likelihood fit and the expected spend of a customer.
//!
//! A customer's purchases have values `~ Gamma(shape p, rate nu)`, and `nu ~ Gamma(shape q,
//! rate gamma)` across customers. A customer is summarised by `x`, the number of purchases
//! averaged, and `z̄`, their mean value. As in the paper and in `lifetimes`, `x` is the number of
//! repeat purchases and `z̄` the mean value of those repeat purchases (the first purchase left
//! out), so the model is fitted on customers with at least one repeat purchase: that is the
//! definition that reproduces the published CDNOW estimates (see `tests/cdnow_value.rs`).
//!
//! The Gamma function terms depend on `x` alone and are computed once per distinct `x`; the
//! `ln z̄` terms are sums fixed before the fit; one logarithm per customer is left.

use serde::{Deserialize, Serialize};
use statrs::function::gamma::{digamma, ln_gamma};

use super::error::ValueError;
use super::optimize::{Objective, minimize};

/// Where the fit starts, as `lifetimes` does: every parameter 1.
const START: [f64; 3] = [1.0, 1.0, 1.0];

/// The three Gamma-Gamma parameters.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct GammaGammaParams {
    /// Shape of the distribution of one purchase's value.
    pub p: f64,
    /// Shape of the distribution of the value distributions' rates across customers.
    pub q: f64,
    /// Rate of the distribution of the value distributions' rates across customers.
    pub gamma: f64,
}

/// What the Gamma-Gamma model needs of a customer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SpendHistory {
    /// Purchases averaged (repeat purchase days), at least 1.
    pub frequency: u32,
    /// Their mean value, above 0.
    pub mean_spend: f64,
}

impl GammaGammaParams {
    /// The log-likelihood of one customer's mean spend (the density of `z̄` given `x`).
    pub fn log_likelihood(&self, history: SpendHistory) -> f64 {
        let Self { p, q, gamma } = *self;
        let x = f64::from(history.frequency);
        let mean = history.mean_spend;
        ln_gamma(p * x + q) - ln_gamma(p * x) - ln_gamma(q)
            + q * gamma.ln()
            + (p * x - 1.0) * mean.ln()
            + p * x * x.ln()
            - (p * x + q) * (gamma + x * mean).ln()
    }

    /// The expected spend per purchase of a customer with `frequency` purchases of mean value
    /// `mean_spend` (eq. 5 of the paper): a weighted average of the population mean and the
    /// customer's own mean, leaning towards the latter the more purchases there are. Without
    /// purchases (`frequency` 0) it is the population mean, [`GammaGammaParams::mean_spend`].
    pub fn conditional_expected_spend(&self, frequency: u32, mean_spend: f64) -> f64 {
        let Self { p, q, gamma } = *self;
        let x = f64::from(frequency);
        p * (gamma + x * mean_spend) / (p * x + q - 1.0)
    }

    /// The population mean spend per purchase, `p gamma / (q - 1)`; infinite for `q <= 1`.
    pub fn mean_spend(&self) -> f64 {
        if self.q <= 1.0 {
            return f64::INFINITY;
        }
        self.p * self.gamma / (self.q - 1.0)
    }
}

/// A fitted Gamma-Gamma model and how the fit went.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct GammaGammaFit {
    /// The maximum-likelihood parameters.
    pub params: GammaGammaParams,
    /// The log-likelihood of the customers' mean spends at `params` (sum over customers).
    pub log_likelihood: f64,
    /// Customers fitted on.
    pub customers: u64,
    /// L-BFGS iterations.
    pub iterations: u64,
    /// Passes over the data (value and gradient together).
    pub evaluations: u64,
}

/// Fits the Gamma-Gamma model to `histories` by maximum likelihood.
pub fn fit(histories: &[SpendHistory]) -> Result<GammaGammaFit, ValueError> {
    let data = Likelihood::new(histories)?;
    let minimum = minimize(&data, START).map_err(|reason| ValueError::Fit {
        model: "Gamma-Gamma",
        reason,
    })?;
    let [p, q, gamma] = minimum.parameters;
    Ok(GammaGammaFit {
        params: GammaGammaParams { p, q, gamma },
        log_likelihood: -minimum.cost * data.customers,
        customers: histories.len() as u64,
        iterations: minimum.iterations,
        evaluations: minimum.evaluations,
    })
}

/// The data arranged for the likelihood sums (see the module documentation).
#[derive(Debug)]
struct Likelihood {
    customers: f64,
    /// Each distinct `x` and how many customers have it.
    frequency_counts: Vec<(f64, f64)>,
    /// Sum of `ln z̄`.
    sum_ln_mean: f64,
    /// Sum of `x ln z̄`.
    sum_x_ln_mean: f64,
    /// Per customer: `x` and the total `x z̄`.
    customer_totals: Vec<(f64, f64)>,
}

impl Likelihood {
    fn new(histories: &[SpendHistory]) -> Result<Likelihood, ValueError> {
        if histories.is_empty() {
            return Err(ValueError::NoCustomers);
        }
        let mut frequencies = Vec::with_capacity(histories.len());
        let (mut sum_ln_mean, mut sum_x_ln_mean) = (0.0, 0.0);
        let mut customer_totals = Vec::with_capacity(histories.len());
        for (index, history) in histories.iter().enumerate() {
            if history.frequency == 0 {
                return Err(ValueError::InvalidHistory {
                    index,
                    reason: "no repeat purchases to average".to_string(),
                });
            }
            if !(history.mean_spend.is_finite() && history.mean_spend > 0.0) {
                return Err(ValueError::InvalidHistory {
                    index,
                    reason: format!("mean spend {} is not above 0", history.mean_spend),
                });
            }
            let x = f64::from(history.frequency);
            frequencies.push(history.frequency);
            sum_ln_mean += history.mean_spend.ln();
            sum_x_ln_mean += x * history.mean_spend.ln();
            customer_totals.push((x, x * history.mean_spend));
        }
        frequencies.sort_unstable();
        let frequency_counts = frequencies
            .chunk_by(|left, right| left == right)
            .map(|same| (f64::from(same[0]), same.len() as f64))
            .collect();
        Ok(Likelihood {
            customers: histories.len() as f64,
            frequency_counts,
            sum_ln_mean,
            sum_x_ln_mean,
            customer_totals,
        })
    }
}

impl Objective<3> for Likelihood {
    fn evaluate(&self, log_parameters: &[f64; 3], gradient: &mut [f64; 3]) -> f64 {
        let [p, q, gamma] = log_parameters.map(f64::exp);
        let customers = self.customers;
        let ln_gamma_rate = gamma.ln();
        let mut value =
            -customers * ln_gamma(q) + customers * q * ln_gamma_rate + p * self.sum_x_ln_mean
                - self.sum_ln_mean;
        let mut d_p = self.sum_x_ln_mean;
        let mut d_q = -customers * digamma(q) + customers * ln_gamma_rate;
        let mut d_gamma = customers * q / gamma;
        for &(x, count) in &self.frequency_counts {
            let (shape, total_shape) = (p * x, p * x + q);
            value += count * (ln_gamma(total_shape) - ln_gamma(shape) + shape * x.ln());
            let digamma_total = digamma(total_shape);
            d_p += count * x * (digamma_total - digamma(shape) + x.ln());
            d_q += count * digamma_total;
        }
        for &(x, total) in &self.customer_totals {
            let ln_rate = (gamma + total).ln();
            let total_shape = p * x + q;
            value -= total_shape * ln_rate;
            d_p -= x * ln_rate;
            d_q -= ln_rate;
            d_gamma -= total_shape / (gamma + total);
        }
        let scale = -1.0 / customers;
        *gradient = [d_p * p, d_q * q, d_gamma * gamma].map(|derivative| derivative * scale);
        value * scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CDNOW estimates (Fader and Hardie 2013).
    const CDNOW: GammaGammaParams = GammaGammaParams {
        p: 6.25,
        q: 3.74,
        gamma: 15.44,
    };

    fn spend(frequency: u32, mean_spend: f64) -> SpendHistory {
        SpendHistory {
            frequency,
            mean_spend,
        }
    }

    #[test]
    fn a_fit_that_stalls_at_its_top_ends_there() {
        // 16,000 customers drawn from the CDNOW estimates, 1 to 4 repeat purchases each (seed
        // 32 of a likelihood-ratio study). The line search stalled at the top (gradient 2e-9),
        // then stepped out to parameters of 1e95, where the likelihood is NaN, and More-Thuente
        // extrapolated forever: the fit never returned. It must end, at the top.
        use rand::{Rng, SeedableRng};
        use rand_distr::{Distribution, Gamma};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(32);
        let rates = Gamma::new(CDNOW.q, 1.0 / CDNOW.gamma).unwrap();
        let spends: Vec<SpendHistory> = (0..16_000)
            .map(|_| {
                let rate: f64 = rates.sample(&mut rng);
                let value = Gamma::new(CDNOW.p, 1.0 / rate).unwrap();
                let frequency = 1 + (rng.r#gen::<f64>() * 4.0) as u32;
                let total: f64 = (0..frequency).map(|_| value.sample(&mut rng)).sum();
                spend(frequency, total / f64::from(frequency))
            })
            .collect();
        let fitted = fit(&spends).unwrap();
        let truth: f64 = spends.iter().map(|s| CDNOW.log_likelihood(*s)).sum();
        let statistic = 2.0 * (fitted.log_likelihood - truth);
        assert!((0.0..16.27).contains(&statistic), "2·ΔLL = {statistic}");
    }

    #[test]
    fn one_purchase_density_is_the_gamma_mixture() {
        // x = 1: z ~ Gamma(p, nu), nu ~ Gamma(q, gamma) gives the density
        // z^(p-1) gamma^q / B(p, q) / (gamma + z)^(p+q), a compound gamma.
        let z = 20.0f64;
        let GammaGammaParams { p, q, gamma } = CDNOW;
        let ln_beta = ln_gamma(p) + ln_gamma(q) - ln_gamma(p + q);
        let expected = (p - 1.0) * z.ln() + q * gamma.ln() - ln_beta - (p + q) * (gamma + z).ln();
        let actual = CDNOW.log_likelihood(spend(1, z));
        assert!((actual - expected).abs() < 1e-10, "{actual} vs {expected}");
    }

    #[test]
    fn grouped_sum_equals_the_per_customer_sum_and_the_gradient_its_slope() {
        let histories = [
            spend(1, 20.0),
            spend(1, 35.5),
            spend(2, 12.0),
            spend(7, 48.25),
            spend(2, 100.0),
        ];
        let data = Likelihood::new(&histories).unwrap();
        assert_eq!(
            data.frequency_counts,
            vec![(1.0, 2.0), (2.0, 2.0), (7.0, 1.0)]
        );
        let point = [CDNOW.p, CDNOW.q, CDNOW.gamma].map(f64::ln);
        let mut gradient = [0.0; 3];
        let cost = data.evaluate(&point, &mut gradient);
        let per_customer: f64 = histories.iter().map(|h| CDNOW.log_likelihood(*h)).sum();
        assert!(
            (cost * -5.0 - per_customer).abs() < 1e-10,
            "{cost} vs {per_customer}"
        );
        crate::offline::value::optimize::assert_gradient_matches(&data, point);
    }

    #[test]
    fn expected_spend_shrinks_towards_the_population_mean() {
        let population = CDNOW.mean_spend();
        assert!((population - 6.25 * 15.44 / 2.74).abs() < 1e-12);
        assert!((CDNOW.conditional_expected_spend(0, 0.0) - population).abs() < 1e-12);
        // A customer far above the mean: the more purchases, the closer to their own mean.
        let once = CDNOW.conditional_expected_spend(1, 200.0);
        let often = CDNOW.conditional_expected_spend(20, 200.0);
        assert!(
            population < once && once < often && often < 200.0,
            "{once} {often}"
        );
        // eq. 5 by hand for x = 2, z̄ = 30: weight p x / (p x + q - 1) on z̄.
        let weight = 12.5 / (12.5 + 2.74);
        let expected = (1.0 - weight) * population + weight * 30.0;
        assert!((CDNOW.conditional_expected_spend(2, 30.0) - expected).abs() < 1e-10);
        let no_mean = GammaGammaParams { q: 0.9, ..CDNOW };
        assert_eq!(no_mean.mean_spend(), f64::INFINITY);
    }

    #[test]
    fn recovers_parameters_from_simulated_spend() {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Gamma};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let rates = Gamma::new(CDNOW.q, 1.0 / CDNOW.gamma).unwrap();
        let histories: Vec<SpendHistory> = (0..20_000)
            .map(|customer| {
                let frequency = 1 + customer % 6;
                let values = Gamma::new(CDNOW.p, 1.0 / rates.sample(&mut rng)).unwrap();
                let total: f64 = (0..frequency).map(|_| values.sample(&mut rng)).sum();
                spend(frequency, total / f64::from(frequency))
            })
            .collect();
        let fitted = fit(&histories).unwrap();
        assert_eq!(fitted.customers, 20_000);
        let GammaGammaParams { p, q, gamma } = fitted.params;
        // Sampling error at 20,000 customers is a few percent.
        for (name, actual, expected) in [("p", p, 6.25), ("q", q, 3.74), ("gamma", gamma, 15.44)] {
            assert!(
                (actual / expected - 1.0).abs() < 0.1,
                "{name}: {actual} vs {expected}"
            );
        }
        assert!(
            fitted.log_likelihood
                > histories
                    .iter()
                    .map(|h| CDNOW.log_likelihood(*h))
                    .sum::<f64>()
        );
    }

    #[test]
    fn rejects_customers_without_repeat_spend() {
        let error = fit(&[spend(1, 5.0), spend(0, 5.0)])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("customer 1") && error.contains("no repeat purchases"),
            "{error}"
        );
        let error = fit(&[spend(2, 0.0)]).unwrap_err().to_string();
        assert!(
            error.contains("customer 0") && error.contains("not above 0"),
            "{error}"
        );
    }
}
