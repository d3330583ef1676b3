//! `ScoringActor`: evaluates the tree on feature vectors, maps propensities to the shop's
//! action, and swaps in a newer model file without dropping or slowing a request.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use arc_swap::ArcSwap;
use propensity_actors::features::FeatureVector;
use serde::Serialize;

use crate::config::ScoringSettings;
use crate::offline::model::Model;
use crate::online::drift::DriftWatch;

/// How likely a purchase is, in three bands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Band {
    Low,
    Medium,
    High,
}

/// What the web tier should do for a band.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Low propensity: show alternative products.
    SuggestAlternatives,
    /// Medium: nudge with an incentive.
    OfferIncentive,
    /// High: suggest complementary products.
    CrossSell,
}

impl Band {
    /// The band of a propensity under the configured thresholds.
    pub fn of(propensity: f64, settings: &ScoringSettings) -> Band {
        if propensity < settings.low_below {
            Band::Low
        } else if propensity >= settings.high_from {
            Band::High
        } else {
            Band::Medium
        }
    }

    /// The action for this band.
    pub fn action(self) -> Action {
        match self {
            Band::Low => Action::SuggestAlternatives,
            Band::Medium => Action::OfferIncentive,
            Band::High => Action::CrossSell,
        }
    }
}

/// One scored product.
#[derive(Clone, Debug, Serialize)]
pub struct Scored {
    pub propensity: f64,
    pub band: Band,
    pub action: Action,
    pub explanation: serde_json::Value,
}

/// Scores of a request and the model that gave them.
#[derive(Clone, Debug, MessageResponse)]
pub struct ScoreResult {
    pub model_version: String,
    pub scores: Vec<Scored>,
}

/// The model in service. A reload swaps it whole, so a score reads one version from its first
/// product to its last, and names that version.
#[derive(Clone)]
pub struct ModelSlot(Arc<ArcSwap<Model>>);

impl ModelSlot {
    fn new(model: Model) -> Self {
        ModelSlot(Arc::new(ArcSwap::from_pointee(model)))
    }

    /// The model now.
    pub fn current(&self) -> Arc<Model> {
        self.0.load_full()
    }
}

/// How the watching copy of the actor follows the model file.
#[derive(Clone)]
struct Watch {
    path: PathBuf,
    modified: Option<SystemTime>,
    reload_interval: Duration,
    on_reload: Arc<dyn Fn(&Model) + Send + Sync>,
}

/// Scores with the model in its slot. One copy runs on every HTTP worker's thread, so that a
/// score never waits for another thread to wake; one more, the watcher, reads the model file
/// when it changes and swaps the new model into the slot every copy reads, so that no worker
/// stops answering to parse a model.
#[derive(Clone)]
pub struct ScoringActor {
    slot: ModelSlot,
    settings: ScoringSettings,
    /// Counts every scored vector against the training distributions.
    drift: Arc<DriftWatch>,
    /// Set on the watcher only.
    watch: Option<Watch>,
}

impl ScoringActor {
    /// The watcher: loads the model at `path`; `on_reload` hears of each model put in service,
    /// and `drift` starts a window on each.
    pub fn new(
        path: PathBuf,
        settings: ScoringSettings,
        reload_interval: Duration,
        drift: Arc<DriftWatch>,
        on_reload: Arc<dyn Fn(&Model) + Send + Sync>,
    ) -> anyhow::Result<ScoringActor> {
        let model = Model::load(&path).map_err(|error| {
            anyhow::anyhow!("{error}; train one with `propensity train --events FILE --model-out {}` or run `propensity demo`", path.display())
        })?;
        let model = check_features(model)?;
        on_reload(&model);
        drift.start_window(&model);
        Ok(ScoringActor {
            slot: ModelSlot::new(model),
            settings,
            drift,
            watch: Some(Watch {
                modified: std::fs::metadata(&path)
                    .and_then(|meta| meta.modified())
                    .ok(),
                path,
                reload_interval,
                on_reload,
            }),
        })
    }

    /// A copy that scores with the watcher's model and does not read the file itself.
    pub fn reader(&self) -> ScoringActor {
        ScoringActor {
            watch: None,
            ..self.clone()
        }
    }

    /// The model in service.
    pub fn model(&self) -> Arc<Model> {
        self.slot.current()
    }

    /// The slot every copy reads the model in service from.
    pub fn slot(&self) -> ModelSlot {
        self.slot.clone()
    }

    fn reload_if_changed(&mut self) {
        let Some(watch) = self.watch.as_mut() else {
            return;
        };
        let modified = std::fs::metadata(&watch.path)
            .and_then(|meta| meta.modified())
            .ok();
        if modified.is_none() || modified == watch.modified {
            return;
        }
        match Model::load(&watch.path)
            .map_err(anyhow::Error::from)
            .and_then(check_features)
        {
            Ok(model) => {
                watch.modified = modified;
                let current = self.slot.current();
                if model.version != current.version {
                    tracing::info!(from = %current.version, to = %model.version, "model reloaded");
                    (watch.on_reload)(&model);
                    self.drift.start_window(&model);
                    self.slot.0.store(Arc::new(model));
                }
            }
            // A half-written or bad file keeps the old model in service; the next tick retries.
            Err(error) => {
                tracing::warn!(%error, path = %watch.path.display(), "model reload failed; keeping the current model")
            }
        }
    }

    /// Scores feature vectors with the model in service.
    pub fn score(&self, vectors: &[FeatureVector], explain: bool) -> ScoreResult {
        let model = self.slot.current();
        let scores: Vec<Scored> = vectors
            .iter()
            .map(|vector| {
                let propensity = model.score(vector);
                let band = Band::of(propensity, &self.settings);
                let explanation = if explain {
                    serde_json::to_value(model.explain(vector)).unwrap_or(serde_json::Value::Null)
                } else {
                    serde_json::Value::Null
                };
                Scored {
                    propensity,
                    band,
                    action: band.action(),
                    explanation,
                }
            })
            .collect();
        self.drift.record_all(
            vectors
                .iter()
                .zip(&scores)
                .map(|(vector, scored)| (&vector[..], scored.propensity)),
        );
        ScoreResult {
            model_version: model.version.clone(),
            scores,
        }
    }
}

/// A model must use exactly the engine's features, in order.
fn check_features(model: Model) -> anyhow::Result<Model> {
    let expected = propensity_actors::features::feature_names();
    if model.feature_names != expected {
        anyhow::bail!(
            "the model's features do not match this build's ({} vs {} features); retrain it with this version",
            model.feature_names.len(),
            expected.len()
        );
    }
    Ok(model)
}

impl Actor for ScoringActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(watch) = &self.watch
            && !watch.reload_interval.is_zero()
        {
            ctx.run_interval(watch.reload_interval, |actor, _| actor.reload_if_changed());
        }
    }
}

/// Scores feature vectors.
#[derive(Message)]
#[rtype(result = "ScoreResult")]
pub struct Score {
    pub vectors: Vec<FeatureVector>,
    pub explain: bool,
}

impl Handler<Score> for ScoringActor {
    type Result = ScoreResult;

    fn handle(&mut self, message: Score, _: &mut Self::Context) -> ScoreResult {
        self.score(&message.vectors, message.explain)
    }
}

/// Checks the model file now instead of waiting for the next tick (the watcher; a reader
/// answers with the version in service).
#[derive(Message)]
#[rtype(result = "String")]
pub struct ReloadModel;

impl Handler<ReloadModel> for ScoringActor {
    type Result = String;

    fn handle(&mut self, _: ReloadModel, _: &mut Self::Context) -> String {
        if let Some(watch) = self.watch.as_mut() {
            watch.modified = None;
        }
        self.reload_if_changed();
        self.slot.current().version.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_follow_thresholds() {
        let settings = ScoringSettings {
            low_below: 0.1,
            high_from: 0.4,
        };
        assert_eq!(Band::of(0.05, &settings), Band::Low);
        assert_eq!(Band::of(0.1, &settings), Band::Medium);
        assert_eq!(Band::of(0.39, &settings), Band::Medium);
        assert_eq!(Band::of(0.4, &settings), Band::High);
        assert_eq!(Band::Low.action(), Action::SuggestAlternatives);
        assert_eq!(Band::Medium.action(), Action::OfferIncentive);
        assert_eq!(Band::High.action(), Action::CrossSell);
    }
}
