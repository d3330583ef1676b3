//! The BG/NBD model of repeat purchasing (Fader, Hardie and Lee 2005, "Counting your customers
//! the easy way", Marketing Science 24(2)): its maximum-likelihood fit and the predictions made
//! from it.
//!
//! While alive, a customer buys at Poisson rate `lambda ~ Gamma(shape r, rate alpha)`; after each
//! repeat purchase they drop out for good with probability `p ~ Beta(a, b)`. Time is in weeks.
//!
//! The fit is meant for millions of customers, so the log-likelihood is arranged around what
//! changes per customer: the Gamma and Beta function terms depend on the frequency `x` alone and
//! are computed once per distinct frequency, customers with identical `(x, t_x, T)` are merged
//! with a weight (summaries on a day grid repeat a lot), and what is left per merged customer is
//! two logarithms, an exponential and a `ln_1p` for the value and the gradient together, with no
//! allocation.

use serde::{Deserialize, Serialize};
use statrs::function::gamma::{digamma, ln_gamma};

use super::error::ValueError;
use super::optimize::{Objective, minimize};
use super::summary::RepeatHistory;

/// Where the fit starts, as `lifetimes` does: every parameter 1.
const START: [f64; 4] = [1.0, 1.0, 1.0, 1.0];
/// Terms the hypergeometric series may take before it is declared divergent.
const HYPERGEOMETRIC_MAX_TERMS: usize = 1_000_000;
/// Exponents above this would overflow `exp`: the stable form is used instead.
const EXP_LIMIT: f64 = 700.0;

/// The four BG/NBD parameters.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct BgNbdParams {
    /// Shape of the Gamma distribution of purchase rates.
    pub r: f64,
    /// Rate (inverse scale, in weeks) of the Gamma distribution of purchase rates.
    pub alpha: f64,
    /// First shape of the Beta distribution of dropout probabilities.
    pub a: f64,
    /// Second shape of the Beta distribution of dropout probabilities.
    pub b: f64,
}

impl BgNbdParams {
    /// The log-likelihood of one customer's history (eq. 6 of the paper, in logs).
    pub fn log_likelihood(&self, history: RepeatHistory) -> f64 {
        let Self { r, alpha, a, b } = *self;
        let x = f64::from(history.frequency);
        let gamma_terms = ln_gamma(r + x) - ln_gamma(r) + r * alpha.ln();
        let beta_terms = ln_gamma(b + x) + ln_gamma(a + b) - ln_gamma(b) - ln_gamma(a + b + x);
        let alive = -(r + x) * (alpha + history.age).ln();
        let either = if history.frequency == 0 {
            alive
        } else {
            let dropped = a.ln() - (b + x - 1.0).ln() - (r + x) * (alpha + history.recency).ln();
            log_add_exp(alive, dropped)
        };
        gamma_terms + beta_terms + either
    }

    /// The probability that a customer with this history is still alive at the end of the
    /// calibration period; 1 without repeat purchases (the model has no dropout before the first
    /// repeat purchase).
    pub fn probability_alive(&self, history: RepeatHistory) -> f64 {
        if history.frequency == 0 {
            return 1.0;
        }
        let log_odds_dead = self.log_odds_dead(history);
        // 1 / (1 + e^d), written so that neither branch overflows.
        if log_odds_dead > 0.0 {
            let inverse = (-log_odds_dead).exp();
            inverse / (1.0 + inverse)
        } else {
            1.0 / (1.0 + log_odds_dead.exp())
        }
    }

    /// `ln(P(dead) / P(alive))` for a customer with repeat purchases.
    fn log_odds_dead(&self, history: RepeatHistory) -> f64 {
        let x = f64::from(history.frequency);
        (self.a / (self.b + x - 1.0)).ln()
            + (self.r + x) * ((self.alpha + history.age) / (self.alpha + history.recency)).ln()
    }

    /// The expected number of repeat purchases of a customer with this history in the next
    /// `weeks` weeks after the calibration period (eq. 10 of the paper).
    ///
    /// The paper's `2F1(r+x, b+x; a+b+x-1; z)` is taken through Euler's transformation,
    /// `2F1(A, B; C; z) = (1-z)^(C-A-B) 2F1(C-A, C-B; C; z)`, which here turns into
    /// `(1-z)^(a-1-r-x) 2F1(a+b-1-r, a-1; a+b+x-1; z)`: the new upper parameters do not grow with
    /// `x`, so the series converges in a few terms for typical customers instead of slowly for
    /// frequent buyers, and the power `((alpha+T)/(alpha+T+t))^(r+x)` in front of it collapses to
    /// `(1-z)^(a-1)`. Undefined (division by zero) for `a = 1` exactly.
    pub fn conditional_expected_purchases(&self, weeks: f64, history: RepeatHistory) -> f64 {
        let Self { r, alpha, a, b } = *self;
        let x = f64::from(history.frequency);
        let z = weeks / (alpha + history.age + weeks);
        let hypergeometric = hyp2f1(a + b - 1.0 - r, a - 1.0, a + b + x - 1.0, z);
        let bracket = 1.0 - (1.0 - z).powf(a - 1.0) * hypergeometric;
        (a + b + x - 1.0) / (a - 1.0) * bracket * self.probability_alive(history)
    }

    /// The expected number of repeat purchases of a new customer in their first `weeks` weeks
    /// after the first purchase (eq. 9 of the paper; eq. 10 with `x = t_x = T = 0`).
    pub fn expected_purchases(&self, weeks: f64) -> f64 {
        self.conditional_expected_purchases(
            weeks,
            RepeatHistory {
                frequency: 0,
                recency: 0.0,
                age: 0.0,
            },
        )
    }
}

/// A fitted BG/NBD model and how the fit went.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct BgNbdFit {
    /// The maximum-likelihood parameters.
    pub params: BgNbdParams,
    /// The log-likelihood of the calibration data at `params` (sum over customers).
    pub log_likelihood: f64,
    /// Customers fitted on.
    pub customers: u64,
    /// Distinct `(x, t_x, T)` histories the likelihood was summed over.
    pub distinct_histories: u64,
    /// L-BFGS iterations.
    pub iterations: u64,
    /// Passes over the data (value and gradient together).
    pub evaluations: u64,
}

/// Fits BG/NBD to `histories` by maximum likelihood.
pub fn fit(histories: &[RepeatHistory]) -> Result<BgNbdFit, ValueError> {
    let data = Likelihood::new(histories)?;
    let minimum = minimize(&data, START).map_err(|reason| {
        let repeat: f64 = data.repeat.iter().map(|group| group.weight).sum();
        ValueError::Fit {
            model: "BG/NBD",
            reason: format!(
                "{reason} ({repeat} of {} customers made a repeat purchase; with few, the likelihood can keep rising towards infinite parameters)",
                data.customers
            ),
        }
    })?;
    let [r, alpha, a, b] = minimum.parameters;
    Ok(BgNbdFit {
        params: BgNbdParams { r, alpha, a, b },
        log_likelihood: -minimum.cost * data.customers,
        customers: histories.len() as u64,
        distinct_histories: (data.no_repeat.len() + data.repeat.len()) as u64,
        iterations: minimum.iterations,
        evaluations: minimum.evaluations,
    })
}

/// Customers without repeat purchases who share an age.
#[derive(Clone, Copy, Debug, PartialEq)]
struct NoRepeatGroup {
    age: f64,
    weight: f64,
}

/// Customers with repeat purchases who share `(x, t_x, T)`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct RepeatGroup {
    frequency: f64,
    recency: f64,
    age: f64,
    weight: f64,
}

/// The data arranged for fast likelihood sums (see the module documentation).
#[derive(Debug)]
struct Likelihood {
    /// Every customer, as a weight.
    customers: f64,
    /// Each distinct frequency and how many customers have it.
    frequency_counts: Vec<(f64, f64)>,
    no_repeat: Vec<NoRepeatGroup>,
    repeat: Vec<RepeatGroup>,
}

impl Likelihood {
    /// Checks and groups the histories.
    fn new(histories: &[RepeatHistory]) -> Result<Likelihood, ValueError> {
        if histories.is_empty() {
            return Err(ValueError::NoCustomers);
        }
        for (index, history) in histories.iter().enumerate() {
            check(history).map_err(|reason| ValueError::InvalidHistory { index, reason })?;
        }
        let mut sorted: Vec<RepeatHistory> = histories.to_vec();
        sorted.sort_unstable_by(|left, right| {
            left.frequency
                .cmp(&right.frequency)
                .then(left.recency.total_cmp(&right.recency))
                .then(left.age.total_cmp(&right.age))
        });
        let mut frequency_counts = Vec::new();
        let mut no_repeat = Vec::new();
        let mut repeat = Vec::new();
        for same in sorted.chunk_by(|left, right| left == right) {
            let history = same[0];
            let weight = same.len() as f64;
            match frequency_counts.last_mut() {
                Some((frequency, count)) if *frequency == f64::from(history.frequency) => {
                    *count += weight;
                }
                _ => frequency_counts.push((f64::from(history.frequency), weight)),
            }
            if history.frequency == 0 {
                no_repeat.push(NoRepeatGroup {
                    age: history.age,
                    weight,
                });
            } else {
                repeat.push(RepeatGroup {
                    frequency: f64::from(history.frequency),
                    recency: history.recency,
                    age: history.age,
                    weight,
                });
            }
        }
        Ok(Likelihood {
            customers: histories.len() as f64,
            frequency_counts,
            no_repeat,
            repeat,
        })
    }
}

/// Why a history cannot be a BG/NBD summary, if it cannot.
fn check(history: &RepeatHistory) -> Result<(), String> {
    let RepeatHistory {
        frequency,
        recency,
        age,
    } = *history;
    if !age.is_finite() || age < 0.0 {
        return Err(format!("age {age} is not a finite number of weeks >= 0"));
    }
    if !recency.is_finite() || recency < 0.0 || recency > age {
        return Err(format!(
            "recency {recency} is not between 0 and the age {age}"
        ));
    }
    if frequency == 0 && recency != 0.0 {
        return Err(format!(
            "recency {recency} without repeat purchases (it must be 0)"
        ));
    }
    Ok(())
}

impl Objective<4> for Likelihood {
    fn evaluate(&self, log_parameters: &[f64; 4], gradient: &mut [f64; 4]) -> f64 {
        let [r, alpha, a, b] = log_parameters.map(f64::exp);
        // Sums of the log-likelihood and of its derivatives by r, alpha, a and b.
        let (mut value, mut d_r, mut d_alpha, mut d_a, mut d_b) = (0.0, 0.0, 0.0, 0.0, 0.0);

        let (ln_gamma_r, ln_gamma_b, ln_gamma_ab) = (ln_gamma(r), ln_gamma(b), ln_gamma(a + b));
        let (digamma_r, digamma_b, digamma_ab) = (digamma(r), digamma(b), digamma(a + b));
        for &(x, count) in &self.frequency_counts {
            let ln_gamma_abx = ln_gamma(a + b + x);
            let digamma_abx = digamma(a + b + x);
            value += count
                * (ln_gamma(r + x) - ln_gamma_r + ln_gamma(b + x) - ln_gamma_b + ln_gamma_ab
                    - ln_gamma_abx);
            d_r += count * (digamma(r + x) - digamma_r);
            d_a += count * (digamma_ab - digamma_abx);
            d_b += count * (digamma(b + x) - digamma_b + digamma_ab - digamma_abx);
        }
        let ln_alpha = alpha.ln();
        value += self.customers * r * ln_alpha;
        d_r += self.customers * ln_alpha;
        d_alpha += self.customers * r / alpha;

        for group in &self.no_repeat {
            let ln_alpha_age = (alpha + group.age).ln();
            value -= group.weight * r * ln_alpha_age;
            d_r -= group.weight * ln_alpha_age;
            d_alpha -= group.weight * r / (alpha + group.age);
        }

        for group in &self.repeat {
            let r_x = r + group.frequency;
            let ln_alpha_age = (alpha + group.age).ln();
            let ln_alpha_recency = (alpha + group.recency).ln();
            let inverse_b_x = 1.0 / (b + group.frequency - 1.0);
            // The likelihood is alive-term * (1 + odds), odds = a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x)
            // the relative weight of "dropped out after the last purchase"; share = odds/(1+odds).
            let log_ratio = r_x * (ln_alpha_age - ln_alpha_recency);
            let (ln_1p_odds, share) = if log_ratio < EXP_LIMIT {
                let odds = a * inverse_b_x * log_ratio.exp();
                (odds.ln_1p(), odds / (1.0 + odds))
            } else {
                let log_odds = (a * inverse_b_x).ln() + log_ratio;
                let inverse_odds = (-log_odds).exp();
                (log_odds + inverse_odds.ln_1p(), 1.0 / (1.0 + inverse_odds))
            };
            let weight = group.weight;
            value += weight * (ln_1p_odds - r_x * ln_alpha_age);
            d_r += weight * (share * (ln_alpha_age - ln_alpha_recency) - ln_alpha_age);
            let inverse_alpha_age = 1.0 / (alpha + group.age);
            let inverse_alpha_recency = 1.0 / (alpha + group.recency);
            d_alpha += weight
                * r_x
                * (share * (inverse_alpha_age - inverse_alpha_recency) - inverse_alpha_age);
            d_a += weight * share / a;
            d_b -= weight * share * inverse_b_x;
        }

        // Mean negative log-likelihood; d/d(ln p) = p d/dp.
        let scale = -1.0 / self.customers;
        *gradient =
            [d_r * r, d_alpha * alpha, d_a * a, d_b * b].map(|derivative| derivative * scale);
        value * scale
    }
}

/// `ln(e^x + e^y)` without overflow.
fn log_add_exp(x: f64, y: f64) -> f64 {
    let (high, low) = if x > y { (x, y) } else { (y, x) };
    high + (low - high).exp().ln_1p()
}

/// The Gauss hypergeometric function `2F1(a, b; c; z)` for `0 <= z < 1` by its power series,
/// `sum_n (a)_n (b)_n / ((c)_n n!) z^n`; NaN if it has not converged within
/// [`HYPERGEOMETRIC_MAX_TERMS`] terms.
///
/// The sum stops when a bound on the rest of the series falls below the last bit of the sum:
/// for `m >= n` (once `c + n > 0`) every later ratio of successive terms is at most
/// `z max((|a|+n)/(n+1), 1) max((|b|+n)/(c+n), 1)`, because each factor is monotone in `m`; when
/// that bound `B` is below 1 the tail is at most `|term| B / (1 - B)`. A tail test on the size of
/// the last term alone could stop early where the terms first dip and then grow again.
pub(crate) fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> f64 {
    debug_assert!((0.0..1.0).contains(&z), "z = {z}");
    let mut term = 1.0;
    let mut sum = 1.0;
    for n in 0..HYPERGEOMETRIC_MAX_TERMS {
        let n = n as f64;
        term *= (a + n) * (b + n) / ((c + n) * (n + 1.0)) * z;
        sum += term;
        if term == 0.0 {
            return sum;
        }
        let next = n + 1.0;
        if c + next > 0.0 {
            let bound = z
                * ((a.abs() + next) / (next + 1.0)).max(1.0)
                * ((b.abs() + next) / (c + next)).max(1.0);
            if bound < 1.0 && term.abs() * bound / (1.0 - bound) <= f64::EPSILON * sum.abs() {
                return sum;
            }
        }
    }
    f64::NAN
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CDNOW estimates (Fader, Hardie and Lee 2005, table 1 rounded as published).
    const CDNOW: BgNbdParams = BgNbdParams {
        r: 0.243,
        alpha: 4.414,
        a: 0.793,
        b: 2.426,
    };

    fn history(frequency: u32, recency: f64, age: f64) -> RepeatHistory {
        RepeatHistory {
            frequency,
            recency,
            age,
        }
    }

    /// The likelihood of eq. 6 straight from its definition, in floating point without logs.
    fn likelihood_by_definition(params: BgNbdParams, h: RepeatHistory) -> f64 {
        let BgNbdParams { r, alpha, a, b } = params;
        let x = f64::from(h.frequency);
        let beta = |p: f64, q: f64| (ln_gamma(p) + ln_gamma(q) - ln_gamma(p + q)).exp();
        let gamma_ratio = (ln_gamma(r + x) - ln_gamma(r)).exp();
        let first =
            beta(a, b + x) / beta(a, b) * gamma_ratio * alpha.powf(r) / (alpha + h.age).powf(r + x);
        let second = if h.frequency > 0 {
            beta(a + 1.0, b + x - 1.0) / beta(a, b) * gamma_ratio * alpha.powf(r)
                / (alpha + h.recency).powf(r + x)
        } else {
            0.0
        };
        first + second
    }

    #[test]
    fn log_likelihood_matches_the_papers_formula() {
        for h in [
            history(0, 0.0, 38.86),
            history(2, 30.43, 38.86),
            history(1, 1.71, 38.86),
            history(14, 35.0, 37.5),
        ] {
            let expected = likelihood_by_definition(CDNOW, h).ln();
            let actual = CDNOW.log_likelihood(h);
            assert!(
                (actual - expected).abs() < 1e-10,
                "{h:?}: {actual} vs {expected}"
            );
        }
        // Hand-computed: x = 0, T = 38.86: ln(alpha^r / (alpha+T)^r) = r ln(4.414 / 43.274).
        let single = CDNOW.log_likelihood(history(0, 0.0, 38.86));
        assert!((single - 0.243 * (4.414f64 / 43.274).ln()).abs() < 1e-12);
    }

    #[test]
    fn grouped_sum_equals_the_per_customer_sum_and_the_gradient_its_slope() {
        let histories = [
            history(0, 0.0, 38.86),
            history(0, 0.0, 38.86),
            history(0, 0.0, 30.0),
            history(2, 30.43, 38.86),
            history(2, 30.43, 38.86),
            history(1, 1.71, 38.86),
            history(14, 35.0, 37.5),
            history(3, 0.5, 27.0),
        ];
        let data = Likelihood::new(&histories).unwrap();
        assert_eq!(data.no_repeat.len(), 2);
        assert_eq!(data.repeat.len(), 4);
        assert_eq!(
            data.frequency_counts,
            vec![(0.0, 3.0), (1.0, 1.0), (2.0, 2.0), (3.0, 1.0), (14.0, 1.0)]
        );
        let point = [CDNOW.r, CDNOW.alpha, CDNOW.a, CDNOW.b].map(f64::ln);
        let mut gradient = [0.0; 4];
        let cost = data.evaluate(&point, &mut gradient);
        let per_customer: f64 = histories.iter().map(|h| CDNOW.log_likelihood(*h)).sum();
        assert!(
            (cost * -8.0 - per_customer).abs() < 1e-10,
            "{cost} vs {per_customer}"
        );
        crate::offline::value::optimize::assert_gradient_matches(&data, point);
    }

    #[test]
    fn the_stable_branch_agrees_with_the_direct_one() {
        // A frequent buyer long gone: (alpha+T)/(alpha+t_x) large and r+x large, so the odds
        // overflow exp and the stable branch runs.
        let params = BgNbdParams {
            r: 0.5,
            alpha: 0.01,
            a: 0.8,
            b: 2.5,
        };
        let h = history(300, 0.2, 50.0);
        let data = Likelihood::new(&[h]).unwrap();
        let log_ratio = 300.5 * ((0.01f64 + 50.0) / 0.21).ln();
        assert!(log_ratio > EXP_LIMIT, "{log_ratio}");
        let mut gradient = [0.0; 4];
        let cost = data.evaluate(&[0.5f64, 0.01, 0.8, 2.5].map(f64::ln), &mut gradient);
        assert!((-cost - params.log_likelihood(h)).abs() < 1e-8);
        assert!(
            gradient.iter().all(|value| value.is_finite()),
            "{gradient:?}"
        );
    }

    #[test]
    fn rejects_impossible_histories() {
        for (bad, expected) in [
            (history(0, 1.0, 5.0), "without repeat purchases"),
            (history(2, 6.0, 5.0), "not between 0 and the age"),
            (history(2, 1.0, f64::NAN), "not a finite number"),
        ] {
            let error = fit(&[history(1, 1.0, 3.0), bad]).unwrap_err();
            let text = error.to_string();
            assert!(
                text.contains("customer 1") && text.contains(expected),
                "{text}"
            );
        }
        assert!(matches!(fit(&[]), Err(ValueError::NoCustomers)));
    }

    #[test]
    fn a_likelihood_without_a_finite_maximum_fails_with_the_reason() {
        // The customers of the REES46 samples in shared/data (in days / 7): 3 of 205 bought
        // again, and the likelihood rises on as a and b grow together (lifetimes runs off to
        // a = 2e6, b = 6e6 on them). L-BFGS stalls there, restarts, stalls again.
        let mut histories = vec![history(0, 0.0, 516.0 / 7.0); 193];
        histories.extend([history(0, 0.0, 485.0 / 7.0); 2]);
        for days in [153.0, 124.0, 90.0, 39.0, 33.0, 21.0, 15.0] {
            histories.push(history(0, 0.0, days / 7.0));
        }
        histories.push(history(5, 15.0 / 7.0, 41.0 / 7.0));
        histories.push(history(2, 11.0 / 7.0, 33.0 / 7.0));
        histories.push(history(4, 1.0, 17.0 / 7.0));
        assert_eq!(histories.len(), 205);
        let error = fit(&histories).unwrap_err().to_string();
        assert!(
            error.starts_with("the BG/NBD fit failed: L-BFGS stalled"),
            "{error}"
        );
        assert!(
            error.contains("(3 of 205 customers made a repeat purchase"),
            "{error}"
        );
    }

    #[test]
    fn probability_alive_edge_cases() {
        // No repeat purchase: alive for sure, whatever the age.
        assert_eq!(CDNOW.probability_alive(history(0, 0.0, 0.0)), 1.0);
        assert_eq!(CDNOW.probability_alive(history(0, 0.0, 500.0)), 1.0);
        // A repeat purchase at the very end of the period: only the dropout odds a/(b+x-1) count.
        let just_bought = CDNOW.probability_alive(history(3, 20.0, 20.0));
        assert!((just_bought - 1.0 / (1.0 + 0.793 / (2.426 + 2.0))).abs() < 1e-12);
        // Long silence after many purchases: nearly certainly gone (odds of e^268), and no
        // overflow to NaN where the odds pass f64's range (e^811).
        let gone = CDNOW.probability_alive(history(100, 1.0, 78.0));
        assert!(gone > 0.0 && gone < 1e-100, "{gone}");
        assert_eq!(CDNOW.probability_alive(history(300, 1.0, 78.0)), 0.0);
        // The longer the silence, the lower.
        let recent = CDNOW.probability_alive(history(2, 30.0, 38.86));
        let older = CDNOW.probability_alive(history(2, 10.0, 38.86));
        assert!(recent > older, "{recent} vs {older}");
    }

    #[test]
    fn hypergeometric_series_matches_closed_forms() {
        for z in [0.0f64, 0.1, 0.5, 0.9, 0.99] {
            // 2F1(1, 1; 2; z) = -ln(1-z)/z.
            let expected = if z == 0.0 { 1.0 } else { -(1.0 - z).ln() / z };
            let actual = hyp2f1(1.0, 1.0, 2.0, z);
            assert!(
                (actual - expected).abs() < 1e-12 * expected,
                "z {z}: {actual} vs {expected}"
            );
            // 2F1(a, b; b; z) = (1-z)^-a.
            let expected = (1.0 - z).powf(-0.3);
            let actual = hyp2f1(0.3, 2.5, 2.5, z);
            assert!(
                (actual - expected).abs() < 1e-12 * expected,
                "z {z}: {actual} vs {expected}"
            );
        }
        // A terminating series: 2F1(-2, b; c; z) = 1 - 2bz/c + b(b+1)z^2/(c(c+1)).
        let expected = 1.0 - 2.0 * 1.5 * 0.4 / 3.0 + 1.5 * 2.5 * 0.16 / 12.0;
        assert!((hyp2f1(-2.0, 1.5, 3.0, 0.4) - expected).abs() < 1e-15);
    }

    #[test]
    fn eulers_transformation_agrees_with_the_papers_series() {
        // eq. 10's bracket as printed, with the untransformed series.
        let h = history(5, 30.0, 38.86);
        let BgNbdParams { r, alpha, a, b } = CDNOW;
        let x = 5.0;
        for weeks in [1.0, 10.0, 39.0, 52.0, 200.0] {
            let z = weeks / (alpha + h.age + weeks);
            let printed = 1.0
                - ((alpha + h.age) / (alpha + h.age + weeks)).powf(r + x)
                    * hyp2f1(r + x, b + x, a + b + x - 1.0, z);
            let expected = (a + b + x - 1.0) / (a - 1.0) * printed * CDNOW.probability_alive(h);
            let actual = CDNOW.conditional_expected_purchases(weeks, h);
            assert!(
                (actual - expected).abs() < 1e-10 * expected.abs(),
                "{weeks} weeks: {actual} vs {expected}"
            );
        }
    }

    #[test]
    fn predictions_match_lifetimes() {
        // Reference values from `lifetimes` 0.11.3 (scipy 1.17's hyp2f1) at the CDNOW parameters:
        // (x, t_x, T, weeks ahead, conditional expected purchases, P(alive)). The second row is
        // the paper's worked example (1.226 purchases in the next 39 weeks).
        let references = [
            (0, 0.0, 38.86, 39.0, 0.19509805201125396, 1.0),
            (2, 30.43, 38.86, 39.0, 1.226028174767135, 0.726578570080673),
            (
                1,
                1.71,
                38.86,
                39.0,
                0.20318698707975183,
                0.2121009853773791,
            ),
            (14, 35.0, 37.5, 39.0, 9.167304629012063, 0.8901289374695295),
            (
                30,
                38.0,
                38.86,
                52.0,
                25.161624391395364,
                0.9557433969945037,
            ),
            (
                2,
                30.43,
                38.86,
                1.0,
                0.037447969741730654,
                0.726578570080673,
            ),
        ];
        for (x, recency, age, weeks, expected, alive) in references {
            let h = history(x, recency, age);
            let actual = CDNOW.conditional_expected_purchases(weeks, h);
            assert!(
                (actual / expected - 1.0).abs() < 1e-9,
                "{h:?}: {actual} vs {expected}"
            );
            let actual = CDNOW.probability_alive(h);
            assert!(
                (actual / alive - 1.0).abs() < 1e-12,
                "{h:?}: {actual} vs {alive}"
            );
        }
        for (weeks, expected) in [(39.0, 1.1967231933207985), (78.0, 1.8605190579427455)] {
            let actual = CDNOW.expected_purchases(weeks);
            assert!(
                (actual / expected - 1.0).abs() < 1e-9,
                "{weeks}: {actual} vs {expected}"
            );
        }
    }

    #[test]
    fn expected_purchases_of_a_new_customer() {
        // eq. 9 as printed, with the untransformed series.
        let BgNbdParams { r, alpha, a, b } = CDNOW;
        let weeks = 39.0;
        let z = weeks / (alpha + weeks);
        let expected = (a + b - 1.0) / (a - 1.0)
            * (1.0 - (alpha / (alpha + weeks)).powf(r) * hyp2f1(r, b, a + b - 1.0, z));
        let actual = CDNOW.expected_purchases(weeks);
        assert!((actual - expected).abs() < 1e-12, "{actual} vs {expected}");
        // Nothing in no time; more in more time, but less than r/alpha per week (dropout).
        assert_eq!(CDNOW.expected_purchases(0.0), 0.0);
        assert!(CDNOW.expected_purchases(78.0) > actual);
        assert!(actual < weeks * r / alpha, "{actual}");
    }
}
