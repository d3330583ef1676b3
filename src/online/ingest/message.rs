//! What makes a bus message a valid event, and the reason it is dead-lettered when it is not.

use propensity_actors::event::{Event, ParseError};

/// Why a message was dead-lettered: a stable code (the `x-propensity-reason` header and the
/// metric label) and a detail naming the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub detail: String,
}

/// The reason counted for a message the broker dead-lettered itself, after
/// `bus.rabbitmq.delivery_limit` deliveries (it carries `x-death` and no reason of ours).
pub const DELIVERY_LIMIT: &str = "delivery_limit";

/// Reason codes of the bus besides the parser's ([`ParseError::CODES`]).
pub const BUS_REASONS: [&str; 8] = [
    DELIVERY_LIMIT,
    "event_time_in_future",
    "too_large",
    "empty",
    "not_an_object",
    "batch_in_message",
    "bad_content_type",
    "routing_key_mismatch",
];

/// Every reason a bus message can be dead-lettered for.
pub fn reasons() -> impl Iterator<Item = &'static str> {
    BUS_REASONS.into_iter().chain(ParseError::CODES)
}

fn reject(reason: &'static str, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        detail: detail.into(),
    }
}

/// In live mode (`max_future_skew`), refuses an event dated further ahead of the wall clock
/// than allowed: its producer's clock is wrong, and it must not move event time.
pub fn check_clock(event: Event, max_future_skew: Option<i64>) -> Result<Event, Rejection> {
    let Some(skew) = max_future_skew else {
        return Ok(event);
    };
    let now = chrono::Utc::now().timestamp_millis();
    match propensity_actors::clock::ahead_of(event.time, now, skew) {
        Some(ahead) => Err(reject(
            "event_time_in_future",
            format!(
                "event_time {} is {} s ahead of the service's clock (at most engine.max_future_skew_seconds = {} s)",
                propensity_actors::event::format_time(event.time),
                ahead / 1000,
                skew / 1000
            ),
        )),
        None => Ok(event),
    }
}

/// Checks one message and parses its event. `routing_key` must be the event's user_id: the
/// consistent-hash exchange partitions on it, so any other key would break per-user order.
pub fn parse(
    body: &[u8],
    routing_key: &str,
    content_type: Option<&str>,
    max_bytes: usize,
) -> Result<Event, Rejection> {
    if body.len() > max_bytes {
        return Err(reject(
            "too_large",
            format!("message of {} bytes exceeds {max_bytes}", body.len()),
        ));
    }
    if let Some(content_type) = content_type.filter(|value| !value.is_empty())
        && !content_type.to_ascii_lowercase().contains("json")
    {
        return Err(reject(
            "bad_content_type",
            format!("content type {content_type:?} is not JSON"),
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|error| reject("not_utf8", format!("message is not UTF-8: {error}")))?;
    match text.trim_start().as_bytes().first() {
        None => return Err(reject("empty", "message body is empty")),
        Some(b'[') => {
            return Err(reject(
                "batch_in_message",
                "a message carries one event object, not an array",
            ));
        }
        Some(b'{') => {}
        Some(_) => {
            return Err(reject(
                "not_an_object",
                "a message carries one JSON event object",
            ));
        }
    }
    let event = Event::from_json(body).map_err(|error| reject(error.code(), error.to_string()))?;
    if routing_key != event.user_id.to_string() {
        return Err(reject(
            "routing_key_mismatch",
            format!(
                "routing key {:?} is not the event's user_id {}",
                routing_key.chars().take(64).collect::<String>(),
                event.user_id
            ),
        ));
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"event_time":"2019-10-01 00:00:00 UTC","event_type":"view","product_id":1,"category_id":2,"category_code":null,"brand":null,"price":3.5,"user_id":7,"user_session":"s"}"#;

    #[test]
    fn a_good_message_parses() {
        let event = parse(GOOD.as_bytes(), "7", Some("application/json"), 4096).unwrap();
        assert_eq!(event.user_id, 7);
    }

    #[test]
    fn each_check_names_its_reason() {
        let cases: [(&[u8], &str, Option<&str>, &str); 8] = [
            (GOOD.as_bytes(), "8", None, "routing_key_mismatch"),
            (GOOD.as_bytes(), "7", Some("text/plain"), "bad_content_type"),
            (b"   ", "7", None, "empty"),
            (b"[{}]", "7", None, "batch_in_message"),
            (b"42", "7", None, "not_an_object"),
            (b"{\"event_time\": \xff}", "7", None, "not_utf8"),
            (b"{\"event_time\": ", "7", None, "bad_json"),
            (&[b'{'; 5000], "7", None, "too_large"),
        ];
        for (body, key, content_type, reason) in cases {
            let rejection = parse(body, key, content_type, 4096).unwrap_err();
            assert_eq!(rejection.reason, reason, "{}", rejection.detail);
            assert!(reasons().any(|known| known == reason));
        }
    }
}
