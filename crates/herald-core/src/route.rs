//! The allowlist between an event bus and the channel registry: routes.
//!
//! A bus source (NATS JetStream, Redis Streams, RabbitMQ) hands every message to
//! [`Routes::route`] with its *subject* (the NATS subject, the AMQP routing key, the Redis
//! entry's subject field) and its bytes. The first route whose `match` pattern fits the subject
//! names the channel; a message that fits no route is not published (the allowlist: only what
//! a route names ever reaches a browser). The same code serves the three buses, so a route
//! means the same thing whichever bus it is written under.
//!
//! A pattern is dot-separated tokens, in the NATS / AMQP topic style: a literal, `*` (any one
//! token), `{name}` (any one token, captured as the channel parameter `name`), `>` (one or
//! more trailing tokens, NATS) or `#` (zero or more trailing tokens, AMQP); the last two only
//! at the end. Parameters may also come from the message: `params = { userId = "/user/id" }`
//! takes them from JSON pointers (RFC 6901) into the message. The payload published is the
//! message, or the value at `payload = "/pointer"`, kept byte for byte (numbers are not
//! rounded, key order is kept): the gateway vouches for a payload, it does not rewrite it.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::name::{Pattern, is_valid_segment};
use crate::registry::Registry;

/// One `[[source.<bus>.route]]` table as written in `herald.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The subject pattern (`orders.{orderId}.>`): see the module docs.
    #[serde(rename = "match")]
    pub pattern: String,
    /// The channel: an exact registered name or a template whose `{param}`s are filled from
    /// the pattern's captures and `params` (`orders.{orderId}`).
    pub channel: String,
    /// Channel parameters taken from the message: name → JSON pointer (`"/customer/id"`).
    /// The value must be a string or a number.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// A JSON pointer to the part of the message to publish; the whole message by default.
    #[serde(default)]
    pub payload: Option<String>,
}

/// One token of a subject pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// `*`.
    Any,
    /// `{name}`.
    Capture(String),
    /// `>`: one or more tokens, last only.
    Rest,
    /// `#`: zero or more tokens, last only.
    Tail,
}

/// Where a channel parameter's value comes from.
#[derive(Debug, Clone)]
enum ParamSource {
    /// The subject token captured by `{name}`.
    Capture,
    /// A JSON pointer into the message.
    Pointer(String),
}

/// One compiled route.
#[derive(Debug, Clone)]
struct Route {
    tokens: Vec<Token>,
    channel: Pattern,
    params: Vec<(String, ParamSource)>,
    payload: Option<String>,
}

/// A source's compiled allowlist, in the order written (the first match wins).
#[derive(Debug, Clone, Default)]
pub struct Routes(Vec<Route>);

/// Where a routed message goes.
#[derive(Debug, Clone)]
pub struct Routed<'a> {
    /// The route's position in the allowlist (0-based).
    pub route: usize,
    /// The concrete channel name.
    pub channel: String,
    /// The payload to publish: the message or the part a pointer named, its bytes unchanged.
    pub data: &'a RawValue,
}

/// Why a message that matched a route cannot be published: the dead-letter reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unroutable(pub String);

impl Routes {
    /// Compiles a source's routes against the registry. Problems are returned as
    /// `(field, message)` pairs with the field relative to the source (`route.0.channel`).
    pub fn compile(
        configs: &[RouteConfig],
        registry: &Registry,
    ) -> Result<Routes, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut routes = Vec::new();
        for (i, cfg) in configs.iter().enumerate() {
            let mut problem = |field: &str, message: String| {
                problems.push((format!("route.{i}.{field}"), message));
            };
            let tokens = match parse_pattern(&cfg.pattern) {
                Ok(t) => t,
                Err(e) => {
                    problem("match", e);
                    continue;
                }
            };
            let channel = match Pattern::parse(&cfg.channel) {
                Ok(p) => p,
                Err(e) => {
                    problem("channel", e.to_string());
                    continue;
                }
            };
            if !registry
                .descriptors()
                .iter()
                .any(|d| d.pattern.overlaps(&channel))
            {
                problem(
                    "channel",
                    format!("no [[channel]] matches {:?}", cfg.channel),
                );
            }
            let captures: Vec<&str> = tokens
                .iter()
                .filter_map(|t| match t {
                    Token::Capture(c) => Some(c.as_str()),
                    _ => None,
                })
                .collect();
            let mut params = Vec::new();
            for name in channel.params() {
                let from_subject = captures.contains(&name);
                match (from_subject, cfg.params.get(name)) {
                    (true, Some(_)) => problem(
                        "params",
                        format!("{name:?} is both captured from the subject and set in params"),
                    ),
                    (true, None) => params.push((name.to_owned(), ParamSource::Capture)),
                    (false, Some(ptr)) => {
                        params.push((name.to_owned(), ParamSource::Pointer(ptr.clone())))
                    }
                    (false, None) => problem(
                        "channel",
                        format!(
                            "parameter {name:?} has no value: capture it in match ({{{name}}}) or set params.{name}"
                        ),
                    ),
                }
            }
            for (name, ptr) in &cfg.params {
                if !channel.params().any(|p| p == name) {
                    problem(
                        "params",
                        format!(
                            "{name:?} is not a parameter of the channel {:?}",
                            cfg.channel
                        ),
                    );
                }
                if !is_pointer(ptr) {
                    problem(
                        &format!("params.{name}"),
                        format!("{ptr:?} is not a JSON pointer (\"\" or \"/a/b\")"),
                    );
                }
            }
            if let Some(ptr) = &cfg.payload
                && !is_pointer(ptr)
            {
                problem(
                    "payload",
                    format!("{ptr:?} is not a JSON pointer (\"\" or \"/a/b\")"),
                );
            }
            routes.push(Route {
                tokens,
                channel,
                params,
                payload: cfg.payload.clone(),
            });
        }
        if problems.is_empty() {
            Ok(Routes(routes))
        } else {
            Err(problems)
        }
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty allowlist (every message is unrouted).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Routes one message. `Ok(None)`: no route matches `subject` (count it, publish nothing).
    /// `Err`: a route matched but the message cannot become a publication (not JSON, a
    /// parameter or the payload missing, a parameter that is not a channel segment): the
    /// reason goes to the dead-letter destination.
    pub fn route<'a>(
        &self,
        subject: &str,
        message: &'a [u8],
    ) -> Result<Option<Routed<'a>>, Unroutable> {
        let parts: Vec<&str> = subject.split('.').collect();
        let Some((index, route, captured)) = self
            .0
            .iter()
            .enumerate()
            .find_map(|(i, r)| matches(&r.tokens, &parts).map(|c| (i, r, c)))
        else {
            return Ok(None);
        };
        let raw: &RawValue = serde_json::from_slice(message)
            .map_err(|e| Unroutable(format!("the message is not JSON: {e}")))?;
        let mut values: Vec<(&str, String)> = Vec::with_capacity(route.params.len());
        for (name, from) in &route.params {
            let value = match from {
                ParamSource::Capture => captured
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| (*v).to_owned())
                    .expect("compile checked every capture"),
                ParamSource::Pointer(ptr) => {
                    let at = pointer(raw, ptr).ok_or_else(|| {
                        Unroutable(format!("parameter {name:?}: nothing at {ptr:?}"))
                    })?;
                    scalar(at).ok_or_else(|| {
                        Unroutable(format!(
                            "parameter {name:?}: the value at {ptr:?} is not a string or a number"
                        ))
                    })?
                }
            };
            if !is_valid_segment(&value) {
                return Err(Unroutable(format!(
                    "parameter {name:?}: {value:?} is not a channel name segment ([A-Za-z0-9_-]+)"
                )));
            }
            values.push((name.as_str(), value));
        }
        let pairs: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let channel = route.channel.instantiate(&pairs).ok_or_else(|| {
            Unroutable(format!(
                "channel {:?}: the name would be too long",
                route.channel.as_str()
            ))
        })?;
        let data = match &route.payload {
            None => raw,
            Some(ptr) => pointer(raw, ptr)
                .ok_or_else(|| Unroutable(format!("payload: nothing at {ptr:?}")))?,
        };
        Ok(Some(Routed {
            route: index,
            channel,
            data,
        }))
    }
}

fn parse_pattern(pattern: &str) -> Result<Vec<Token>, String> {
    if pattern.is_empty() {
        return Err("must not be empty".into());
    }
    let parts: Vec<&str> = pattern.split('.').collect();
    let mut tokens = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let token = match *part {
            "" => return Err("empty token (two dots, or a dot at an end)".into()),
            "*" => Token::Any,
            ">" | "#" if !last => return Err(format!("{part:?} may only be the last token")),
            ">" => Token::Rest,
            "#" => Token::Tail,
            p => match p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(name)
                    if !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
                {
                    if tokens.contains(&Token::Capture(name.to_owned())) {
                        return Err(format!("{{{name}}} is captured twice"));
                    }
                    Token::Capture(name.to_owned())
                }
                Some(_) => return Err(format!("bad capture {p:?}")),
                None if p.contains(['*', '>', '#', '{', '}']) => {
                    return Err(format!("{p:?}: a wildcard must be a whole token"));
                }
                None => Token::Literal(p.to_owned()),
            },
        };
        tokens.push(token);
    }
    Ok(tokens)
}

/// Matches subject tokens against a pattern; the captures on success.
fn matches<'s>(tokens: &[Token], parts: &[&'s str]) -> Option<Vec<(String, &'s str)>> {
    let mut captured = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        match token {
            Token::Rest => return (parts.len() > i).then_some(captured),
            Token::Tail => return Some(captured),
            _ => {}
        }
        let part = *parts.get(i)?;
        match token {
            Token::Literal(l) if l != part => return None,
            Token::Capture(name) => captured.push((name.clone(), part)),
            _ => {}
        }
    }
    (parts.len() == tokens.len()).then_some(captured)
}

fn is_pointer(p: &str) -> bool {
    p.is_empty() || p.starts_with('/')
}

/// RFC 6901 over the raw message: each step parses only the container it walks through, so
/// the value found keeps its bytes.
fn pointer<'a>(raw: &'a RawValue, ptr: &str) -> Option<&'a RawValue> {
    if ptr.is_empty() {
        return Some(raw);
    }
    let mut at = raw;
    for token in ptr.strip_prefix('/')?.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        at = match at.get().trim_start().as_bytes().first()? {
            b'{' => {
                let object: BTreeMap<String, &'a RawValue> = serde_json::from_str(at.get()).ok()?;
                *object.get(&token)?
            }
            b'[' => {
                let array: Vec<&'a RawValue> = serde_json::from_str(at.get()).ok()?;
                // RFC 6901: an index is `0` or digits without a leading zero.
                if token.len() > 1 && token.starts_with('0') {
                    return None;
                }
                *array.get(token.parse::<usize>().ok()?)?
            }
            _ => return None,
        };
    }
    Some(at)
}

/// A parameter's text: a JSON string's content, or a number as written.
fn scalar(raw: &RawValue) -> Option<String> {
    let text = raw.get().trim();
    match text.as_bytes().first()? {
        b'"' => serde_json::from_str::<String>(text).ok(),
        b'-' | b'0'..=b'9' => Some(text.to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn registry() -> std::sync::Arc<Registry> {
        let toml = r#"
            [auth]
            hs256_secret = "s"
            [[channel]]
            name = "orders.{orderId}"
            scope = "public"
            schema = { type = "object" }
            [[channel]]
            name = "notifications.user.{userId}"
            scope = "user"
            schema = { type = "object" }
            [[channel]]
            name = "ops.alerts"
            scope = "public"
            schema = { type = "object" }
        "#;
        Config::from_toml_str(toml, Path::new("."))
            .unwrap()
            .registry
    }

    fn route(pattern: &str, channel: &str) -> RouteConfig {
        RouteConfig {
            pattern: pattern.into(),
            channel: channel.into(),
            params: BTreeMap::new(),
            payload: None,
        }
    }

    fn compile(configs: &[RouteConfig]) -> Routes {
        Routes::compile(configs, &registry()).unwrap()
    }

    #[test]
    fn params_come_from_the_subject_and_the_message() {
        let mut by_user = route("orders.*.paid", "notifications.user.{userId}");
        by_user
            .params
            .insert("userId".into(), "/customer/id".into());
        by_user.payload = Some("/event".into());
        let routes = compile(&[
            route("orders.{orderId}.created", "orders.{orderId}"),
            by_user,
        ]);

        let r = routes
            .route("orders.42.created", br#"{"total": 1.10}"#)
            .unwrap()
            .unwrap();
        assert_eq!((r.route, r.channel.as_str()), (0, "orders.42"));
        assert_eq!(r.data.get(), r#"{"total": 1.10}"#, "bytes kept as sent");

        let msg = br#"{"customer":{"id":"alice"},"event":{"text":"paid", "n": 1e400}}"#;
        let r = routes.route("orders.42.paid", msg).unwrap().unwrap();
        assert_eq!(
            (r.route, r.channel.as_str()),
            (1, "notifications.user.alice")
        );
        assert_eq!(r.data.get(), r#"{"text":"paid", "n": 1e400}"#);

        // A number is a parameter too, written as sent.
        let r = routes
            .route("orders.1.paid", br#"{"customer":{"id":7},"event":{}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(r.channel, "notifications.user.7");
    }

    #[test]
    fn first_match_wins_and_unmatched_is_none() {
        let routes = compile(&[
            route("orders.{orderId}.audit", "ops.alerts"),
            route("orders.{orderId}.>", "orders.{orderId}"),
        ]);
        let first = routes.route("orders.1.audit", b"{}").unwrap().unwrap();
        assert_eq!((first.route, first.channel.as_str()), (0, "ops.alerts"));
        let second = routes.route("orders.1.audit.x", b"{}").unwrap().unwrap();
        assert_eq!((second.route, second.channel.as_str()), (1, "orders.1"));
        assert!(routes.route("payments.1.audit", b"{}").unwrap().is_none());
    }

    #[test]
    fn wildcards() {
        let routes = compile(&[
            route("a.>", "ops.alerts"),
            route("b.#", "ops.alerts"),
            route("c.*.d", "ops.alerts"),
        ]);
        let hit = |s: &str| routes.route(s, b"{}").unwrap().map(|r| r.route);
        assert_eq!(hit("a.x"), Some(0));
        assert_eq!(hit("a.x.y"), Some(0));
        assert_eq!(hit("a"), None, "`>` needs at least one token");
        assert_eq!(hit("b"), Some(1), "`#` takes zero tokens");
        assert_eq!(hit("b.x.y"), Some(1));
        assert_eq!(hit("c.x.d"), Some(2));
        assert_eq!(hit("c.x.y.d"), None);
        assert_eq!(hit("c.x"), None);
        assert_eq!(hit("z"), None);
    }

    #[test]
    fn unmatched_messages_are_not_even_parsed() {
        let routes = compile(&[route("a", "ops.alerts")]);
        assert!(routes.route("b", b"not json").unwrap().is_none());
        let e = routes.route("a", b"not json").unwrap_err();
        assert!(e.0.starts_with("the message is not JSON"), "{e}");
    }

    #[test]
    fn bad_messages_say_why() {
        let mut by_user = route("u", "notifications.user.{userId}");
        by_user.params.insert("userId".into(), "/user".into());
        let mut payload = route("p", "ops.alerts");
        payload.payload = Some("/items/1".into());
        let routes = compile(&[by_user, payload, route("o.{orderId}", "orders.{orderId}")]);
        let why = |s: &str, m: &[u8]| routes.route(s, m).unwrap_err().0;
        assert_eq!(why("u", b"{}"), r#"parameter "userId": nothing at "/user""#);
        assert_eq!(
            why("u", br#"{"user":{"a":1}}"#),
            r#"parameter "userId": the value at "/user" is not a string or a number"#
        );
        assert!(why("u", br#"{"user":"a b"}"#).contains("not a channel name segment"));
        assert_eq!(
            why("p", br#"{"items":[1]}"#),
            r#"payload: nothing at "/items/1""#
        );
        assert_eq!(
            routes
                .route("p", br#"{"items":[1, {"x" : 2}]}"#)
                .unwrap()
                .unwrap()
                .data
                .get(),
            r#"{"x" : 2}"#
        );
        // A subject token that is no channel segment (NATS allows `@`).
        assert!(why("o.a@b", b"{}").contains("not a channel name segment"));
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        let raw: &RawValue =
            serde_json::from_str(r#"{"a/b":{"m~n":[10,20]},"":1,"01":2}"#).unwrap();
        assert_eq!(pointer(raw, "/a~1b/m~0n/1").unwrap().get(), "20");
        assert_eq!(pointer(raw, "/").unwrap().get(), "1");
        assert!(pointer(raw, "/a~1b/m~0n/01").is_none(), "no leading zeros");
        assert_eq!(
            pointer(raw, "/01").unwrap().get(),
            "2",
            "object keys are keys"
        );
        assert_eq!(pointer(raw, "").unwrap().get(), raw.get());
    }

    #[test]
    fn compile_names_each_problem() {
        let mut both = route("o.{orderId}", "orders.{orderId}");
        both.params.insert("orderId".into(), "/id".into());
        let mut stray = route("x", "ops.alerts");
        stray.params.insert("nope".into(), "id".into());
        let problems = Routes::compile(
            &[
                route("a.>.b", "ops.alerts"),
                route("a", "unknown.channel"),
                route("a", "orders.{orderId}"),
                both,
                stray,
                route("a.b*", "ops.alerts"),
            ],
            &registry(),
        )
        .unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "route.0.match",
                "route.1.channel",
                "route.2.channel",
                "route.3.params",
                "route.4.params",
                "route.4.params.nope",
                "route.5.match",
            ],
            "{problems:?}"
        );
    }
}
