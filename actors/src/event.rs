//! Clickstream events in the REES46 "eCommerce behavior data" format: the CSV row form used by
//! history files and the JSON form that travels on the bus, with strict, typed parse errors.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

mod csv_source;
pub use csv_source::CsvEvents;

/// Bytes of an event's identity hashed from the stack; longer rows stream (see [`Event::identity`]).
const IDENTITY_BUFFER: usize = 256;

/// The CSV header every REES46 file starts with.
pub const CSV_HEADER: [&str; 9] = [
    "event_time",
    "event_type",
    "product_id",
    "category_id",
    "category_code",
    "brand",
    "price",
    "user_id",
    "user_session",
];

/// Milliseconds since the Unix epoch, UTC. Event time is the only clock the domain knows.
pub type Millis = i64;

/// The four kinds of clickstream events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    View,
    Cart,
    RemoveFromCart,
    Purchase,
}

impl EventType {
    /// Every event type, in a fixed order (used for metrics and reports).
    pub const ALL: [EventType; 4] = [Self::View, Self::Cart, Self::RemoveFromCart, Self::Purchase];

    /// The wire name, as in the REES46 files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::View => "view",
            Self::Cart => "cart",
            Self::RemoveFromCart => "remove_from_cart",
            Self::Purchase => "purchase",
        }
    }

    /// Parses the wire name; anything else is rejected.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "view" => Some(Self::View),
            "cart" => Some(Self::Cart),
            "remove_from_cart" => Some(Self::RemoveFromCart),
            "purchase" => Some(Self::Purchase),
            _ => None,
        }
    }

    /// Whether the event is a view: views count towards their category's prices.
    pub fn is_view(self) -> bool {
        self == EventType::View
    }

    /// Whether the event is a scoring point: every event but a purchase.
    pub fn is_scoring_point(self) -> bool {
        !matches!(self, Self::Purchase)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One validated clickstream event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// When the shopper acted, in milliseconds since the epoch (UTC).
    pub time: Millis,
    pub event_type: EventType,
    pub product_id: u64,
    pub category_id: u64,
    pub category_code: Option<String>,
    pub brand: Option<String>,
    /// Unit price; finite and not negative.
    pub price: f64,
    pub user_id: u64,
    pub user_session: String,
    /// The producer's identity for the event, when it sent one.
    pub event_id: Option<String>,
}

impl Event {
    /// A stable 64-bit identity: the hash of `event_id` when present, else of every field, so an
    /// exact duplicate row or a redelivered message maps to the same identity.
    pub fn identity(&self) -> u64 {
        // The fields laid end to end and hashed once: the same value as feeding them to a
        // streaming hasher one by one (as earlier versions did), at a fraction of the cost. A
        // row too long for the stack buffer streams.
        let mut buffer = [0u8; IDENTITY_BUFFER];
        let mut length = 0;
        let mut fits = true;
        self.identity_bytes(|bytes| {
            if fits && length + bytes.len() <= IDENTITY_BUFFER {
                buffer[length..length + bytes.len()].copy_from_slice(bytes);
                length += bytes.len();
            } else {
                fits = false;
            }
        });
        if fits {
            return xxh3_64(&buffer[..length]);
        }
        let mut hasher = Xxh3::new();
        self.identity_bytes(|bytes| hasher.update(bytes));
        hasher.digest()
    }

    /// The bytes an identity hashes, in order.
    fn identity_bytes(&self, mut feed: impl FnMut(&[u8])) {
        match &self.event_id {
            Some(id) => {
                feed(b"id:");
                feed(id.as_bytes());
            }
            None => {
                feed(&self.time.to_le_bytes());
                feed(self.event_type.as_str().as_bytes());
                feed(&self.product_id.to_le_bytes());
                feed(&self.category_id.to_le_bytes());
                feed(self.category_code.as_deref().unwrap_or("").as_bytes());
                feed(&[0]);
                feed(self.brand.as_deref().unwrap_or("").as_bytes());
                feed(&[0]);
                feed(&self.price.to_bits().to_le_bytes());
                feed(&self.user_id.to_le_bytes());
                feed(self.user_session.as_bytes());
            }
        }
    }

    /// The event time as a chrono timestamp.
    pub fn datetime(&self) -> DateTime<Utc> {
        millis_to_datetime(self.time)
    }

    /// Builds an event from the JSON form, validating every field.
    pub fn from_json(bytes: &[u8]) -> Result<Event, ParseError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|error| ParseError::Json {
                reason: error.to_string(),
            })?;
        let serde_json::Value::Object(fields) = value else {
            return Err(ParseError::Json {
                reason: "expected a JSON object".into(),
            });
        };
        if let Some(unknown) = fields
            .keys()
            // The JSON form has the CSV fields and an optional event_id.
            .find(|key| key.as_str() != "event_id" && !CSV_HEADER.contains(&key.as_str()))
        {
            return Err(ParseError::Json {
                reason: format!(
                    "unknown field `{}`",
                    unknown.chars().take(64).collect::<String>()
                ),
            });
        }
        JsonEvent::from_fields(&fields)?.validate()
    }

    /// The JSON form of the event (REES46 time format).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&JsonEvent::from(self)).expect("an event always serializes")
    }

    /// A JSON array of events, the batch form of `POST /v1/events`.
    pub fn json_array(events: &[Event]) -> String {
        let mut text = String::from("[");
        for (index, event) in events.iter().enumerate() {
            if index > 0 {
                text.push(',');
            }
            text.push_str(&event.to_json());
        }
        text.push(']');
        text
    }

    /// Writes the event as one REES46 CSV record.
    pub fn write_csv<W: std::io::Write>(&self, writer: &mut csv::Writer<W>) -> csv::Result<()> {
        writer.write_record([
            format_time(self.time).as_str(),
            self.event_type.as_str(),
            &self.product_id.to_string(),
            &self.category_id.to_string(),
            self.category_code.as_deref().unwrap_or(""),
            self.brand.as_deref().unwrap_or(""),
            &format_price(self.price),
            &self.user_id.to_string(),
            &self.user_session,
        ])
    }
}

/// Formats a price the way REES46 files do: up to two decimals, no trailing zeros beyond them.
pub fn format_price(price: f64) -> String {
    format!("{price:.2}")
}

/// Formats event time as REES46 does: `2019-10-01 00:00:04 UTC`.
pub fn format_time(time: Millis) -> String {
    let datetime = millis_to_datetime(time);
    if time % 1000 == 0 {
        datetime.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    } else {
        datetime.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
    }
}

/// Converts epoch milliseconds to a chrono timestamp, clamping values chrono cannot represent.
pub fn millis_to_datetime(time: Millis) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(time)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Parses `2019-10-01 00:00:04 UTC` (optionally with fractional seconds) or RFC 3339.
pub fn parse_time(text: &str) -> Option<Millis> {
    if let Some(naive) = text.strip_suffix(" UTC") {
        // The fixed layout is parsed by hand: it is the hot path of every replay.
        if let Some(millis) = parse_rees46_fast(naive) {
            return Some(millis);
        }
        return NaiveDateTime::parse_from_str(naive, "%Y-%m-%d %H:%M:%S%.f")
            .ok()
            .map(|datetime| datetime.and_utc().timestamp_millis());
    }
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|datetime| datetime.with_timezone(&Utc).timestamp_millis())
}

fn parse_rees46_fast(text: &str) -> Option<Millis> {
    let bytes = text.as_bytes();
    if bytes.len() != 19
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || bytes[10] != b' '
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let mut value = 0u32;
        for &byte in &bytes[range] {
            if !byte.is_ascii_digit() {
                return None;
            }
            value = value * 10 + u32::from(byte - b'0');
        }
        Some(value)
    };
    let date =
        chrono::NaiveDate::from_ymd_opt(number(0..4)? as i32, number(5..7)?, number(8..10)?)?;
    let time = chrono::NaiveTime::from_hms_opt(number(11..13)?, number(14..16)?, number(17..19)?)?;
    Some(date.and_time(time).and_utc().timestamp_millis())
}

/// Why a row or a message was rejected. Every variant names the field or the line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("line {line}: {source}")]
    AtLine {
        line: u64,
        #[source]
        source: Box<ParseError>,
    },
    #[error("missing field `{field}`")]
    MissingField { field: &'static str },
    #[error("invalid `{field}` {value:?}: {reason}")]
    InvalidField {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("expected 9 fields, found {found}")]
    FieldCount { found: usize },
    #[error("bad header: expected `{expected}`, found `{found}`")]
    Header { expected: String, found: String },
    #[error("invalid json: {reason}")]
    Json { reason: String },
    #[error("not valid UTF-8")]
    NotUtf8,
    #[error("io error: {reason}")]
    Io { reason: String },
}

impl ParseError {
    /// Every reason code [`ParseError::code`] can return.
    pub const CODES: [&'static str; 7] = [
        "missing_field",
        "invalid_field",
        "field_count",
        "bad_header",
        "bad_json",
        "not_utf8",
        "io",
    ];

    /// A short, stable reason code for metrics and dead-letter headers.
    pub fn code(&self) -> &'static str {
        match self {
            Self::AtLine { source, .. } => source.code(),
            Self::MissingField { .. } => "missing_field",
            Self::InvalidField { .. } => "invalid_field",
            Self::FieldCount { .. } => "field_count",
            Self::Header { .. } => "bad_header",
            Self::Json { .. } => "bad_json",
            Self::NotUtf8 => "not_utf8",
            Self::Io { .. } => "io",
        }
    }

    fn at_line(self, line: u64) -> ParseError {
        ParseError::AtLine {
            line,
            source: Box::new(self),
        }
    }
}

fn invalid(field: &'static str, value: &str, reason: &'static str) -> ParseError {
    ParseError::InvalidField {
        field,
        value: value.chars().take(64).collect(),
        reason,
    }
}

fn parse_id(field: &'static str, text: &str) -> Result<u64, ParseError> {
    if text.is_empty() {
        return Err(ParseError::MissingField { field });
    }
    if text.len() > 20 {
        return Err(invalid(field, text, "expected an unsigned integer"));
    }
    let not_a_number = || invalid(field, text, "expected an unsigned integer");
    let mut value = 0u64;
    let mut eights = text.as_bytes().chunks_exact(8);
    for chunk in eights.by_ref() {
        let digits =
            eight_digits(chunk.try_into().expect("eight bytes")).ok_or_else(not_a_number)?;
        value = value.wrapping_mul(100_000_000).wrapping_add(digits);
    }
    for &byte in eights.remainder() {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return Err(not_a_number());
        }
        value = value.wrapping_mul(10).wrapping_add(u64::from(digit));
    }
    // Nineteen digits stay below 2^64; twenty fit when they do not exceed its largest value
    // (digit strings of one length compare as their numbers do).
    if text.len() == 20 && text > "18446744073709551615" {
        return Err(invalid(field, text, "does not fit in 64 bits"));
    }
    Ok(value)
}

/// The number eight ASCII digits spell, first digit most significant, or `None` when a byte is
/// not a digit: all eight checked and combined at once (pairs, then quadruples, then the whole).
fn eight_digits(bytes: [u8; 8]) -> Option<u64> {
    let word = u64::from_le_bytes(bytes);
    // A digit is 0x30 to 0x39: its high nibble is 3, and adding 6 leaves it 3. A byte of 0xFA
    // or more carries into its neighbour, but its own high nibble already fails.
    let high_nibbles = 0xf0f0_f0f0_f0f0_f0f0;
    let nibble_threes = 0x3333_3333_3333_3333;
    if (word & high_nibbles) | (((word.wrapping_add(0x0606_0606_0606_0606)) & high_nibbles) >> 4)
        != nibble_threes
    {
        return None;
    }
    let pairs = ((word & 0x0f0f_0f0f_0f0f_0f0f).wrapping_mul(10 * 256 + 1)) >> 8;
    let quadruples = ((pairs & 0x00ff_00ff_00ff_00ff).wrapping_mul(100 * 65_536 + 1)) >> 16;
    Some(((quadruples & 0x0000_ffff_0000_ffff).wrapping_mul(10_000 * (1 << 32) + 1)) >> 32)
}

fn parse_price(text: &str) -> Result<f64, ParseError> {
    if text.is_empty() {
        return Err(ParseError::MissingField { field: "price" });
    }
    if let Some(price) = plain_decimal(text) {
        return Ok(price);
    }
    let price: f64 = text
        .parse()
        .map_err(|_| invalid("price", text, "expected a decimal number"))?;
    check_price(price, text)
}

/// A price such as `1081.98`, read without the general parser: at most 15 digits make an exact
/// integer, 10^k is exact, and one IEEE division rounds correctly, so the value equals
/// `str::parse`'s (tested). Anything else (signs, exponents, longer numbers) goes the general way.
fn plain_decimal(text: &str) -> Option<f64> {
    const POWERS_OF_TEN: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let mut mantissa = 0u64;
    let mut digits = 0usize;
    let mut decimals: Option<usize> = None;
    for &byte in text.as_bytes() {
        match byte {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(byte - b'0');
                digits += 1;
                if digits > 15 {
                    return None;
                }
                if let Some(decimals) = decimals.as_mut() {
                    *decimals += 1;
                }
            }
            b'.' if decimals.is_none() => decimals = Some(0),
            _ => return None,
        }
    }
    if digits == 0 {
        return None;
    }
    Some(mantissa as f64 / POWERS_OF_TEN[decimals.unwrap_or(0)])
}

fn check_price(price: f64, text: &str) -> Result<f64, ParseError> {
    if !price.is_finite() {
        return Err(invalid("price", text, "must be finite"));
    }
    if price < 0.0 {
        return Err(invalid("price", text, "must not be negative"));
    }
    Ok(price)
}

fn parse_event_type(text: &str) -> Result<EventType, ParseError> {
    if text.is_empty() {
        return Err(ParseError::MissingField {
            field: "event_type",
        });
    }
    EventType::parse(text).ok_or_else(|| {
        invalid(
            "event_type",
            text,
            "expected view, cart, remove_from_cart or purchase",
        )
    })
}

fn parse_event_time(text: &str) -> Result<Millis, ParseError> {
    if text.is_empty() {
        return Err(ParseError::MissingField {
            field: "event_time",
        });
    }
    parse_time(text).ok_or_else(|| {
        invalid(
            "event_time",
            text,
            "expected `YYYY-MM-DD HH:MM:SS UTC` or RFC 3339",
        )
    })
}

fn parse_session(text: &str) -> Result<String, ParseError> {
    if text.is_empty() {
        return Err(ParseError::MissingField {
            field: "user_session",
        });
    }
    if text.len() > 128 {
        return Err(invalid("user_session", text, "longer than 128 bytes"));
    }
    Ok(text.to_owned())
}

fn optional_text(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

/// Parses one CSV record (already split into fields).
pub fn parse_record(record: &csv::ByteRecord) -> Result<Event, ParseError> {
    if record.len() != 9 {
        return Err(ParseError::FieldCount {
            found: record.len(),
        });
    }
    // One UTF-8 check over the whole record costs less than one per field. A field boundary
    // inside a character (possible when only the whole is checked) is not UTF-8 either.
    let text = std::str::from_utf8(record.as_slice()).map_err(|_| ParseError::NotUtf8)?;
    let mut fields = [""; 9];
    for (index, field) in fields.iter_mut().enumerate() {
        *field = record
            .range(index)
            .and_then(|range| text.get(range))
            .ok_or(ParseError::NotUtf8)?;
    }
    event_from_fields(&fields)
}

/// Builds an event from the nine REES46 fields, in header order.
fn event_from_fields(field: &[&str; 9]) -> Result<Event, ParseError> {
    Ok(Event {
        time: parse_event_time(field[0])?,
        event_type: parse_event_type(field[1])?,
        product_id: parse_id("product_id", field[2])?,
        category_id: parse_id("category_id", field[3])?,
        category_code: optional_text(field[4]),
        brand: optional_text(field[5]),
        price: parse_price(field[6])?,
        user_id: parse_id("user_id", field[7])?,
        user_session: parse_session(field[8])?,
        event_id: None,
    })
}

/// The JSON wire form: the CSV fields, ids as numbers or digit strings, an optional `event_id`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEvent {
    event_time: Option<String>,
    event_type: Option<String>,
    product_id: Option<JsonId>,
    category_id: Option<JsonId>,
    #[serde(default)]
    category_code: Option<String>,
    #[serde(default)]
    brand: Option<String>,
    price: Option<serde_json::Number>,
    user_id: Option<JsonId>,
    user_session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event_id: Option<String>,
}

/// JSON numbers lose precision past 2^53 in many producers, so ids may also come as strings.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum JsonId {
    Number(u64),
    Text(String),
}

type JsonFields = serde_json::Map<String, serde_json::Value>;

/// A string field; null counts as missing.
fn json_text(fields: &JsonFields, field: &'static str) -> Result<Option<String>, ParseError> {
    match fields.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(invalid(field, &other.to_string(), "expected a string")),
    }
}

/// An id field: an unsigned integer or a string of digits; null counts as missing.
fn json_id(fields: &JsonFields, field: &'static str) -> Result<Option<JsonId>, ParseError> {
    match fields.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(text)) => Ok(Some(JsonId::Text(text.clone()))),
        Some(serde_json::Value::Number(number)) => number
            .as_u64()
            .map(|value| Some(JsonId::Number(value)))
            .ok_or_else(|| invalid(field, &number.to_string(), "expected an unsigned integer")),
        Some(other) => Err(invalid(
            field,
            &other.to_string(),
            "expected an unsigned integer or a string of digits",
        )),
    }
}

impl JsonId {
    fn resolve(self, field: &'static str) -> Result<u64, ParseError> {
        match self {
            JsonId::Number(value) => Ok(value),
            JsonId::Text(text) => parse_id(field, &text),
        }
    }
}

fn required<T>(value: Option<T>, field: &'static str) -> Result<T, ParseError> {
    value.ok_or(ParseError::MissingField { field })
}

impl JsonEvent {
    /// Takes the fields of a JSON object, naming the field whose type is wrong.
    fn from_fields(fields: &JsonFields) -> Result<JsonEvent, ParseError> {
        let event_time = json_text(fields, "event_time")?;
        let event_type = json_text(fields, "event_type")?;
        let product_id = json_id(fields, "product_id")?;
        let category_id = json_id(fields, "category_id")?;
        let category_code = json_text(fields, "category_code")?;
        let brand = json_text(fields, "brand")?;
        let price = match fields.get("price") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Number(number)) => Some(number.clone()),
            Some(other) => return Err(invalid("price", &other.to_string(), "expected a number")),
        };
        Ok(JsonEvent {
            event_time,
            event_type,
            product_id,
            category_id,
            category_code,
            brand,
            price,
            user_id: json_id(fields, "user_id")?,
            user_session: json_text(fields, "user_session")?,
            event_id: json_text(fields, "event_id")?,
        })
    }

    /// Checks fields in wire order, so the first missing or invalid one is the one reported.
    fn validate(self) -> Result<Event, ParseError> {
        let time = parse_event_time(&required(self.event_time, "event_time")?)?;
        let event_type = parse_event_type(&required(self.event_type, "event_type")?)?;
        let product_id = required(self.product_id, "product_id")?.resolve("product_id")?;
        let category_id = required(self.category_id, "category_id")?.resolve("category_id")?;
        let price_number = required(self.price, "price")?;
        let price_text = price_number.to_string();
        let price = price_number
            .as_f64()
            .ok_or_else(|| invalid("price", &price_text, "expected a decimal number"))?;
        let price = check_price(price, &price_text)?;
        let user_id = required(self.user_id, "user_id")?.resolve("user_id")?;
        let user_session = parse_session(&required(self.user_session, "user_session")?)?;
        let event_id = match self.event_id {
            Some(id) if id.is_empty() || id.len() > 128 => {
                return Err(invalid("event_id", &id, "must be 1 to 128 bytes"));
            }
            other => other,
        };
        Ok(Event {
            time,
            event_type,
            product_id,
            category_id,
            category_code: self.category_code.filter(|text| !text.is_empty()),
            brand: self.brand.filter(|text| !text.is_empty()),
            price,
            user_id,
            user_session,
            event_id,
        })
    }
}

impl From<&Event> for JsonEvent {
    fn from(event: &Event) -> Self {
        JsonEvent {
            event_time: Some(format_time(event.time)),
            event_type: Some(event.event_type.as_str().to_owned()),
            product_id: Some(JsonId::Number(event.product_id)),
            category_id: Some(JsonId::Number(event.category_id)),
            category_code: event.category_code.clone(),
            brand: event.brand.clone(),
            price: serde_json::Number::from_f64(event.price),
            user_id: Some(JsonId::Number(event.user_id)),
            user_session: Some(event.user_session.clone()),
            event_id: event.event_id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    const HEADER: &str = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n";

    fn parse_all(body: &str) -> Vec<Result<Event, ParseError>> {
        CsvEvents::new(format!("{HEADER}{body}").as_bytes()).collect()
    }

    fn first_error(body: &str) -> ParseError {
        parse_all(body)
            .into_iter()
            .find_map(Result::err)
            .expect("an error")
    }

    #[test]
    fn parses_a_real_row() {
        let events = parse_all(
            "2019-10-01 00:00:04 UTC,view,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,535871217,c6bd7419-0748-4c7e-a4d2-d8c2d5a2c8e5\n",
        );
        let event = events[0].clone().unwrap();
        assert_eq!(event.event_type, EventType::View);
        assert_eq!(event.product_id, 1004237);
        assert_eq!(event.category_id, 2053013555631882655);
        assert_eq!(
            event.category_code.as_deref(),
            Some("electronics.smartphone")
        );
        assert_eq!(event.brand.as_deref(), Some("apple"));
        assert_eq!(event.price, 1081.98);
        assert_eq!(event.user_id, 535871217);
        assert_eq!(format_time(event.time), "2019-10-01 00:00:04 UTC");
    }

    #[test]
    fn empty_code_and_brand_are_none() {
        let event = parse_all("2019-10-01 00:00:04 UTC,cart,1,2,,,0,3,s\n")[0]
            .clone()
            .unwrap();
        assert_eq!(event.category_code, None);
        assert_eq!(event.brand, None);
        assert_eq!(event.price, 0.0);
    }

    #[test]
    fn nineteen_digit_user_ids_parse() {
        let event = parse_all("2021-01-10 10:00:00 UTC,view,1,2,,,1.5,1515915625611023730,s\n")[0]
            .clone()
            .unwrap();
        assert_eq!(event.user_id, 1515915625611023730);
    }

    #[test]
    fn errors_name_line_field_and_reason() {
        let error = first_error(
            "2019-10-01 00:00:04 UTC,view,1,2,,,1,3,s\n2019-10-01 00:00:04 UTC,click,1,2,,,1,3,s\n",
        );
        assert_eq!(
            error.to_string(),
            "line 3: invalid `event_type` \"click\": expected view, cart, remove_from_cart or purchase"
        );
        assert_eq!(error.code(), "invalid_field");
    }

    #[test]
    fn rejects_each_bad_field() {
        let cases = [
            ("2019-13-01 00:00:04 UTC,view,1,2,,,1,3,s", "event_time"),
            (",view,1,2,,,1,3,s", "event_time"),
            ("2019-10-01 00:00:04 UTC,,1,2,,,1,3,s", "event_type"),
            ("2019-10-01 00:00:04 UTC,view,-1,2,,,1,3,s", "product_id"),
            ("2019-10-01 00:00:04 UTC,view,1,x,,,1,3,s", "category_id"),
            ("2019-10-01 00:00:04 UTC,view,1,2,,,abc,3,s", "price"),
            ("2019-10-01 00:00:04 UTC,view,1,2,,,-5,3,s", "price"),
            ("2019-10-01 00:00:04 UTC,view,1,2,,,inf,3,s", "price"),
            ("2019-10-01 00:00:04 UTC,view,1,2,,,NaN,3,s", "price"),
            (
                "2019-10-01 00:00:04 UTC,view,1,2,,,1,99999999999999999999,s",
                "user_id",
            ),
            ("2019-10-01 00:00:04 UTC,view,1,2,,,1,3,", "user_session"),
        ];
        for (row, field) in cases {
            let error = first_error(&format!("{row}\n"));
            let ParseError::AtLine { line, source } = &error else {
                panic!("no line in {error}");
            };
            assert_eq!(*line, 2, "{row}");
            let named = match source.as_ref() {
                ParseError::InvalidField { field, .. } | ParseError::MissingField { field } => {
                    *field
                }
                other => panic!("unexpected {other} for {row}"),
            };
            assert_eq!(named, field, "{row}");
        }
    }

    #[test]
    fn rejects_wrong_field_count_and_header() {
        assert!(matches!(
            first_error("2019-10-01 00:00:04 UTC,view,1\n"),
            ParseError::AtLine { source, .. } if matches!(*source, ParseError::FieldCount { found: 3 })
        ));
        let errors: Vec<_> = CsvEvents::new("a,b\n1,2\n".as_bytes()).collect();
        assert!(
            matches!(&errors[0], Err(ParseError::AtLine { line: 1, source }) if matches!(**source, ParseError::Header { .. }))
        );
        // The header found is printed as read, commas included.
        let message = errors[0].as_ref().unwrap_err().to_string();
        assert!(message.contains("found `a,b`"), "{message}");
    }

    #[test]
    fn rejects_non_utf8() {
        let mut bytes = HEADER.as_bytes().to_vec();
        bytes.extend_from_slice(b"2019-10-01 00:00:04 UTC,view,1,2,\xff,,1,3,s\n");
        // "é" (C3 A9) cut in two by a comma: the record's bytes without the commas are UTF-8,
        // its fields are not.
        bytes.extend_from_slice(b"2019-10-01 00:00:04 UTC,view,1,2,a\xc3,\xa9b,1,3,s\n");
        let errors: Vec<_> = CsvEvents::new(bytes.as_slice()).collect();
        assert_eq!(errors.len(), 2);
        for error in &errors {
            assert!(
                matches!(error, Err(ParseError::AtLine { source, .. }) if matches!(**source, ParseError::NotUtf8)),
                "{error:?}"
            );
        }
    }

    #[test]
    fn plain_prices_equal_the_general_parser() {
        let mut texts: Vec<String> = [
            "0",
            "0.0",
            "1.",
            ".5",
            "1081.98",
            "0.1",
            "0.3",
            "2.675",
            "999999999999999",
            "99999999999999.9",
            "0.00000000000001",
            "123456789.012345",
            "00012.50",
        ]
        .iter()
        .map(|text| text.to_string())
        .collect();
        // Every price with up to 15 digits that a pseudo-random walk reaches.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let digits = (state % 15 + 1) as usize;
            let mantissa = state >> 8;
            let text = format!(
                "{:0width$}",
                mantissa % 10u64.pow(digits as u32),
                width = digits
            );
            let point = (state >> 4) as usize % (digits + 1);
            texts.push(format!("{}.{}", &text[..point], &text[point..]));
            texts.push(text);
        }
        for text in &texts {
            let general: f64 = text.parse().unwrap();
            assert_eq!(
                plain_decimal(text).map(f64::to_bits),
                Some(general.to_bits()),
                "{text}"
            );
            assert_eq!(parse_price(text), Ok(general), "{text}");
        }
        // Not plain: left to the general parser, which still accepts or rejects them.
        for text in [
            "",
            ".",
            "1.2.3",
            "-1",
            "+1",
            "1e3",
            "1234567890123456",
            "inf",
            "1,5",
        ] {
            assert_eq!(plain_decimal(text), None, "{text}");
        }
        assert_eq!(parse_price("+1"), Ok(1.0));
        assert_eq!(parse_price("1e3"), Ok(1000.0));
        assert_eq!(parse_price("1234567890123456"), Ok(1234567890123456.0));
    }

    #[test]
    fn parses_both_time_formats() {
        let rees = parse_time("2019-10-01 00:00:04 UTC").unwrap();
        assert_eq!(parse_time("2019-10-01T00:00:04Z"), Some(rees));
        assert_eq!(parse_time("2019-10-01T02:00:04+02:00"), Some(rees));
        assert_eq!(parse_time("2019-10-01 00:00:04.250 UTC"), Some(rees + 250));
        assert_eq!(parse_time("2019-10-01 00:00:04"), None);
        assert_eq!(parse_time("2019-02-30 00:00:04 UTC"), None);
    }

    #[test]
    fn json_round_trips_and_accepts_string_ids() {
        let event =
            parse_all("2019-10-01 00:00:04 UTC,purchase,1,2053013555631882655,a.b,,9.99,3,s\n")[0]
                .clone()
                .unwrap();
        assert_eq!(Event::from_json(event.to_json().as_bytes()).unwrap(), event);
        let text = r#"{"event_time":"2019-10-01T00:00:04Z","event_type":"view","product_id":"1","category_id":2,"price":1.5,"user_id":"1515915625611023730","user_session":"s","event_id":"e-1"}"#;
        let parsed = Event::from_json(text.as_bytes()).unwrap();
        assert_eq!(parsed.user_id, 1515915625611023730);
        assert_eq!(parsed.event_id.as_deref(), Some("e-1"));
    }

    #[test]
    fn csv_ids_are_unsigned_64_bit_integers() {
        let user_id = |text: &str| {
            parse_all(&format!("2019-10-01 00:00:04 UTC,view,1,2,,,1,{text},s\n"))
                .remove(0)
                .map(|event| event.user_id)
                .map_err(|error| error.to_string())
        };
        assert_eq!(user_id("0"), Ok(0));
        assert_eq!(user_id("0512475445"), Ok(512_475_445));
        assert_eq!(user_id("18446744073709551615"), Ok(u64::MAX));
        for (text, reason) in [
            ("18446744073709551616", "does not fit in 64 bits"),
            ("99999999999999999999", "does not fit in 64 bits"),
            ("100000000000000000000", "expected an unsigned integer"),
            ("12a", "expected an unsigned integer"),
            ("-1", "expected an unsigned integer"),
            ("+1", "expected an unsigned integer"),
            ("1.0", "expected an unsigned integer"),
        ] {
            let error = user_id(text).unwrap_err();
            assert!(
                error.contains("`user_id`") && error.contains(reason),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn ids_read_eight_digits_at_a_time_agree_with_the_standard_parser() {
        // Every length up to twenty-one, digits and one stray character anywhere: the value or
        // the refusal of `u64::from_str`, except that a `+` sign is refused here.
        let mut rng = ChaCha8Rng::seed_from_u64(0x9e37_79b9_7f4a_7c15);
        let mut next = move |bound: u64| rng.gen_range(0..bound);
        let strays = [
            '/', ':', ' ', 'a', '.', '+', '-', '\u{0}', '\u{7f}', 'é', '\u{ff}',
        ];
        for length in 1..=21 {
            for _ in 0..300 {
                let mut text: String = (0..length)
                    .map(|_| char::from(b'0' + next(10) as u8))
                    .collect();
                if next(3) == 0 {
                    let at = next(length as u64) as usize;
                    let stray = strays[next(strays.len() as u64) as usize];
                    text.replace_range(at..at + 1, &stray.to_string());
                }
                // Longer than twenty bytes is refused whatever its value.
                let expected = text
                    .parse::<u64>()
                    .ok()
                    .filter(|_| !text.starts_with('+') && text.len() <= 20);
                assert_eq!(parse_id("user_id", &text).ok(), expected, "{text:?}");
            }
        }
        assert_eq!(eight_digits(*b"01234567"), Some(1_234_567));
        assert_eq!(eight_digits(*b"99999999"), Some(99_999_999));
        assert_eq!(eight_digits(*b"0123456\xfa"), None);
    }

    #[test]
    fn rees46_times_read_by_the_fast_path_agree_with_the_general_parser() {
        let by_chrono = |text: &str| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
                .ok()
                .map(|datetime| datetime.and_utc().timestamp_millis())
        };
        // Every day of four centuries (leap rules included), at a few times of day.
        let mut day = chrono::NaiveDate::from_ymd_opt(1900, 1, 1).unwrap();
        let mut index = 0u32;
        while day < chrono::NaiveDate::from_ymd_opt(2300, 1, 1).unwrap() {
            let (hour, minute, second) = (index % 24, (index * 7) % 60, (index * 13) % 60);
            let text = format!(
                "{} {hour:02}:{minute:02}:{second:02}",
                day.format("%Y-%m-%d")
            );
            assert_eq!(parse_rees46_fast(&text), by_chrono(&text), "{text}");
            day = day.succ_opt().unwrap();
            index += 1;
        }
        for text in [
            "0000-01-01 00:00:00",
            "0000-02-29 12:00:00",
            "9999-12-31 23:59:59",
            "1969-12-31 23:59:59",
            "2019-02-29 00:00:00",
            "2020-02-29 00:00:00",
            "2100-02-29 00:00:00",
            "2000-02-29 00:00:00",
            "2019-04-31 00:00:00",
            "2019-13-01 00:00:00",
            "2019-00-10 00:00:00",
            "2019-10-00 00:00:00",
            "2019-10-01 24:00:00",
            "2019-10-01 23:60:00",
            "2019-10-01 23:59:60",
            "2019-1O-01 00:00:00",
        ] {
            // A leap second (:60) is refused by the hand reader and taken by chrono's.
            assert_eq!(
                parse_time(&format!("{text} UTC")),
                by_chrono(text),
                "{text}"
            );
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        let cases = [
            (r#"{"event_type":"view"}"#, "missing field `event_time`"),
            ("{not json", "invalid json"),
            (
                r#"{"event_time":"2019-10-01T00:00:04Z","event_type":"view","product_id":1,"category_id":2,"price":-1,"user_id":3,"user_session":"s"}"#,
                "invalid `price`",
            ),
            (
                r#"{"event_time":"2019-10-01T00:00:04Z","event_type":"view","product_id":1.5,"category_id":2,"price":1,"user_id":3,"user_session":"s"}"#,
                "invalid `product_id` \"1.5\": expected an unsigned integer",
            ),
            (
                r#"{"event_time":"2019-10-01T00:00:04Z","event_type":3,"product_id":1,"category_id":2,"price":"1","user_id":3,"user_session":"s"}"#,
                "invalid `event_type` \"3\": expected a string",
            ),
            (
                r#"{"event_time":"2019-10-01T00:00:04Z","event_type":"buy","product_id":1,"category_id":2,"price":1,"user_id":3,"user_session":"s"}"#,
                "invalid `event_type`",
            ),
            (
                r#"{"event_time":"2019-10-01T00:00:04Z","event_type":"view","product_id":1,"category_id":2,"price":1,"user_id":3,"user_session":"s","extra":1}"#,
                "unknown field",
            ),
        ];
        for (text, expected) in cases {
            let error = Event::from_json(text.as_bytes()).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn identity_is_stable_and_prefers_event_id() {
        let mut event = parse_all("2019-10-01 00:00:04 UTC,view,1,2,,,1,3,s\n")[0]
            .clone()
            .unwrap();
        let copy = event.clone();
        assert_eq!(event.identity(), copy.identity());
        event.price = 2.0;
        assert_ne!(event.identity(), copy.identity());
        event.event_id = Some("x".into());
        let mut other = copy.clone();
        other.event_id = Some("x".into());
        assert_eq!(event.identity(), other.identity());
    }

    /// Identities are stored (delivery guards, truth files): they must never change. These were
    /// computed by the per-field streaming hasher of earlier versions.
    #[test]
    fn identities_keep_their_values() {
        let short = parse_all("2019-10-01 00:00:04 UTC,view,1,2,a.b,brand,10.50,3,s\n")[0]
            .clone()
            .unwrap();
        let mut long = short.clone();
        long.brand = Some("b".repeat(300));
        let mut with_id = short.clone();
        with_id.event_id = Some("7c2f".into());
        assert_eq!(short.identity(), 0x79f4_65a5_24e8_cb08);
        // Over the stack buffer: the streaming path.
        assert_eq!(long.identity(), 0xbfc7_a543_a75c_5c51);
        assert_eq!(with_id.identity(), 0x6e22_befb_6672_ebc8);
    }

    #[test]
    fn csv_writer_round_trips() {
        let event = parse_all("2019-10-01 00:00:04 UTC,remove_from_cart,1,2,a.b,brand,10.50,3,s\n")
            [0]
        .clone()
        .unwrap();
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.write_record(CSV_HEADER).unwrap();
        event.write_csv(&mut writer).unwrap();
        let bytes = writer.into_inner().unwrap();
        let back: Vec<_> = CsvEvents::new(bytes.as_slice()).collect();
        assert_eq!(back[0].clone().unwrap(), event);
    }
}
