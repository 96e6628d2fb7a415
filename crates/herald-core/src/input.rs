//! One parser for every way a publication enters Herald.
//!
//! `POST /v1/publish`, each item of `POST /v1/publish/batch`, a `NOTIFY` payload and the
//! idempotency key of an outbox row all go through [`parse_publish`] and
//! [`check_idempotency_key`], so the same input gets the same answer (code and message)
//! whichever door it came through. Client frames share [`check_unique_keys`].
//!
//! JSON objects with a repeated key are refused everywhere, at any depth. `serde_json` keeps
//! the last value of a repeated key when it builds a `Value`, while a derived struct refuses
//! it: before this module the batch endpoint published `{"channel":"a","channel":"b"}` to `b`
//! while the single endpoint refused it. Refusing is also the only choice that cannot be read
//! two ways downstream (RFC 8259 §4 leaves duplicate names to the implementation).

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use std::sync::Arc;

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::protocol::{ErrorBody, ErrorCode};

/// The longest idempotency key accepted from a publisher (before it is scoped to its source).
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

/// A publication as a publisher writes it: `{"channel","data","idempotency_key"?}`. `data`
/// stays the text the publisher sent (see [`accept_payload`]): a `Value` would round integers
/// beyond 64 bits and rewrite numbers.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a publication object {\"channel\", \"data\"[, \"idempotency_key\"]}"
)]
pub struct PublishInput {
    pub channel: String,
    pub data: Box<RawValue>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// A payload as Herald keeps it: the value the schema is checked against, and the bytes that
/// are stored and delivered.
#[derive(Debug, Clone)]
pub struct Payload {
    /// For validation only. Integers beyond 64 bits are approximated here (as `f64`), never in
    /// what is delivered.
    pub value: Value,
    /// The publisher's JSON text with insignificant whitespace removed (RFC 8259 §2): every
    /// string, number, key and key order exactly as sent.
    pub raw: Arc<RawValue>,
}

/// Accepts one payload: parses it for validation and keeps its bytes for delivery. The only
/// change made to the text is removing whitespace outside strings, so a frame stays one line
/// (NDJSON, SSE `data:`) and the same value is always the same bytes. Errors: `bad_request`
/// when a number cannot be represented at all (e.g. `1e400`, beyond `f64`).
pub fn accept_payload(data: &RawValue) -> Result<Payload, ErrorBody> {
    let value: Value = serde_json::from_str(data.get()).map_err(|e| {
        ErrorBody::new(
            ErrorCode::BadRequest,
            format!("data: {}", without_position(&e)),
        )
    })?;
    let compact = compact_json(data.get());
    // Removing whitespace outside strings keeps the text valid JSON.
    let raw = RawValue::from_string(compact)
        .map_err(|e| ErrorBody::new(ErrorCode::Internal, format!("payload re-encoding: {e}")))?;
    Ok(Payload {
        value,
        raw: Arc::from(raw),
    })
}

/// Removes insignificant whitespace (space, tab, CR, LF outside strings) from valid JSON text.
pub fn compact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\r' | '\n') {
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
    }
    out
}

/// Parses one publication from JSON text: repeated keys, unknown fields, missing fields,
/// wrong types and bad idempotency keys are all `bad_request`, with messages that do not
/// depend on where the text sat (no line/column, which would differ between a body and the
/// same object inside a batch).
pub fn parse_publish(text: &str) -> Result<PublishInput, ErrorBody> {
    let bad = |m: String| ErrorBody::new(ErrorCode::BadRequest, m);
    check_unique_keys(text).map_err(|d| bad(format!("invalid publication: {d}")))?;
    let input: PublishInput = serde_json::from_str(text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            bad(format!("invalid JSON: {e}"))
        } else {
            bad(format!("invalid publication: {}", without_position(&e)))
        }
    })?;
    if let Some(k) = &input.idempotency_key {
        check_idempotency_key(k)?;
    }
    Ok(input)
}

/// The rule for a publisher's idempotency key, wherever it comes from.
pub fn check_idempotency_key(key: &str) -> Result<(), ErrorBody> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!("idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} characters"),
        ));
    }
    Ok(())
}

/// A serde_json error's message without the " at line L column C" it appends.
pub fn without_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) if e.line() > 0 => s[..i].to_owned(),
        _ => s,
    }
}

/// A key that appears twice in one JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    /// JSON pointer to the object holding the key (`""` for the top level).
    pub pointer: String,
    pub key: String,
}

impl fmt::Display for DuplicateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pointer.is_empty() {
            write!(f, "duplicate field `{}`", self.key)
        } else {
            write!(f, "duplicate key `{}` in {}", self.key, self.pointer)
        }
    }
}

/// Why [`check_unique_keys`] refused a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheckError {
    Duplicate(DuplicateKey),
    /// Not JSON at all (the caller's own parse will say more).
    Syntax(String),
}

impl fmt::Display for KeyCheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyCheckError::Duplicate(d) => d.fmt(f),
            KeyCheckError::Syntax(m) => write!(f, "invalid JSON: {m}"),
        }
    }
}

/// Walks JSON text and fails on the first object that repeats a key, at any depth.
pub fn check_unique_keys(text: &str) -> Result<(), KeyCheckError> {
    let path = RefCell::new(Vec::new());
    let found = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let walked = Walk {
        path: &path,
        found: &found,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    match (walked, found.into_inner()) {
        (_, Some(d)) => Err(KeyCheckError::Duplicate(d)),
        (Err(e), None) => Err(KeyCheckError::Syntax(e.to_string())),
        (Ok(()), None) => Ok(()),
    }
}

/// The path is kept in a stack shared by the whole walk (pushed on the way down, popped on the
/// way up), so a pointer is only formatted when there is an error to report.
struct Walk<'a> {
    path: &'a RefCell<Vec<String>>,
    found: &'a RefCell<Option<DuplicateKey>>,
}

impl Walk<'_> {
    fn child(&self) -> Self {
        Walk {
            path: self.path,
            found: self.found,
        }
    }
}

fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            self.path.borrow_mut().push(i.to_string());
            let more = seq.next_element_seed(self.child())?.is_some();
            self.path.borrow_mut().pop();
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                let pointer: String = self
                    .path
                    .borrow()
                    .iter()
                    .map(|s| format!("/{}", escape_pointer(s)))
                    .collect();
                *self.found.borrow_mut() = Some(DuplicateKey { pointer, key });
                return Err(A::Error::custom("duplicate key"));
            }
            self.path.borrow_mut().push(key.clone());
            map.next_value_seed(self.child())?;
            self.path.borrow_mut().pop();
            seen.insert(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_keep_their_bytes() {
        let raw = |t: &str| RawValue::from_string(t.to_owned()).unwrap();
        let p = accept_payload(&raw(r#"{"a":123456789012345678901234567890}"#)).unwrap();
        assert_eq!(p.raw.get(), r#"{"a":123456789012345678901234567890}"#);
        let p = accept_payload(&raw(
            "{ \"b\" : [ 1.50 , 2e3 , -0 ],\n \"s\": \" a \\\" b \" }",
        ))
        .unwrap();
        assert_eq!(p.raw.get(), r#"{"b":[1.50,2e3,-0],"s":" a \" b "}"#);
        assert_eq!(p.value["b"][0], 1.5);
        let e = accept_payload(&raw("1e400")).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("number out of range"), "{}", e.message);
    }

    #[test]
    fn repeated_keys_are_found_at_any_depth() {
        let d = |t: &str| match check_unique_keys(t) {
            Err(KeyCheckError::Duplicate(d)) => d.to_string(),
            other => format!("{other:?}"),
        };
        assert_eq!(d(r#"{"a":1,"a":2}"#), "duplicate field `a`");
        assert_eq!(
            d(r#"{"data":{"x":[{"k":1},{"k":1,"k":2}]}}"#),
            "duplicate key `k` in /data/x/1"
        );
        assert_eq!(d(r#"{"a/b":{"c":1,"c":1}}"#), "duplicate key `c` in /a~1b");
        assert!(check_unique_keys(r#"{"a":{"a":1},"b":[1,{"a":2}]}"#).is_ok());
        assert!(matches!(
            check_unique_keys("{"),
            Err(KeyCheckError::Syntax(_))
        ));
    }

    #[test]
    fn messages_do_not_depend_on_position() {
        let a = parse_publish(r#"{"channel":"x","data":{},"extra":1}"#).unwrap_err();
        let b = parse_publish("\n\n   {\"channel\":\"x\",\n\"data\":{},\"extra\":1}").unwrap_err();
        assert_eq!(a, b);
        assert_eq!(a.code, ErrorCode::BadRequest);
        let k = parse_publish(r#"{"channel":"x","data":{},"idempotency_key":""}"#).unwrap_err();
        assert_eq!(k.message, "idempotency_key must be 1 to 256 characters");
        let t = parse_publish("1").unwrap_err();
        assert!(
            t.message.contains("expected a publication object"),
            "{}",
            t.message
        );
    }
}
