//! `propensity describe [FEATURE]`: what a feature is (entity, meaning, inputs, window, type and
//! range) and, from the current model, how it was distributed in training and how much the tree
//! relies on it.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Result, bail};
use propensity_actors::features::{FEATURES, FeatureDefinition};
use serde::Serialize;

use crate::offline::model::{Model, ModelCard, Profile, Quantile};

/// One feature described, with what the model knows of it.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct FeatureDescription {
    pub name: String,
    pub entity: propensity_actors::features::Entity,
    pub meaning: String,
    pub inputs: String,
    pub window: String,
    pub unit: propensity_actors::features::Unit,
    pub range: String,
    /// Over the model's training rows; absent without a model or in a model that predates it.
    pub training: Option<TrainingDistribution>,
    /// Share of the tree's impurity decrease, and its rank among the features (1 = most).
    pub importance: Option<f64>,
    pub importance_rank: Option<usize>,
}

/// A training distribution as `describe` shows it.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct TrainingDistribution {
    pub rows: u64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    pub zero_share: f64,
    pub quantiles: Vec<Quantile>,
}

impl From<&Profile> for TrainingDistribution {
    fn from(profile: &Profile) -> Self {
        TrainingDistribution {
            rows: profile.rows,
            mean: profile.mean,
            min: profile.min,
            max: profile.max,
            zero_share: profile.zero_share,
            quantiles: profile.quantiles.clone(),
        }
    }
}

/// What `describe` prints as JSON.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Description {
    /// The model the distributions and importances come from, if one was found.
    pub model: Option<ModelCard>,
    pub features: Vec<FeatureDescription>,
    /// The propensity's own training distribution.
    pub propensity: Option<TrainingDistribution>,
}

/// Describes `feature` (every feature when `None`) with the model at `model_path` when it exists.
pub fn describe(feature: Option<&str>, model_path: &Path) -> Result<Description> {
    let model = if model_path.exists() {
        Some(Model::load(model_path)?)
    } else {
        None
    };
    let chosen: Vec<&FeatureDefinition> = match feature {
        None => FEATURES.iter().collect(),
        Some(name) => match FEATURES.iter().find(|definition| definition.name == name) {
            Some(definition) => vec![definition],
            None => bail!(
                "unknown feature {name:?}{}; `propensity describe` lists all {} features",
                closest(name)
                    .map(|close| format!(" (did you mean {close:?}?)"))
                    .unwrap_or_default(),
                FEATURES.len()
            ),
        },
    };
    let importance = model
        .as_ref()
        .map(Model::feature_importance)
        .unwrap_or_default();
    let features = chosen
        .into_iter()
        .map(|definition| {
            let index = FEATURES
                .iter()
                .position(|other| other.name == definition.name)
                .expect("a listed feature");
            let training = model
                .as_ref()
                .and_then(|model| model.profiles.as_ref())
                .and_then(|profiles| profiles.features.get(index))
                .map(TrainingDistribution::from);
            let rank = importance
                .iter()
                .position(|(name, _)| name == definition.name);
            FeatureDescription {
                name: definition.name.to_owned(),
                entity: definition.entity,
                meaning: definition.description.to_owned(),
                inputs: definition.inputs.to_owned(),
                window: definition.window.describe().to_owned(),
                unit: definition.unit,
                range: definition.unit.range().to_owned(),
                training,
                importance: rank.map(|rank| importance[rank].1),
                importance_rank: rank.map(|rank| rank + 1),
            }
        })
        .collect();
    Ok(Description {
        propensity: model
            .as_ref()
            .and_then(|model| model.profiles.as_ref())
            .map(|profiles| TrainingDistribution::from(&profiles.propensity)),
        model: model.as_ref().map(|model| model.card(10)),
        features,
    })
}

/// The feature name nearest to `name` by edit distance, if it is near enough to be a typo.
fn closest(name: &str) -> Option<&'static str> {
    FEATURES
        .iter()
        .map(|definition| (strsim::levenshtein(name, definition.name), definition.name))
        .filter(|(distance, _)| *distance <= 3)
        .min()
        .map(|(_, name)| name)
}

fn number(value: f64) -> String {
    if value == value.trunc() && value.abs() < 1e15 {
        format!("{value:.0}")
    } else if value.abs() >= 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

fn quantiles_line(distribution: &TrainingDistribution) -> String {
    distribution
        .quantiles
        .iter()
        .map(|quantile| {
            format!(
                "p{} {}",
                (quantile.quantile * 100.0).round(),
                number(quantile.value)
            )
        })
        .collect::<Vec<_>>()
        .join("  ")
}

/// Renders a description: a card for one feature, a table for all, or JSON.
pub fn render(description: &Description, model_path: &Path, json: bool) -> Result<String> {
    if json {
        return Ok(serde_json::to_string_pretty(description)? + "\n");
    }
    let mut out = String::new();
    match &description.model {
        Some(card) => {
            let span = card
                .training_span
                .as_ref()
                .map(|span| format!(", history {} to {}", span.from, span.to))
                .unwrap_or_default();
            writeln!(
                out,
                "model {} (trained {}{span})",
                card.version, card.trained_at
            )?;
            if !card.training_distributions {
                writeln!(
                    out,
                    "  it carries no training distributions: retrain it with this version to see them"
                )?;
            }
        }
        None => {
            writeln!(
                out,
                "no model at {} (model.path): showing definitions only",
                model_path.display()
            )?;
        }
    }
    if let [feature] = description.features.as_slice() {
        writeln!(out)?;
        writeln!(out, "{}", feature.name)?;
        writeln!(out, "  entity      {:?}", feature.entity)?;
        writeln!(out, "  meaning     {}", feature.meaning)?;
        writeln!(out, "  inputs      {}", feature.inputs)?;
        writeln!(out, "  window      {}", feature.window)?;
        writeln!(out, "  type/range  {}", feature.range)?;
        if let Some(training) = &feature.training {
            writeln!(
                out,
                "  training    mean {}, min {}, max {}, zeros {:.1}% of {} rows",
                number(training.mean),
                number(training.min),
                number(training.max),
                training.zero_share * 100.0,
                training.rows
            )?;
            writeln!(out, "  quantiles   {}", quantiles_line(training))?;
        }
        if let (Some(importance), Some(rank)) = (feature.importance, feature.importance_rank) {
            writeln!(
                out,
                "  importance  {importance:.4} (rank {rank} of {})",
                FEATURES.len()
            )?;
        }
        return Ok(out);
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<40} {:<16} {:<16} {:>10} {:>10} {:>7} {:>10}",
        "feature", "entity", "unit", "mean", "median", "zeros", "importance"
    )?;
    for feature in &description.features {
        let (mean, median, zeros) = match &feature.training {
            Some(training) => (
                number(training.mean),
                training
                    .quantiles
                    .iter()
                    .find(|quantile| quantile.quantile == 0.5)
                    .map(|quantile| number(quantile.value))
                    .unwrap_or_default(),
                format!("{:.1}%", training.zero_share * 100.0),
            ),
            None => Default::default(),
        };
        writeln!(
            out,
            "{:<40} {:<16} {:<16} {:>10} {:>10} {:>7} {:>10}",
            feature.name,
            format!("{:?}", feature.entity),
            format!("{:?}", feature.unit),
            mean,
            median,
            zeros,
            feature
                .importance
                .map(|importance| format!("{importance:.4}"))
                .unwrap_or_default()
        )?;
    }
    if let Some(propensity) = &description.propensity {
        writeln!(out)?;
        writeln!(
            out,
            "propensity in training: mean {}, {}",
            number(propensity.mean),
            quantiles_line(propensity)
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_gets_the_nearest_name() {
        assert_eq!(closest("prise"), Some("price"));
        assert_eq!(closest("cart_valeu"), Some("cart_value"));
        assert_eq!(closest("something_else_entirely"), None);
    }

    #[test]
    fn without_a_model_the_definitions_are_still_described() {
        let description = describe(Some("price"), Path::new("/nonexistent/model.json")).unwrap();
        assert_eq!(description.model, None);
        let [price] = description.features.as_slice() else {
            panic!("one feature")
        };
        assert_eq!(price.name, "price");
        assert_eq!(price.window, "the product's latest event");
        assert!(price.range.contains("currency"), "{}", price.range);
        assert_eq!((price.training.as_ref(), price.importance), (None, None));
        let error = describe(Some("prise"), Path::new("/nonexistent")).unwrap_err();
        assert!(
            error.to_string().contains("did you mean \"price\""),
            "{error}"
        );
    }
}
