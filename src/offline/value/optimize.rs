//! Maximum likelihood by argmin's L-BFGS over log-parameters, shared by the BG/NBD and
//! Gamma-Gamma fits.
//!
//! Every parameter of both models must be positive, so the optimiser works on their logarithms
//! and needs no bounds. The objective is the mean negative log-likelihood per customer (its scale
//! then does not grow with the data, so one set of tolerances fits CDNOW and a million
//! customers). argmin asks for the cost and the gradient at the same point in two calls; both
//! come out of one pass over the data, so the last pass is cached and the second call is free.

use std::cell::Cell;

use argmin::core::{CostFunction, Executor, Gradient, State, TerminationReason, TerminationStatus};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;
use ndarray::Array1;

/// Most L-BFGS iterations before giving up; the fits here take a few dozen.
const MAX_ITERATIONS: u64 = 1_000;
/// Gradient norm (of the mean negative log-likelihood, per log-parameter) that counts as the top.
const GRADIENT_TOLERANCE: f64 = 1e-9;
/// Change of the mean negative log-likelihood between iterations that counts as converged.
const COST_TOLERANCE: f64 = 1e-13;
/// Past steps L-BFGS remembers.
const HISTORY: usize = 8;
/// Restarts after a stalled line search.
const RESTARTS: usize = 5;
/// A stalled run whose best point has a gradient this small has found the top: what is left is
/// rounding noise in the sum. (A Gamma-Gamma fit of 16,000 customers stalled at its top with a
/// gradient of 2e-9, above [`GRADIENT_TOLERANCE`]; a likelihood that rises on forever, as on
/// the REES46 samples, stalls with gradients of 1e-7 to 1e-6 and must still fail.)
const STALLED_GRADIENT_TOLERANCE: f64 = 1e-8;

/// A likelihood to maximise over `N` positive parameters, seen through their logarithms.
pub(crate) trait Objective<const N: usize> {
    /// The mean negative log-likelihood at `exp(log_parameters)`, writing its gradient with
    /// respect to `log_parameters` into `gradient`. Non-finite where the likelihood cannot be
    /// computed.
    fn evaluate(&self, log_parameters: &[f64; N], gradient: &mut [f64; N]) -> f64;
}

/// Where the optimiser stopped.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Minimum<const N: usize> {
    /// The parameters themselves (not their logarithms).
    pub parameters: [f64; N],
    /// The mean negative log-likelihood there.
    pub cost: f64,
    /// L-BFGS iterations.
    pub iterations: u64,
    /// Passes over the data (cost and gradient together).
    pub evaluations: u64,
}

/// Why a fit failed: argmin's own error, a start where the likelihood is undefined, or no
/// convergence.
pub(crate) type OptimizeError = String;

/// Minimises `objective` from `start` (parameters, not logarithms).
///
/// L-BFGS can stall where the likelihood is nearly flat (a line search that finds no descent
/// along a direction built from stale curvature pairs). Such a stall restarts it from the best
/// point seen, with its memory cleared, up to [`RESTARTS`] times.
pub(crate) fn minimize<const N: usize, O: Objective<N>>(
    objective: &O,
    start: [f64; N],
) -> Result<Minimum<N>, OptimizeError> {
    let tracker = Tracker {
        best: Cell::new(None),
        evaluations: Cell::new(0),
    };
    let mut point = start.map(f64::ln);
    let first = Problem {
        objective,
        cache: Cell::new(None),
        tracker: &tracker,
    };
    if !first.cached(&Array1::from_iter(point)).0.is_finite() {
        return Err(format!(
            "the likelihood is not finite at the start {start:?}"
        ));
    }
    let mut iterations = 0;
    let mut last_stall = String::new();
    for _ in 0..=RESTARTS {
        let problem = Problem {
            objective,
            cache: Cell::new(None),
            tracker: &tracker,
        };
        let solver = LBFGS::new(MoreThuenteLineSearch::new(), HISTORY)
            .with_tolerance_grad(GRADIENT_TOLERANCE)
            .and_then(|solver| solver.with_tolerance_cost(COST_TOLERANCE))
            .map_err(|error| error.to_string())?;
        let outcome = Executor::new(problem, solver)
            .configure(|state| {
                state
                    .param(Array1::from_iter(point))
                    .max_iters(MAX_ITERATIONS)
            })
            .run();
        match outcome {
            Ok(result) => {
                let state = result.state();
                iterations += state.get_iter();
                match state.get_termination_status() {
                    TerminationStatus::Terminated(TerminationReason::SolverConverged) => {
                        return finish(&tracker, iterations);
                    }
                    // A failed line search ends the run as the solver's own exit.
                    TerminationStatus::Terminated(TerminationReason::SolverExit(reason)) => {
                        last_stall = reason.clone();
                    }
                    TerminationStatus::Terminated(reason) => {
                        return Err(format!("L-BFGS stopped: {}", reason.text()));
                    }
                    TerminationStatus::NotTerminated => {
                        return Err("L-BFGS returned before terminating".to_string());
                    }
                }
            }
            Err(error) => last_stall = error.to_string(),
        }
        let (best_point, _, best_gradient) = tracker.best.get().expect("the start was evaluated");
        if best_gradient
            .iter()
            .all(|slope| slope.abs() <= STALLED_GRADIENT_TOLERANCE)
        {
            return finish(&tracker, iterations);
        }
        if best_point == point {
            // No progress since the last restart: another one would stall the same way.
            break;
        }
        point = best_point;
    }
    let (best_point, cost, _) = tracker.best.get().expect("the start was evaluated");
    Err(format!(
        "L-BFGS stalled at parameters {:?} (mean negative log-likelihood {cost}): {last_stall}",
        best_point.map(f64::exp)
    ))
}

/// The best point seen, as a [`Minimum`], if it is one that makes sense.
fn finish<const N: usize>(
    tracker: &Tracker<N>,
    iterations: u64,
) -> Result<Minimum<N>, OptimizeError> {
    let (best_point, cost, _) = tracker.best.get().expect("the start was evaluated");
    let parameters = best_point.map(f64::exp);
    if !cost.is_finite()
        || parameters
            .iter()
            .any(|value| !value.is_finite() || *value <= 0.0)
    {
        return Err(format!(
            "the fit diverged (parameters {parameters:?}, cost {cost})"
        ));
    }
    Ok(Minimum {
        parameters,
        cost,
        iterations,
        evaluations: tracker.evaluations.get(),
    })
}

/// What every restart shares: the best point seen (log-parameters, cost and gradient) and a
/// pass counter.
struct Tracker<const N: usize> {
    best: Cell<Option<Evaluation<N>>>,
    evaluations: Cell<u64>,
}

/// A point (log-parameters), the cost there and its gradient.
type Evaluation<const N: usize> = ([f64; N], f64, [f64; N]);

/// The argmin side of an [`Objective`]: the last point's cost and gradient, and the tracker.
struct Problem<'a, const N: usize, O> {
    objective: &'a O,
    cache: Cell<Option<Evaluation<N>>>,
    tracker: &'a Tracker<N>,
}

impl<const N: usize, O: Objective<N>> Problem<'_, N, O> {
    /// Cost and gradient at `log_parameters`, from the cache when the point is the last one.
    fn cached(&self, log_parameters: &Array1<f64>) -> (f64, [f64; N]) {
        let mut point = [0.0; N];
        for (slot, value) in point.iter_mut().zip(log_parameters.iter()) {
            *slot = *value;
        }
        if let Some((cached_point, cost, gradient)) = self.cache.get()
            && cached_point == point
        {
            return (cost, gradient);
        }
        let mut gradient = [0.0; N];
        let cost = self.objective.evaluate(&point, &mut gradient);
        let tracker = self.tracker;
        tracker.evaluations.set(tracker.evaluations.get() + 1);
        // NaN costs never become the best: `cost < best` is false for them.
        if tracker.best.get().is_none_or(|(_, best, _)| cost < best) {
            tracker.best.set(Some((point, cost, gradient)));
        }
        self.cache.set(Some((point, cost, gradient)));
        (cost, gradient)
    }
}

impl<const N: usize, O: Objective<N>> CostFunction for Problem<'_, N, O> {
    type Param = Array1<f64>;
    type Output = f64;

    /// A point where the likelihood is not finite is an error, not a cost: More-Thuente compares
    /// costs, and with NaN every comparison fails, so it would extrapolate forever (seen on a
    /// Gamma-Gamma fit whose search, stalled at the top, stepped out to parameters of 1e95).
    /// The error ends the run as a stall, restarted or finished from the best point.
    fn cost(&self, log_parameters: &Array1<f64>) -> Result<f64, argmin::core::Error> {
        let cost = self.cached(log_parameters).0;
        if cost.is_finite() {
            Ok(cost)
        } else {
            Err(argmin::core::Error::msg(format!(
                "the likelihood is not finite at {:?}",
                log_parameters.mapv(f64::exp).to_vec()
            )))
        }
    }
}

impl<const N: usize, O: Objective<N>> Gradient for Problem<'_, N, O> {
    type Param = Array1<f64>;
    type Gradient = Array1<f64>;

    fn gradient(&self, log_parameters: &Array1<f64>) -> Result<Array1<f64>, argmin::core::Error> {
        let (cost, gradient) = self.cached(log_parameters);
        if cost.is_finite() && gradient.iter().all(|slope| slope.is_finite()) {
            Ok(Array1::from_iter(gradient))
        } else {
            Err(argmin::core::Error::msg(format!(
                "the likelihood's gradient is not finite at {:?}",
                log_parameters.mapv(f64::exp).to_vec()
            )))
        }
    }
}

/// Checks `objective`'s analytic gradient at `point` (log-parameters) against central
/// differences; for the models' tests.
#[cfg(test)]
pub(crate) fn assert_gradient_matches<const N: usize, O: Objective<N>>(
    objective: &O,
    point: [f64; N],
) {
    let mut gradient = [0.0; N];
    objective.evaluate(&point, &mut gradient);
    for index in 0..N {
        let step = 1e-6;
        let (mut up, mut down) = (point, point);
        up[index] += step;
        down[index] -= step;
        let mut ignored = [0.0; N];
        let slope = (objective.evaluate(&up, &mut ignored)
            - objective.evaluate(&down, &mut ignored))
            / (2.0 * step);
        assert!(
            (slope - gradient[index]).abs() < 1e-7,
            "parameter {index}: analytic {} vs numeric {slope}",
            gradient[index]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimum at (2, 0.5): a quadratic in the log-parameters.
    struct Bowl;

    impl Objective<2> for Bowl {
        fn evaluate(&self, log_parameters: &[f64; 2], gradient: &mut [f64; 2]) -> f64 {
            let targets = [2.0_f64.ln(), 0.5_f64.ln()];
            let mut cost = 1.0;
            for index in 0..2 {
                let offset = log_parameters[index] - targets[index];
                cost += offset * offset * (index + 1) as f64;
                gradient[index] = 2.0 * offset * (index + 1) as f64;
            }
            cost
        }
    }

    #[test]
    fn finds_the_minimum_in_parameter_space() {
        let minimum = minimize(&Bowl, [1.0, 1.0]).unwrap();
        assert!((minimum.parameters[0] - 2.0).abs() < 1e-6, "{minimum:?}");
        assert!((minimum.parameters[1] - 0.5).abs() < 1e-6, "{minimum:?}");
        assert!((minimum.cost - 1.0).abs() < 1e-12, "{minimum:?}");
        // The cache answers argmin's separate cost and gradient calls with one pass each.
        assert!(
            minimum.evaluations <= 2 * minimum.iterations + 2,
            "{minimum:?}"
        );
    }

    /// Undefined everywhere.
    struct Broken;

    impl Objective<1> for Broken {
        fn evaluate(&self, _: &[f64; 1], gradient: &mut [f64; 1]) -> f64 {
            gradient[0] = f64::NAN;
            f64::NAN
        }
    }

    #[test]
    fn an_undefined_start_is_an_error() {
        let error = minimize(&Broken, [1.0]).unwrap_err();
        assert!(error.contains("not finite at the start"), "{error}");
    }
}
