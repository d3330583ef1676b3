//! Purchases for the customer-value models, read from REES46 event files (through the history
//! reader) or from the CDNOW files of the customer-base literature, and the calendar days they
//! are counted in.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use chrono::{Days, NaiveDate};
use propensity_actors::event::{EventType, Millis, parse_time};

use super::error::{CdnowLineError, ValueError};
use super::summary::Purchase;
use crate::offline::history::{HistoryFiles, ordered_events};

/// Milliseconds in a day.
const DAY_MILLIS: Millis = 86_400_000;

/// The format of the purchase files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// REES46 event CSV (`event_time,event_type,...,price,user_id,user_session`); only
    /// `purchase` events are read, each a product bought at its price.
    Rees46,
    /// CDNOW: whitespace-separated `customer_id date(YYYYMMDD) number_of_cds dollar_value`,
    /// an optional header line; a second id column after the first (the 1/10 sample's) is
    /// accepted too.
    Cdnow,
}

/// Every purchase read and the span of the data.
#[derive(Clone, Debug, PartialEq)]
pub struct PurchaseData {
    /// The purchases, in file order.
    pub purchases: Vec<Purchase>,
    /// The last day the data covers: the day of the last event of any type for REES46, of the
    /// last purchase for CDNOW.
    pub last_day: i64,
    /// Rows skipped as bad (REES46; CDNOW fails on a bad line instead).
    pub skipped_rows: u64,
    /// Purchase events dropped as exact duplicates of an earlier one (REES46).
    pub duplicate_purchases: u64,
}

/// Reads the purchases of `paths` in `format`.
pub fn read(format: InputFormat, paths: &[PathBuf]) -> Result<PurchaseData, ValueError> {
    let data = match format {
        InputFormat::Rees46 => read_rees46(paths)?,
        InputFormat::Cdnow => {
            let mut data = PurchaseData {
                purchases: Vec::new(),
                last_day: i64::MIN,
                skipped_rows: 0,
                duplicate_purchases: 0,
            };
            for path in paths {
                let file = read_cdnow(path)?;
                data.purchases.extend(file.purchases);
                data.last_day = data.last_day.max(file.last_day);
            }
            data
        }
    };
    if data.purchases.is_empty() {
        return Err(ValueError::NoPurchases);
    }
    Ok(data)
}

/// Reads the `purchase` events of REES46 files through the history reader (bad rows reported
/// with file and line and skipped; a file that is not REES46 fails). An exact duplicate of an
/// earlier purchase event (same identity, see `Event::identity`) counts once, as in training.
pub fn read_rees46(paths: &[PathBuf]) -> Result<PurchaseData, ValueError> {
    let history = HistoryFiles::scan(paths).map_err(ValueError::History)?;
    let Some((_, last_time)) = history.span() else {
        return Err(ValueError::NoPurchases);
    };
    let spill = tempfile::tempdir().map_err(|source| ValueError::Io {
        operation: "create a directory for",
        path: std::env::temp_dir(),
        source,
    })?;
    let events = ordered_events(&history, spill.path()).map_err(ValueError::History)?;
    let mut seen = HashSet::new();
    let mut purchases = Vec::new();
    let mut duplicate_purchases = 0;
    for event in events.filter(|event| event.event_type == EventType::Purchase) {
        if !seen.insert(event.identity()) {
            duplicate_purchases += 1;
            continue;
        }
        purchases.push(Purchase {
            customer_id: event.user_id,
            day: event.time.div_euclid(DAY_MILLIS),
            amount: event.price,
        });
    }
    Ok(PurchaseData {
        purchases,
        last_day: last_time.div_euclid(DAY_MILLIS),
        skipped_rows: history.bad_rows(),
        duplicate_purchases,
    })
}

/// Reads one CDNOW file: `customer_id date number_of_cds dollar_value` per line, whitespace
/// separated, or with a second id after the first as in `CDNOW_sample.txt`. A first line whose
/// first field is not a number is a header and skipped; blank lines are skipped; any other bad
/// line fails with its line number.
pub fn read_cdnow(path: &Path) -> Result<PurchaseData, ValueError> {
    let file = std::fs::File::open(path).map_err(|source| ValueError::Io {
        operation: "open",
        path: path.to_path_buf(),
        source,
    })?;
    let mut purchases = Vec::new();
    let mut last_day = i64::MIN;
    let mut fields_per_line = None;
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line_number = index as u64 + 1;
        let line = line.map_err(|source| ValueError::Io {
            operation: "read",
            path: path.to_path_buf(),
            source,
        })?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(first) = fields.first() else {
            continue;
        };
        if line_number == 1 && !first.bytes().all(|byte| byte.is_ascii_digit()) {
            continue;
        }
        let purchase = parse_cdnow_fields(&fields, &mut fields_per_line).map_err(|problem| {
            ValueError::CdnowLine {
                path: path.to_path_buf(),
                line: line_number,
                problem,
            }
        })?;
        last_day = last_day.max(purchase.day);
        purchases.push(purchase);
    }
    Ok(PurchaseData {
        purchases,
        last_day,
        skipped_rows: 0,
        duplicate_purchases: 0,
    })
}

/// One CDNOW line's fields; the first data line fixes how many fields every line has.
fn parse_cdnow_fields(
    fields: &[&str],
    fields_per_line: &mut Option<usize>,
) -> Result<Purchase, CdnowLineError> {
    let found = fields.len();
    if found != 4 && found != 5 {
        return Err(CdnowLineError::FieldCount { found });
    }
    let expected = *fields_per_line.get_or_insert(found);
    if found != expected {
        return Err(CdnowLineError::InconsistentFieldCount { expected, found });
    }
    // With five fields the second is the sample's renumbered id, which is not needed.
    let [id, date, cds, dollars] = if found == 5 {
        [fields[0], fields[2], fields[3], fields[4]]
    } else {
        [fields[0], fields[1], fields[2], fields[3]]
    };
    let invalid =
        |field: &'static str, value: &str, reason: &'static str| CdnowLineError::InvalidField {
            field,
            value: value.to_string(),
            reason,
        };
    let customer_id = id
        .parse::<u64>()
        .map_err(|_| invalid("customer id", id, "not a whole number"))?;
    let day = NaiveDate::parse_from_str(date, "%Y%m%d")
        .ok()
        .filter(|_| date.len() == 8)
        .map(date_to_day)
        .ok_or_else(|| invalid("date", date, "not a date YYYYMMDD"))?;
    cds.parse::<u32>()
        .map_err(|_| invalid("number of CDs", cds, "not a whole number"))?;
    let amount = dollars
        .parse::<f64>()
        .ok()
        .filter(|amount| amount.is_finite() && *amount >= 0.0)
        .ok_or_else(|| invalid("dollar value", dollars, "not a number >= 0"))?;
    Ok(Purchase {
        customer_id,
        day,
        amount,
    })
}

/// The epoch of day numbers.
fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("1970-01-01 is a date")
}

/// Days from 1970-01-01 to `date`.
pub fn date_to_day(date: NaiveDate) -> i64 {
    (date - epoch()).num_days()
}

/// `YYYY-MM-DD` of a day number.
pub fn day_to_date(day: i64) -> String {
    let date = if day >= 0 {
        epoch().checked_add_days(Days::new(day.unsigned_abs()))
    } else {
        epoch().checked_sub_days(Days::new(day.unsigned_abs()))
    };
    date.map_or_else(|| format!("day {day}"), |date| date.to_string())
}

/// The day of a `YYYY-MM-DD` date, or of a time (`2019-10-01 00:00:00 UTC` or RFC 3339, its UTC
/// calendar day).
pub fn parse_day(text: &str) -> Option<i64> {
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Some(date_to_day(date));
    }
    parse_time(text).map(|time| time.div_euclid(DAY_MILLIS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn reads_both_cdnow_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let master = write(
            dir.path(),
            "master.txt",
            " customer_id  date number_of_cds  dollar_value\n 00001 19970101  1   11.77\n\n 00002 19970112  2   0.00\n",
        );
        let data = read(InputFormat::Cdnow, &[master]).unwrap();
        assert_eq!(
            data.purchases,
            vec![
                Purchase {
                    customer_id: 1,
                    day: 9862,
                    amount: 11.77
                },
                Purchase {
                    customer_id: 2,
                    day: 9873,
                    amount: 0.0
                },
            ]
        );
        assert_eq!(day_to_date(9862), "1997-01-01");
        assert_eq!(data.last_day, 9873);
        let sample = write(
            dir.path(),
            "sample.txt",
            " 00004 0001 19970101  2   29.33\n",
        );
        let data = read_cdnow(&sample).unwrap();
        assert_eq!(data.purchases[0].customer_id, 4);
        assert_eq!(data.purchases[0].amount, 29.33);
    }

    #[test]
    fn bad_cdnow_lines_fail_with_their_line_number() {
        let dir = tempfile::tempdir().unwrap();
        for (text, expected) in [
            (
                "1 19970101 1 2.0\n1 19970132 1 2.0\n",
                "line 2: invalid date \"19970132\"",
            ),
            ("header\n1 19970101 1\n", "line 2: expected 4 fields"),
            (
                "1 19970101 1 2.0\n1 1 19970101 1 2.0\n",
                "line 2: found 5 fields where the first data line had 4",
            ),
            (
                "1 19970101 1 -2.0\n",
                "line 1: invalid dollar value \"-2.0\"",
            ),
            (
                "1 19970101 1 2.0\nx 19970101 1 2.0\n",
                "line 2: invalid customer id \"x\"",
            ),
        ] {
            let path = write(dir.path(), "bad.txt", text);
            let error = read_cdnow(&path).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
            assert!(error.contains("bad.txt"), "{error}");
        }
        let empty = write(dir.path(), "empty.txt", "customer date cds dollars\n");
        assert!(matches!(
            read(InputFormat::Cdnow, &[empty]),
            Err(ValueError::NoPurchases)
        ));
    }

    #[test]
    fn reads_rees46_purchases_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let header = propensity_actors::event::CSV_HEADER.join(",");
        let text = format!(
            "{header}\n\
             2019-10-01 10:00:00 UTC,view,1,1,,,5.00,7,s\n\
             2019-10-01 23:59:59 UTC,purchase,1,1,,,5.00,7,s\n\
             2019-10-01 23:59:59 UTC,purchase,1,1,,,5.00,7,s\n\
             2019-10-02 00:00:00 UTC,purchase,2,1,,,2.50,7,s\n\
             2019-10-03 08:00:00 UTC,purchase,2,1,,,2.50,8,t\n\
             2019-10-04 08:00:00 UTC,cart,2,1,,,2.50,8,t\n"
        );
        let path = write(dir.path(), "events.csv", &text);
        let data = read(InputFormat::Rees46, &[path]).unwrap();
        let days: Vec<(u64, i64, f64)> = data
            .purchases
            .iter()
            .map(|purchase| (purchase.customer_id, purchase.day, purchase.amount))
            .collect();
        let october_first = parse_day("2019-10-01").unwrap();
        assert_eq!(
            days,
            vec![
                (7, october_first, 5.0),
                (7, october_first + 1, 2.5),
                (8, october_first + 2, 2.5)
            ]
        );
        assert_eq!(data.duplicate_purchases, 1);
        // The last event is a cart on the 4th: the data reach that day.
        assert_eq!(data.last_day, october_first + 3);
    }

    #[test]
    fn parses_dates_and_times_as_days() {
        assert_eq!(parse_day("1970-01-02"), Some(1));
        assert_eq!(parse_day("1997-09-30"), Some(10_134));
        assert_eq!(parse_day("1997-09-30 23:59:59 UTC"), Some(10_134));
        assert_eq!(parse_day("1997-09-30T23:59:59-02:00"), Some(10_135));
        assert_eq!(parse_day("30/09/1997"), None);
        assert_eq!(day_to_date(-1), "1969-12-31");
    }
}
