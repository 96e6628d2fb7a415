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

use std::borrow::Cow;
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

/// Accepts one payload: parses it for validation and keeps its bytes for delivery (for
/// callers that need the value itself, e.g. an RPC request's schema; a publication uses
/// [`accept_raw`] and validates with [`crate::Descriptor::validate_json`]). Errors as
/// [`accept_raw`].
pub fn accept_payload(data: &RawValue) -> Result<Payload, ErrorBody> {
    let raw = accept_raw(data)?;
    let value: Value = serde_json::from_str(raw.get()).map_err(|e| {
        ErrorBody::new(
            ErrorCode::BadRequest,
            format!("data: {}", without_position(&e)),
        )
    })?;
    Ok(Payload { value, raw })
}

/// Accepts one payload for delivery without building a `Value`: checks that every number can
/// be represented (the one thing valid JSON text can still fail on), and keeps the text with
/// insignificant whitespace removed (RFC 8259 §2), so a frame stays one line (NDJSON, SSE
/// `data:`) and the same value is always the same bytes. Errors: `bad_request` when a number
/// cannot be represented at all (e.g. `1e400`, beyond `f64`), with the message a `Value`
/// parse gives (`data: number out of range`).
pub fn accept_raw(data: &RawValue) -> Result<Arc<RawValue>, ErrorBody> {
    let text = data.get();
    let mut de = serde_json::Deserializer::from_str(text);
    Numbers.deserialize(&mut de).map_err(|e| {
        ErrorBody::new(
            ErrorCode::BadRequest,
            format!("data: {}", without_position(&e)),
        )
    })?;
    if !text.bytes().any(is_json_whitespace) {
        // Already compact: the borrowed text is copied as is, with no second parse.
        return Ok(Arc::from(data.to_owned()));
    }
    // Removing whitespace outside strings keeps the text valid JSON.
    let raw = RawValue::from_string(compact_json(text))
        .map_err(|e| ErrorBody::new(ErrorCode::Internal, format!("payload re-encoding: {e}")))?;
    Ok(Arc::from(raw))
}

fn is_json_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Walks a value the way a `Value` parse would (so numbers are converted and checked, and the
/// nesting limit applies) and keeps nothing.
struct Numbers;

impl<'de> DeserializeSeed<'de> for Numbers {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Numbers {
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
        while seq.next_element_seed(Numbers)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key::<serde::de::IgnoredAny>()?.is_some() {
            map.next_value_seed(Numbers)?;
        }
        Ok(())
    }
}

/// Removes insignificant whitespace (space, tab, CR, LF outside strings) from valid JSON text.
pub fn compact_json(text: &str) -> String {
    // Byte by byte: every byte of a multi-byte UTF-8 sequence is >= 0x80, so it can never be
    // taken for a quote, a backslash or whitespace, and the output stays valid UTF-8.
    let mut out = Vec::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for &b in text.as_bytes() {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !is_json_whitespace(b) {
            if b == b'"' {
                in_string = true;
            }
            out.push(b);
        }
    }
    // Only ASCII whitespace was removed from valid UTF-8, between whole characters.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Parses one publication from JSON text: repeated keys, unknown fields, missing fields,
/// wrong types and bad idempotency keys are all `bad_request`, with messages that do not
/// depend on where the text sat (no line/column, which would differ between a body and the
/// same object inside a batch).
pub fn parse_publish(text: &str) -> Result<PublishInput, ErrorBody> {
    let input = parse_publish_ref(text)?;
    Ok(PublishInput {
        channel: input.channel.into_owned(),
        data: input.data.to_owned(),
        idempotency_key: input.idempotency_key.map(Cow::into_owned),
    })
}

/// What a publication is, in error messages (the same words as [`PublishRef`]'s `expecting`).
const PUBLICATION_OBJECT: &str =
    "a publication object {\"channel\", \"data\"[, \"idempotency_key\"]}";

/// [`PublishInput`] borrowed from the text it was parsed from (the batch endpoint's items):
/// the channel and the key are copied only when they contain escapes.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a publication object {\"channel\", \"data\"[, \"idempotency_key\"]}"
)]
pub struct PublishRef<'a> {
    #[serde(borrow)]
    pub channel: Cow<'a, str>,
    #[serde(borrow)]
    pub data: &'a RawValue,
    #[serde(default, borrow)]
    pub idempotency_key: Option<Cow<'a, str>>,
}

/// [`parse_publish`] without copying: the same checks and the same answers.
pub fn parse_publish_ref(text: &str) -> Result<PublishRef<'_>, ErrorBody> {
    let bad = |m: String| ErrorBody::new(ErrorCode::BadRequest, m);
    check_unique_keys(text).map_err(|d| bad(format!("invalid publication: {d}")))?;
    let input: PublishRef<'_> = serde_json::from_str(text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            bad(format!("invalid JSON: {e}"))
        } else {
            // serde reads a struct from an array too and then names the first element's
            // type ("invalid type: integer `1`, expected a string"), which misleads; the
            // other shapes get the struct's own `expecting`.
            match json_shape(text) {
                Err(syntax) => bad(format!("invalid JSON: {syntax}")),
                Ok(Some(kind @ "an array")) => bad(format!(
                    "invalid publication: expected {PUBLICATION_OBJECT}, got {kind}"
                )),
                Ok(_) => bad(format!("invalid publication: {}", without_position(&e))),
            }
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

/// What a JSON text is when it is not an object (`Ok(Some("an array"))`, `"a string"`…),
/// `Ok(None)` for an object, and the syntax error when it is not JSON at all. For the message
/// about a body a derived struct refused: serde reads a struct from an array as well, and then
/// complains about the array's first element (or, for `[{`, about a type before the syntax).
pub fn json_shape(text: &str) -> Result<Option<&'static str>, serde_json::Error> {
    serde_json::from_str::<&RawValue>(text)?;
    Ok(match text.trim_start().as_bytes().first() {
        Some(b'{') | None => None,
        Some(b'[') => Some("an array"),
        Some(b'"') => Some("a string"),
        Some(b't' | b'f') => Some("a boolean"),
        Some(b'n') => Some("null"),
        Some(_) => Some("a number"),
    })
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
///
/// On the way down nothing is allocated for text without escapes: keys are borrowed from the
/// text and compared within their object (a linear scan, a hash set past
/// `LINEAR_KEYS` (16) keys). The pointer to the offending object is only assembled on the way
/// back up from an error. This runs once per publication on every door, so its cost is per
/// message (issue 16's unicast profile had it at 8 % of the server's CPU when it formatted a
/// path segment and hashed an owned copy of every key).
pub fn check_unique_keys(text: &str) -> Result<(), KeyCheckError> {
    let found = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let walked = Walk { found: &found }
        .deserialize(&mut de)
        .and_then(|()| de.end());
    match (walked, found.into_inner()) {
        (_, Some(found)) => Err(KeyCheckError::Duplicate(found.finish())),
        (Err(e), None) => Err(KeyCheckError::Syntax(e.to_string())),
        (Ok(()), None) => Ok(()),
    }
}

/// Objects with up to this many keys are checked by comparing each key with the ones before
/// it; larger ones switch to a hash set (no quadratic cost on a hostile object).
const LINEAR_KEYS: usize = 16;

/// The repeated key, and the path to its object collected innermost first while the error
/// travels up.
struct Found {
    key: String,
    reversed_path: Vec<String>,
}

impl Found {
    fn finish(self) -> DuplicateKey {
        let pointer = self
            .reversed_path
            .iter()
            .rev()
            .map(|s| format!("/{}", escape_pointer(s)))
            .collect();
        DuplicateKey {
            pointer,
            key: self.key,
        }
    }
}

struct Walk<'a> {
    found: &'a RefCell<Option<Found>>,
}

impl Walk<'_> {
    fn child(&self) -> Self {
        Walk { found: self.found }
    }

    /// Called when a child failed: if the failure is a repeated key, records the segment that
    /// led to that child.
    fn on_the_way_up(&self, segment: impl FnOnce() -> String) {
        if let Some(found) = self.found.borrow_mut().as_mut() {
            found.reversed_path.push(segment());
        }
    }
}

fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// An object key, borrowed from the text unless it had escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
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
            match seq.next_element_seed(self.child()) {
                Ok(Some(())) => i += 1,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.on_the_way_up(|| i.to_string());
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen: Vec<Cow<'de, str>> = Vec::new();
        let mut many: Option<HashSet<Cow<'de, str>>> = None;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let repeated = match &many {
                Some(set) => set.contains(&key),
                None => seen.contains(&key),
            };
            if repeated {
                *self.found.borrow_mut() = Some(Found {
                    key: key.into_owned(),
                    reversed_path: Vec::new(),
                });
                return Err(A::Error::custom("duplicate key"));
            }
            if let Err(e) = map.next_value_seed(self.child()) {
                self.on_the_way_up(|| key.clone().into_owned());
                return Err(e);
            }
            match &mut many {
                Some(set) => {
                    set.insert(key);
                }
                None if seen.len() < LINEAR_KEYS => seen.push(key),
                None => {
                    let mut set: HashSet<_> = std::mem::take(&mut seen).into_iter().collect();
                    set.insert(key);
                    many = Some(set);
                }
            }
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
    fn repeated_keys_are_found_in_large_objects() {
        // Past the linear scan's size the check moves to a hash set: repeats before and after
        // the switch are both found, and distinct keys are not mistaken for repeats.
        let object = |keys: &[usize]| {
            let fields: Vec<String> = keys.iter().map(|k| format!(r#""k{k}":{k}"#)).collect();
            format!(r#"{{"data":{{{}}}}}"#, fields.join(","))
        };
        let distinct: Vec<usize> = (0..40).collect();
        assert!(check_unique_keys(&object(&distinct)).is_ok());
        for repeat_at in [3, LINEAR_KEYS, LINEAR_KEYS + 1, 39] {
            let mut keys = distinct.clone();
            keys.insert(repeat_at + 1, repeat_at);
            match check_unique_keys(&object(&keys)) {
                Err(KeyCheckError::Duplicate(d)) => {
                    assert_eq!(
                        d.to_string(),
                        format!("duplicate key `k{repeat_at}` in /data")
                    )
                }
                other => panic!("{repeat_at}: {other:?}"),
            }
        }
        // A key written with an escape is the same key as its plain spelling.
        assert!(matches!(
            check_unique_keys(r#"{"a":1,"\u0061":2}"#),
            Err(KeyCheckError::Duplicate(_))
        ));
        assert!(matches!(
            check_unique_keys(r#"{"x":[0,{"a~b/c":{"q":1,"q":2}}]}"#),
            Err(KeyCheckError::Duplicate(d)) if d.pointer == "/x/1/a~0b~1c"
        ));
    }

    #[test]
    fn raw_payloads_are_compacted_and_checked() {
        let raw = |t: &str| RawValue::from_string(t.to_owned()).unwrap();
        assert_eq!(
            accept_raw(&raw(r#"{"a":"x y"}"#)).unwrap().get(),
            r#"{"a":"x y"}"#
        );
        assert_eq!(
            accept_raw(&raw("[ 1 ,\n\t\"é \\\" ü\" ]")).unwrap().get(),
            "[1,\"é \\\" ü\"]"
        );
        let e = accept_raw(&raw(r#"{"n":[1e400]}"#)).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert_eq!(e.message, "data: number out of range");
    }

    /// The borrowed parse must say what the owned struct's derive says (the messages clients
    /// saw before the batch endpoint stopped copying).
    #[test]
    fn borrowed_parse_answers_as_the_owned_struct() {
        for text in [
            r#"{"channel":"a.b","data":{"x":1},"idempotency_key":"k"}"#,
            r#"{"channel":"a\u002eb","data":[],"idempotency_key":"\u006b"}"#,
            r#"{"channel":1,"data":{}}"#,
            r#"{"channel":"a","data":{},"idempotency_key":5}"#,
            r#"{"channel":"a"}"#,
            r#"{"channel":"a","data":{},"more":1}"#,
        ] {
            let owned = serde_json::from_str::<PublishInput>(text);
            match (owned, parse_publish_ref(text)) {
                (Ok(o), Ok(b)) => {
                    assert_eq!(o.channel, b.channel);
                    assert_eq!(o.data.get(), b.data.get());
                    assert_eq!(o.idempotency_key.as_deref(), b.idempotency_key.as_deref());
                }
                (Err(o), Err(b)) => assert_eq!(
                    format!("invalid publication: {}", without_position(&o)),
                    b.message,
                    "{text}"
                ),
                (o, b) => panic!("{text}: {o:?} vs {b:?}"),
            }
        }
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
        // An array is named as one, not by its first element (serde reads a struct from an
        // array too: `[]` was "invalid length 0", `[1]` "invalid type: integer `1`…").
        for text in ["[]", "[1, 2]", r#"[{"channel":"a","data":{}}]"#] {
            assert_eq!(
                parse_publish(text).unwrap_err().message,
                format!("invalid publication: expected {PUBLICATION_OBJECT}, got an array"),
                "{text}"
            );
        }
    }
}
