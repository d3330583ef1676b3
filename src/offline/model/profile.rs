//! Training distributions of every feature and of the propensity, stored in the model file:
//! `propensity describe` shows them, and the service's drift watch compares live values with
//! them through the population stability index (PSI) over the same bins.

use serde::{Deserialize, Serialize};

use super::{Dataset, Model};

/// The quantiles a profile keeps.
pub const QUANTILES: [f64; 7] = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99];

/// Most bins per profile: about equal shares of the training rows.
pub const BINS: usize = 10;

/// Shares below this count as this in the PSI, so an empty bin does not make it infinite.
const PSI_FLOOR: f64 = 1e-4;

/// Upper bounds of up to [`BINS`] bins of about equal weight over sorted `values`. Equal values
/// stay in one bin, and what a large tie leaves (the zeros of a mostly-zero feature, say) is cut
/// again into equal parts, so the bins resolve the rest of the distribution too.
fn equal_weight_bounds(values: &[(f64, u64)], total: f64) -> Vec<f64> {
    let mut bounds = Vec::with_capacity(BINS - 1);
    let mut remaining = total;
    let mut next = 0;
    while next < values.len() && bounds.len() < BINS - 1 {
        let target = remaining / (BINS - bounds.len()) as f64;
        let mut taken = 0.0;
        while next < values.len() && taken < target {
            let value = values[next].0;
            while next < values.len() && values[next].0 == value {
                taken += values[next].1 as f64;
                next += 1;
            }
        }
        if next == values.len() {
            // The last bin holds what is left.
            break;
        }
        bounds.push(values[next - 1].0);
        remaining -= taken;
    }
    bounds
}

/// One quantile of a distribution.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Quantile {
    pub quantile: f64,
    pub value: f64,
}

/// How one value (a feature, or the propensity) was distributed over the training rows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Profile {
    /// Rows it stands for (with downsampled negatives, weighted).
    pub rows: u64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    /// Share of rows where it was exactly 0.
    pub zero_share: f64,
    pub quantiles: Vec<Quantile>,
    /// Upper bounds of the bins, ascending and distinct; one more bin holds what lies above.
    pub bin_upper_bounds: Vec<f64>,
    /// Share of the training rows in each bin (`bin_upper_bounds.len() + 1` of them).
    pub bin_shares: Vec<f64>,
}

impl Profile {
    /// The profile of `values`, each with the number of rows it stands for. Sorts `values`.
    pub fn of_weighted(values: &mut [(f64, u64)]) -> Profile {
        values.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        let rows: u64 = values.iter().map(|&(_, weight)| weight).sum();
        if rows == 0 {
            return Profile {
                rows: 0,
                mean: 0.0,
                min: 0.0,
                max: 0.0,
                zero_share: 0.0,
                quantiles: Vec::new(),
                bin_upper_bounds: Vec::new(),
                bin_shares: vec![1.0],
            };
        }
        let total = rows as f64;
        let weighted_sum: f64 = values
            .iter()
            .map(|&(value, weight)| value * weight as f64)
            .sum();
        let zeros: u64 = values
            .iter()
            .filter(|(value, _)| *value == 0.0)
            .map(|&(_, weight)| weight)
            .sum();
        // The value at which the running weight first reaches each share.
        let at_share = |share: f64| -> f64 {
            let target = share * total;
            let mut running = 0.0;
            for &(value, weight) in values.iter() {
                running += weight as f64;
                if running >= target {
                    return value;
                }
            }
            values[values.len() - 1].0
        };
        let quantiles = QUANTILES
            .iter()
            .map(|&quantile| Quantile {
                quantile,
                value: at_share(quantile),
            })
            .collect();
        let bin_upper_bounds = equal_weight_bounds(values, total);
        let mut profile = Profile {
            rows,
            mean: weighted_sum / total,
            min: values[0].0,
            max: values[values.len() - 1].0,
            zero_share: zeros as f64 / total,
            quantiles,
            bin_shares: vec![0.0; bin_upper_bounds.len() + 1],
            bin_upper_bounds,
        };
        for &(value, weight) in values.iter() {
            let bin = profile.bin(value);
            profile.bin_shares[bin] += weight as f64 / total;
        }
        profile
    }

    /// The bin `value` falls in: the first whose upper bound is at least `value`, else the last.
    pub fn bin(&self, value: f64) -> usize {
        self.bin_upper_bounds
            .partition_point(|&bound| bound < value)
    }

    /// The population stability index of live counts per bin against the training shares:
    /// the sum over bins of (live − training) × ln(live / training), shares floored at 10⁻⁴.
    /// `None` without live rows.
    pub fn psi(&self, live_counts: &[u64]) -> Option<f64> {
        debug_assert_eq!(live_counts.len(), self.bin_shares.len());
        let live_total: u64 = live_counts.iter().sum();
        if live_total == 0 {
            return None;
        }
        Some(
            live_counts
                .iter()
                .zip(&self.bin_shares)
                .map(|(&count, &expected)| {
                    let actual = (count as f64 / live_total as f64).max(PSI_FLOOR);
                    let expected = expected.max(PSI_FLOOR);
                    (actual - expected) * (actual / expected).ln()
                })
                .sum(),
        )
    }

    /// The quantile `quantile` if the profile keeps it.
    pub fn quantile(&self, quantile: f64) -> Option<f64> {
        self.quantiles
            .iter()
            .find(|kept| (kept.quantile - quantile).abs() < 1e-9)
            .map(|kept| kept.value)
    }
}

/// The training distributions of a model: one profile per feature, in feature order, and one
/// of the propensity the model gives the same rows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Profiles {
    pub features: Vec<Profile>,
    pub propensity: Profile,
}

impl Profiles {
    /// Profiles `training`'s rows (negatives weighted by its `negative_weight`) and `model`'s
    /// propensities for them.
    pub fn of(training: &Dataset, model: &Model) -> Profiles {
        let weights: Vec<u64> = training
            .labels
            .iter()
            .map(|&label| if label { 1 } else { training.negative_weight })
            .collect();
        let mut column: Vec<(f64, u64)> = Vec::with_capacity(weights.len());
        let features = training
            .features
            .columns()
            .into_iter()
            .map(|values| {
                column.clear();
                column.extend(values.iter().copied().zip(weights.iter().copied()));
                Profile::of_weighted(&mut column)
            })
            .collect();
        column.clear();
        for (row, &weight) in training.features.rows().into_iter().zip(&weights) {
            let score = match row.as_slice() {
                Some(values) => model.score(values),
                None => model.score(&row.to_vec()),
            };
            column.push((score, weight));
        }
        Profiles {
            features,
            propensity: Profile::of_weighted(&mut column),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unweighted(values: &[f64]) -> Profile {
        let mut pairs: Vec<(f64, u64)> = values.iter().map(|&value| (value, 1)).collect();
        Profile::of_weighted(&mut pairs)
    }

    #[test]
    fn quantiles_mean_and_zeros_of_a_known_sample() {
        let values: Vec<f64> = (0..100).map(f64::from).collect();
        let profile = unweighted(&values);
        assert_eq!(profile.rows, 100);
        assert!((profile.mean - 49.5).abs() < 1e-12);
        assert_eq!((profile.min, profile.max), (0.0, 99.0));
        assert!((profile.zero_share - 0.01).abs() < 1e-12);
        assert_eq!(profile.quantile(0.5), Some(49.0));
        assert_eq!(profile.quantile(0.99), Some(98.0));
        assert_eq!(profile.quantile(0.05), Some(4.0));
        assert_eq!(
            profile.bin_upper_bounds,
            [9.0, 19.0, 29.0, 39.0, 49.0, 59.0, 69.0, 79.0, 89.0]
        );
        for share in &profile.bin_shares {
            assert!((share - 0.1).abs() < 1e-12, "{:?}", profile.bin_shares);
        }
    }

    #[test]
    fn weights_count_as_repeated_rows() {
        let mut weighted = vec![(1.0, 1), (0.0, 3)];
        let weighted = Profile::of_weighted(&mut weighted);
        let repeated = unweighted(&[0.0, 0.0, 0.0, 1.0]);
        assert_eq!(weighted, repeated);
        assert!((weighted.zero_share - 0.75).abs() < 1e-12);
        assert!((weighted.mean - 0.25).abs() < 1e-12);
    }

    #[test]
    fn ties_merge_bins_and_values_land_in_theirs() {
        let profile = unweighted(&[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 5.0]);
        assert_eq!(profile.bin_upper_bounds, [0.0, 1.0, 2.0]);
        assert_eq!(profile.bin_shares, [0.7, 0.1, 0.1, 0.1]);
        assert_eq!(profile.bin(-3.0), 0);
        assert_eq!(profile.bin(0.0), 0);
        assert_eq!(profile.bin(0.5), 1);
        assert_eq!(profile.bin(1.0), 1);
        assert_eq!(profile.bin(2.0), 2);
        assert_eq!(profile.bin(100.0), 3);
    }

    #[test]
    fn a_mostly_zero_feature_gets_bins_for_the_rest_too() {
        let mut values = vec![0.0; 820];
        values.extend((1..=180).map(f64::from));
        let profile = unweighted(&values);
        assert_eq!(profile.bin_upper_bounds.len(), BINS - 1);
        assert_eq!(profile.bin_upper_bounds[0], 0.0);
        assert!((profile.bin_shares[0] - 0.82).abs() < 1e-12);
        for share in &profile.bin_shares[1..] {
            assert!((share - 0.02).abs() < 1e-12, "{:?}", profile.bin_shares);
        }
        // Tripling the non-zero values moves mass between those bins: a visible drift.
        let mut counts = vec![0u64; profile.bin_shares.len()];
        for value in &values {
            counts[profile.bin(value * 3.0)] += 1;
        }
        assert!(profile.psi(&counts).unwrap() > 0.2);
    }

    #[test]
    fn psi_is_zero_on_the_training_shares_and_grows_with_a_shift() {
        let values: Vec<f64> = (0..1000).map(|value| f64::from(value) / 10.0).collect();
        let profile = unweighted(&values);
        let counts = |values: &[f64]| {
            let mut counts = vec![0u64; profile.bin_shares.len()];
            for &value in values {
                counts[profile.bin(value)] += 1;
            }
            counts
        };
        assert!(profile.psi(&counts(&values)).unwrap().abs() < 1e-12);
        let shifted: Vec<f64> = values.iter().map(|value| value + 30.0).collect();
        let psi = profile.psi(&counts(&shifted)).unwrap();
        // Three tenths of the mass leave the bottom bins for the top one.
        assert!(psi > 0.2, "{psi}");
        let slightly: Vec<f64> = values.iter().map(|value| value + 1.0).collect();
        let small = profile.psi(&counts(&slightly)).unwrap();
        assert!(small > 0.0 && small < 0.1, "{small}");
        assert_eq!(profile.psi(&vec![0; profile.bin_shares.len()]), None);
    }
}
