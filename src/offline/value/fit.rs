//! `propensity value fit`: read purchases, summarise customers over the calibration period, fit
//! BG/NBD and Gamma-Gamma, check the predictions on a holdout period if there is one, save the
//! [`ValueModel`] and report.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::error::ValueError;
use super::gamma_gamma::SpendHistory;
use super::input::{InputFormat, day_to_date};
use super::report::{HoldoutReport, evaluate_holdout, write_report};
use super::summary::{Periods, RepeatHistory, summarize};
use super::{BgNbdFit, GammaGammaFit, ValueModel, bgnbd, gamma_gamma, input};

/// What to fit on and where to write.
#[derive(Clone, Debug, PartialEq)]
pub struct FitRequest {
    /// The purchase files.
    pub inputs: Vec<PathBuf>,
    /// Their format.
    pub format: InputFormat,
    /// Where to write the model (JSON).
    pub model_out: PathBuf,
    /// Last day of the calibration period (days since 1970-01-01); `None`: the data's last day.
    /// Required with a holdout.
    pub calibration_end: Option<i64>,
    /// Last day of the holdout period, after the calibration end.
    pub holdout_end: Option<i64>,
    /// Where to write the holdout chart (needs a holdout period).
    pub report_dir: Option<PathBuf>,
}

/// What the command did and found; printed as text and, with `--json`, as one JSON object.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FitReport {
    /// The saved model's version.
    pub model_version: String,
    /// Where it was saved.
    pub model_out: PathBuf,
    /// Purchases read.
    pub purchases: u64,
    /// Input rows skipped as bad (REES46).
    pub skipped_rows: u64,
    /// Purchase events dropped as exact duplicates (REES46).
    pub duplicate_purchases: u64,
    /// Earliest first purchase of the calibrated customers.
    pub calibration_start: String,
    /// Last day of the calibration period.
    pub calibration_end: String,
    /// Customers whose first purchase falls in the calibration period.
    pub customers: u64,
    /// Of those, customers with a repeat purchase in the calibration period.
    pub repeat_customers: u64,
    /// Repeat customers left out of Gamma-Gamma because their mean repeat spend is 0.
    pub zero_spend_customers: u64,
    /// Customers whose first purchase came after the calibration end: not fitted.
    pub later_customers: u64,
    /// The BG/NBD fit.
    pub bgnbd: BgNbdFit,
    /// Seconds the BG/NBD fit took.
    pub bgnbd_seconds: f64,
    /// The Gamma-Gamma fit, unless no customer had a positive repeat spend.
    pub gamma_gamma: Option<GammaGammaFit>,
    /// Seconds the Gamma-Gamma fit took.
    pub gamma_gamma_seconds: f64,
    /// The holdout evaluation, with a holdout period.
    pub holdout: Option<HoldoutReport>,
    /// Files written into the report directory.
    pub report_files: Vec<PathBuf>,
}

/// Runs the command: read, summarise, fit, evaluate, save, write the report.
pub fn run(request: &FitRequest) -> Result<FitReport, ValueError> {
    if request.holdout_end.is_some() && request.calibration_end.is_none() {
        return Err(ValueError::Periods(
            "--holdout-end needs --calibration-end: the holdout period starts the day after it"
                .to_string(),
        ));
    }
    if let (Some(calibration_end), Some(holdout_end)) =
        (request.calibration_end, request.holdout_end)
        && holdout_end <= calibration_end
    {
        return Err(ValueError::Periods(format!(
            "the holdout end {} is not after the calibration end {}",
            day_to_date(holdout_end),
            day_to_date(calibration_end)
        )));
    }
    if request.report_dir.is_some() && request.holdout_end.is_none() {
        return Err(ValueError::Periods(
            "--report-dir charts the holdout period: give --holdout-end too".to_string(),
        ));
    }
    let mut data = input::read(request.format, &request.inputs)?;
    let periods = Periods {
        calibration_end: request.calibration_end.unwrap_or(data.last_day),
        holdout_end: request.holdout_end,
    };
    if let Some(holdout_end) = periods.holdout_end
        && holdout_end > data.last_day
    {
        eprintln!(
            "note: the data end on {}, before the holdout end {}: the holdout counts are short",
            day_to_date(data.last_day),
            day_to_date(holdout_end)
        );
    }
    let purchases = data.purchases.len() as u64;
    let all_customers = count_customers(&data.purchases);

    let started = Instant::now();
    let customers = summarize(&mut data.purchases, periods);
    if customers.is_empty() {
        return Err(ValueError::NoCustomers);
    }
    let histories: Vec<RepeatHistory> = customers.iter().map(|c| c.history()).collect();
    let bgnbd_fit = bgnbd::fit(&histories)?;
    let bgnbd_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let spends: Vec<SpendHistory> = customers
        .iter()
        .filter_map(|customer| {
            customer
                .mean_repeat_spend
                .filter(|mean| *mean > 0.0)
                .map(|mean_spend| SpendHistory {
                    frequency: customer.frequency,
                    mean_spend,
                })
        })
        .collect();
    let repeat_customers = customers.iter().filter(|c| c.frequency > 0).count() as u64;
    let gamma_gamma_fit = if spends.is_empty() {
        None
    } else {
        Some(gamma_gamma::fit(&spends)?)
    };
    let gamma_gamma_seconds = started.elapsed().as_secs_f64();

    let first_day = periods.calibration_end
        - customers
            .iter()
            .map(|customer| (customer.age * super::summary::DAYS_PER_WEEK).round() as i64)
            .max()
            .unwrap_or(0);
    let model = ValueModel::assemble(
        day_to_date(first_day),
        day_to_date(periods.calibration_end),
        customers.len() as u64,
        repeat_customers,
        bgnbd_fit.clone(),
        gamma_gamma_fit.clone(),
        bgnbd_seconds + gamma_gamma_seconds,
    )?;
    model.save(&request.model_out)?;

    let holdout = periods.holdout_end.map(|end| {
        evaluate_holdout(
            &bgnbd_fit.params,
            &customers,
            periods.holdout_weeks(),
            day_to_date(end),
        )
    });
    let mut report_files = Vec::new();
    if let (Some(dir), Some(holdout)) = (&request.report_dir, &holdout) {
        report_files.push(write_report(dir, holdout)?);
    }
    Ok(FitReport {
        model_version: model.version,
        model_out: request.model_out.clone(),
        purchases,
        skipped_rows: data.skipped_rows,
        duplicate_purchases: data.duplicate_purchases,
        calibration_start: model.calibration_start,
        calibration_end: model.calibration_end,
        customers: customers.len() as u64,
        repeat_customers,
        zero_spend_customers: repeat_customers - spends.len() as u64,
        later_customers: all_customers - customers.len() as u64,
        bgnbd: bgnbd_fit,
        bgnbd_seconds,
        gamma_gamma: gamma_gamma_fit,
        gamma_gamma_seconds,
        holdout,
        report_files,
    })
}

/// Distinct customers among purchases sorted or not.
fn count_customers(purchases: &[super::Purchase]) -> u64 {
    let mut ids: Vec<u64> = purchases.iter().map(|p| p.customer_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.len() as u64
}

/// Prints `report` as text, and with `json` as one JSON object on the last line.
pub fn print_report(report: &FitReport, json: bool) -> Result<(), ValueError> {
    println!(
        "read {} purchases ({} bad rows skipped, {} duplicate purchases dropped)",
        report.purchases, report.skipped_rows, report.duplicate_purchases
    );
    println!(
        "calibration {} to {}: {} customers, {} with repeat purchases ({} first bought later and are not fitted)",
        report.calibration_start,
        report.calibration_end,
        report.customers,
        report.repeat_customers,
        report.later_customers
    );
    let bgnbd = &report.bgnbd;
    println!(
        "BG/NBD: r {:.4}, alpha {:.4}, a {:.4}, b {:.4}; log-likelihood {:.2} ({} customers, {} distinct histories, {} iterations) in {:.3} s",
        bgnbd.params.r,
        bgnbd.params.alpha,
        bgnbd.params.a,
        bgnbd.params.b,
        bgnbd.log_likelihood,
        bgnbd.customers,
        bgnbd.distinct_histories,
        bgnbd.iterations,
        report.bgnbd_seconds
    );
    match &report.gamma_gamma {
        Some(fit) => println!(
            "Gamma-Gamma: p {:.4}, q {:.4}, gamma {:.4}; log-likelihood {:.2} ({} customers with a repeat purchase{}, {} iterations) in {:.3} s; mean spend per purchase {:.2}",
            fit.params.p,
            fit.params.q,
            fit.params.gamma,
            fit.log_likelihood,
            fit.customers,
            if report.zero_spend_customers > 0 {
                format!(
                    "; {} with zero mean spend left out",
                    report.zero_spend_customers
                )
            } else {
                String::new()
            },
            fit.iterations,
            report.gamma_gamma_seconds,
            fit.params.mean_spend()
        ),
        None => println!("Gamma-Gamma: not fitted, no customer has a positive repeat spend"),
    }
    if let Some(holdout) = &report.holdout {
        println!(
            "holdout to {} ({:.1} weeks): predicted {:.1} repeat purchases (first-purchase dates alone: {:.1}), actual {}; per-customer correlation {:.4}",
            holdout.end,
            holdout.weeks,
            holdout.predicted_purchases,
            holdout.predicted_from_ages,
            holdout.actual_purchases,
            holdout.correlation
        );
        println!("  calibration frequency  customers  predicted mean  actual mean");
        for bucket in &holdout.buckets {
            println!(
                "  {:>21}  {:>9}  {:>14.3}  {:>11.3}",
                bucket.label, bucket.customers, bucket.predicted_mean, bucket.actual_mean
            );
        }
    }
    println!(
        "fit time {:.3} s; wrote model {} to {}",
        report.bgnbd_seconds + report.gamma_gamma_seconds,
        report.model_version,
        report.model_out.display()
    );
    for file in &report.report_files {
        println!("wrote {}", file.display());
    }
    if json {
        println!(
            "{}",
            serde_json::to_string(report).map_err(ValueError::Serialize)?
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdnow_file(dir: &std::path::Path) -> PathBuf {
        // Customer 1 buys on Jan 1, 8 and 15 (twice); customer 2 on Jan 1 only; customer 3 first
        // on Jan 20, after the calibration end; the holdout has one purchase of customer 2.
        let path = dir.join("cdnow.txt");
        std::fs::write(
            &path,
            "id date cds dollars\n\
             1 19970101 1 10.00\n1 19970108 1 20.00\n1 19970115 1 5.00\n1 19970115 1 15.00\n\
             2 19970101 1 7.00\n2 19970118 1 3.00\n3 19970120 1 9.00\n",
        )
        .unwrap();
        path
    }

    fn request(dir: &std::path::Path) -> FitRequest {
        FitRequest {
            inputs: vec![cdnow_file(dir)],
            format: InputFormat::Cdnow,
            model_out: dir.join("value.json"),
            calibration_end: input::parse_day("1997-01-15"),
            holdout_end: input::parse_day("1997-01-29"),
            report_dir: Some(dir.join("report")),
        }
    }

    #[test]
    fn period_mistakes_are_reported_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let mut backwards = request(dir.path());
        backwards.holdout_end = input::parse_day("1997-01-10");
        let error = run(&backwards).unwrap_err().to_string();
        assert_eq!(
            error,
            "the holdout end 1997-01-10 is not after the calibration end 1997-01-15"
        );
        let mut no_calibration = request(dir.path());
        no_calibration.calibration_end = None;
        let error = run(&no_calibration).unwrap_err().to_string();
        assert!(
            error.contains("--holdout-end needs --calibration-end"),
            "{error}"
        );
        let mut no_holdout = request(dir.path());
        no_holdout.holdout_end = None;
        let error = run(&no_holdout).unwrap_err().to_string();
        assert!(error.contains("--report-dir"), "{error}");
        assert!(!dir.path().join("value.json").exists());
    }

    #[test]
    fn a_calibration_end_before_any_purchase_has_no_customers() {
        let dir = tempfile::tempdir().unwrap();
        let mut early = request(dir.path());
        early.calibration_end = input::parse_day("1996-12-31");
        assert!(matches!(run(&early), Err(ValueError::NoCustomers)));
    }

    #[test]
    fn fits_a_simulated_cohort_and_counts_what_it_read() {
        use super::super::synthetic::{Cohort, simulate};
        use std::collections::BTreeSet;
        use std::fmt::Write;
        // 3,000 customers drawn from BG/NBD with the CDNOW parameters, logged as a CDNOW file
        // from 1997-01-01, plus one customer who first buys in the holdout period.
        let truth = super::super::BgNbdParams {
            r: 0.243,
            alpha: 4.414,
            a: 0.793,
            b: 2.426,
        };
        let start = input::parse_day("1997-01-01").unwrap();
        let calibration_end = input::parse_day("1997-09-30").unwrap();
        let holdout_end = calibration_end + 273;
        let customers = simulate(truth, Cohort::cdnow_like(3_000), 8);
        let mut text = String::from("customer_id date number_of_cds dollar_value\n");
        let mut lines = 0;
        let mut holdout_days = 0;
        for (id, customer) in customers.iter().enumerate() {
            let mut days = BTreeSet::new();
            for purchase in customer.purchases(id as u64 + 1, start) {
                let date = input::day_to_date(purchase.day).replace('-', "");
                writeln!(text, "{} {date} 1 {}.50", id + 1, 10 + purchase.day % 7).unwrap();
                lines += 1;
                days.insert(purchase.day);
            }
            holdout_days += days
                .iter()
                .filter(|&&day| day > calibration_end && day <= holdout_end)
                .count() as u64;
        }
        text.push_str("999999 19971015 1 9.00\n");
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("simulated.txt");
        std::fs::write(&events, text).unwrap();
        let request = FitRequest {
            holdout_end: Some(holdout_end),
            ..request(dir.path())
        };
        let request = FitRequest {
            inputs: vec![events],
            calibration_end: Some(calibration_end),
            ..request
        };
        let report = run(&request).unwrap();
        assert_eq!(report.purchases, lines + 1);
        assert_eq!(report.customers, 3_000);
        assert_eq!(report.later_customers, 1);
        assert_eq!(report.calibration_end, "1997-09-30");
        assert_eq!(report.zero_spend_customers, 0);
        assert_eq!(
            report.gamma_gamma.as_ref().unwrap().customers,
            report.repeat_customers
        );
        let holdout = report.holdout.as_ref().unwrap();
        assert_eq!(holdout.actual_purchases, holdout_days);
        assert_eq!(holdout.weeks, 39.0);
        // Sampling error on 3,000 customers leaves r and alpha within about 10%.
        let fitted = report.bgnbd.params;
        assert!((fitted.r / truth.r - 1.0).abs() < 0.2, "{fitted:?}");
        assert!((fitted.alpha / truth.alpha - 1.0).abs() < 0.2, "{fitted:?}");
        assert_eq!(
            report.report_files,
            vec![
                dir.path()
                    .join("report")
                    .join(super::super::report::CHART_FILE)
            ]
        );
        let model = ValueModel::load(&request.model_out).unwrap();
        assert_eq!(model.version, report.model_version);
        assert_eq!(model.bgnbd, report.bgnbd);
        assert_eq!(model.customers, 3_000);
    }
}
