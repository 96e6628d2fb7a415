//! The channel registry: every channel the gateway knows, with its schema and its rules.
//!
//! The registry is the wire contract. A name that matches no descriptor is refused everywhere
//! (there is no wildcard and no broadcast-to-all path), and the builder refuses descriptors
//! that could match the same name, so resolution never depends on declaration order.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::config::{ChannelConfig, HistoryConfig, Problems, channel_label};
use crate::identity::Identity;
use crate::name::{NameError, Params, Pattern, validate_name};

/// Who may subscribe to (or publish on) a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Any connection, anonymous ones included when anonymous connections are enabled.
    Public,
    /// Any connection with a user id.
    Authenticated,
    /// Identities that carry this role.
    Role(String),
    /// Only the user named by the template's user placeholder.
    User,
    /// Whoever presents a subscription token for the exact channel (a JWT with a `channel`
    /// claim, the connection's `sub` and an `exp`), minted by the application's backend. The
    /// token is checked by the session (it is not part of this pure rule), and the
    /// subscription ends when the token expires unless it is refreshed (`sub_refresh`).
    Token,
    /// Decided by the application's backend: the named `[[proxy]]` is asked (a signed POST)
    /// at subscribe time, and its answer may be cached per (user, channel).
    Proxy(String),
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Name(String),
            Role { role: String },
            Proxy { proxy: String },
        }
        match Repr::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected \"public\", \"authenticated\", \"user\", \"token\", { role = \"…\" } \
                 or { proxy = \"…\" }",
            )
        })? {
            Repr::Name(n) => match n.as_str() {
                "public" => Ok(Scope::Public),
                "authenticated" => Ok(Scope::Authenticated),
                "user" => Ok(Scope::User),
                "token" => Ok(Scope::Token),
                other => Err(serde::de::Error::custom(format!(
                    "unknown scope {other:?}: expected \"public\", \"authenticated\", \"user\", \
                     \"token\" or {{ role = \"…\" }}"
                ))),
            },
            Repr::Role { role } if !role.is_empty() => Ok(Scope::Role(role)),
            Repr::Role { .. } => Err(serde::de::Error::custom("role must not be empty")),
            Repr::Proxy { proxy } if !proxy.is_empty() => Ok(Scope::Proxy(proxy)),
            Repr::Proxy { .. } => Err(serde::de::Error::custom("proxy must not be empty")),
        }
    }
}

/// History kept for a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    pub size: usize,
    pub ttl: Duration,
}

impl From<HistoryConfig> for HistoryPolicy {
    fn from(h: HistoryConfig) -> Self {
        Self {
            size: h.size,
            ttl: h.ttl,
        }
    }
}

/// One validated channel descriptor.
#[derive(Debug)]
pub struct Descriptor {
    pub pattern: Pattern,
    pub scope: Scope,
    /// For `scope = "user"` (and user-scoped `publish`): the placeholder holding the user id.
    pub user_param: Option<String>,
    pub auto_subscribe: bool,
    pub publish: Option<Scope>,
    pub history: Option<HistoryPolicy>,
    pub presence: bool,
    /// The JSON Schema as written (used by codegen and docs).
    pub schema: Value,
    /// How the channel's publications are named as Socket.IO events.
    pub socketio_event: SocketIoEvent,
    validator: jsonschema::Validator,
    /// Set when the schema says nothing but which JSON types the payload may have: the
    /// payload is then checked from its first byte, without a `Value`.
    types_only: Option<TypeSet>,
}

/// The JSON types a schema of the form `{"type": …}` (or `{}`/`true`) admits, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TypeSet(u8);

/// Keywords that never change what a schema accepts (JSON Schema 2020-12 core and
/// meta-data vocabularies): a schema with only these and `type` is decided by the type.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
];

impl TypeSet {
    const OBJECT: u8 = 1;
    const ARRAY: u8 = 2;
    const STRING: u8 = 4;
    const NUMBER: u8 = 8;
    const BOOLEAN: u8 = 16;
    const NULL: u8 = 32;
    const ANY: u8 = 63;

    /// The set a schema is reduced to, or `None` when it says more than the type (or says
    /// `integer` without `number`: whether `1.0` is an integer needs the value).
    fn of(schema: &Value) -> Option<Self> {
        let map = match schema {
            Value::Bool(true) => return Some(Self(Self::ANY)),
            Value::Object(map) => map,
            _ => return None,
        };
        if map
            .keys()
            .any(|k| k != "type" && !ANNOTATIONS.contains(&k.as_str()))
        {
            return None;
        }
        let names: Vec<&Value> = match map.get("type") {
            None => return Some(Self(Self::ANY)),
            Some(Value::Array(names)) => names.iter().collect(),
            Some(name) => vec![name],
        };
        let mut bits = 0;
        let mut integer = false;
        for name in names {
            bits |= match name.as_str()? {
                "object" => Self::OBJECT,
                "array" => Self::ARRAY,
                "string" => Self::STRING,
                "number" => Self::NUMBER,
                "boolean" => Self::BOOLEAN,
                "null" => Self::NULL,
                "integer" => {
                    integer = true;
                    0
                }
                _ => return None,
            };
        }
        if integer && bits & Self::NUMBER == 0 {
            return None;
        }
        Some(Self(bits))
    }

    /// Whether valid JSON `text` has one of the types: its first significant byte says which.
    fn admits(self, text: &str) -> bool {
        let kind = match text.trim_start().as_bytes().first() {
            Some(b'{') => Self::OBJECT,
            Some(b'[') => Self::ARRAY,
            Some(b'"') => Self::STRING,
            Some(b't' | b'f') => Self::BOOLEAN,
            Some(b'n') => Self::NULL,
            Some(_) => Self::NUMBER,
            None => return false,
        };
        self.0 & kind != 0
    }
}

/// The Socket.IO event name of a channel's publications (docs/socketio.md).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SocketIoEvent {
    /// The channel's name (`notifications.user.alice`).
    #[default]
    Channel,
    /// One fixed name.
    Fixed(String),
    /// The string at this JSON pointer of the payload; the channel's name when there is none.
    From(String),
}

impl SocketIoEvent {
    /// The event name for one publication on `channel` with payload `data` (any JSON text).
    pub fn name<'a>(&'a self, channel: &'a str, data: &str) -> std::borrow::Cow<'a, str> {
        use std::borrow::Cow;
        match self {
            SocketIoEvent::Channel => Cow::Borrowed(channel),
            SocketIoEvent::Fixed(name) => Cow::Borrowed(name),
            SocketIoEvent::From(pointer) => serde_json::from_str::<Value>(data)
                .ok()
                .and_then(|v| {
                    v.pointer(pointer)
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                // A payload cannot fire the client's own events (`disconnect`, …) or Herald's.
                .filter(|name| !is_reserved_socketio_event(name))
                .map_or(Cow::Borrowed(channel), Cow::Owned),
        }
    }
}

/// Event names Socket.IO clients reserve for themselves, and Herald's own: no channel may
/// deliver under them.
pub const RESERVED_SOCKETIO_EVENTS: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// True for a name no publication may be delivered under: empty, reserved by Socket.IO
/// clients ([`RESERVED_SOCKETIO_EVENTS`]) or Herald's own (`herald:*`).
pub fn is_reserved_socketio_event(name: &str) -> bool {
    name.is_empty() || RESERVED_SOCKETIO_EVENTS.contains(&name) || name.starts_with("herald:")
}

/// A payload that does not satisfy its channel's schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at {pointer:?})")]
pub struct SchemaViolation {
    /// JSON pointer to the failing value inside `data` (`""` is the whole payload).
    pub pointer: String,
    pub message: String,
}

/// Why an identity may not subscribe or publish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

impl Descriptor {
    /// Checks `data` against the channel schema; the first error wins. Values are masked in the
    /// message so payload contents never reach logs.
    pub fn validate(&self, data: &Value) -> Result<(), SchemaViolation> {
        self.validator.validate(data).map_err(|e| SchemaViolation {
            pointer: e.instance_path().as_str().to_owned(),
            message: e.masked().to_string(),
        })
    }

    /// [`Descriptor::validate`] for a payload as JSON text (valid JSON, e.g. what
    /// [`crate::input::accept_raw`] returns). A schema that only names types is decided from
    /// the text's first byte; any other schema, and any payload the shortcut refuses, goes
    /// through the compiled validator on a parsed `Value`, so every answer (and every error
    /// message) is the validator's own.
    pub fn validate_json(&self, text: &str) -> Result<(), SchemaViolation> {
        if self.types_only.is_some_and(|t| t.admits(text)) {
            return Ok(());
        }
        let value: Value = serde_json::from_str(text).map_err(|e| SchemaViolation {
            pointer: String::new(),
            message: format!("not JSON: {e}"),
        })?;
        self.validate(&value)
    }

    /// Gate 2: may `identity` subscribe to the channel these `params` instantiate?
    /// Pure: no I/O, no clock.
    pub fn authorize_subscribe(&self, params: &Params, identity: &Identity) -> Result<(), Denied> {
        self.check_scope(&self.scope, params, identity)
    }

    /// Gate 3 (the authorization half; the schema half is [`Descriptor::validate`]).
    pub fn authorize_publish(&self, params: &Params, identity: &Identity) -> Result<(), Denied> {
        match &self.publish {
            None => Err(Denied(format!(
                "clients may not publish on {}: it is written by the server API only",
                self.pattern
            ))),
            Some(scope) => self.check_scope(scope, params, identity),
        }
    }

    fn check_scope(
        &self,
        scope: &Scope,
        params: &Params,
        identity: &Identity,
    ) -> Result<(), Denied> {
        match scope {
            Scope::Public => Ok(()),
            Scope::Authenticated if identity.user.is_some() => Ok(()),
            Scope::Authenticated => Err(Denied("an authenticated user is required".into())),
            Scope::Role(role) if identity.roles.iter().any(|r| r == role) => Ok(()),
            Scope::Role(role) => Err(Denied(format!("role {role:?} is required"))),
            // Decided by the session with the token the subscribe carries; without one there
            // is nothing that could allow it.
            Scope::Token => Err(Denied(format!(
                "{} needs a subscription token (`token` in subscribe)",
                self.pattern
            ))),
            Scope::Proxy(name) => Err(Denied(format!(
                "{} is decided by the backend (proxy {name:?})",
                self.pattern
            ))),
            Scope::User => {
                let param = self.user_param.as_deref().unwrap_or("userId");
                match (identity.user.as_deref(), params.get(param)) {
                    (Some(me), Some(owner)) if me == owner => Ok(()),
                    _ => Err(Denied("this channel belongs to another user".into())),
                }
            }
        }
    }

    /// For `auto_subscribe` descriptors: the concrete channel of `user`, if the user id can
    /// be a name segment.
    pub fn auto_channel_for(&self, user: &str) -> Option<String> {
        let param = self.user_param.as_deref()?;
        self.pattern.instantiate(&[(param, user)])
    }
}

/// Why a name does not resolve to a descriptor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("invalid channel name: {0}")]
    Invalid(#[from] NameError),
    #[error("unknown channel")]
    Unknown,
}

/// All descriptors, indexed for resolution.
#[derive(Debug, Default)]
pub struct Registry {
    descriptors: Vec<Descriptor>,
    exact: HashMap<String, usize>,
    /// Template descriptors by segment count.
    templates: HashMap<usize, Vec<usize>>,
}

impl Registry {
    pub(crate) fn build(channels: &[ChannelConfig], base: &Path, problems: &mut Problems) -> Self {
        let mut reg = Registry::default();
        for (index, ch) in channels.iter().enumerate() {
            let label = Some(channel_label(index, &ch.name));
            let Some(d) = build_descriptor(ch, base, label.clone(), problems) else {
                continue;
            };
            if let Some(clash) = reg
                .descriptors
                .iter()
                .find(|o| o.pattern.overlaps(&d.pattern))
            {
                let message = if clash.pattern == d.pattern {
                    "duplicate channel: declared twice".to_owned()
                } else {
                    format!(
                        "overlaps channel {:?}: some names would match both",
                        clash.pattern.as_str()
                    )
                };
                problems.push(label, "name", message);
                continue;
            }
            let i = reg.descriptors.len();
            if d.pattern.is_template() {
                reg.templates.entry(d.pattern.len()).or_default().push(i);
            } else {
                reg.exact.insert(d.pattern.as_str().to_owned(), i);
            }
            reg.descriptors.push(d);
        }
        reg
    }

    /// Resolves a concrete name to its descriptor and placeholder values.
    pub fn resolve(&self, name: &str) -> Result<(&Descriptor, Params), ResolveError> {
        validate_name(name)?;
        if let Some(&i) = self.exact.get(name) {
            return Ok((&self.descriptors[i], Params::default()));
        }
        let segments = name.bytes().filter(|b| *b == b'.').count() + 1;
        for &i in self.templates.get(&segments).into_iter().flatten() {
            let d = &self.descriptors[i];
            if let Some(params) = d.pattern.matches(name) {
                return Ok((d, params));
            }
        }
        Err(ResolveError::Unknown)
    }

    pub fn descriptors(&self) -> &[Descriptor] {
        &self.descriptors
    }
}

fn build_descriptor(
    ch: &ChannelConfig,
    base: &Path,
    label: Option<String>,
    problems: &mut Problems,
) -> Option<Descriptor> {
    let before = problems.0.len();
    let pattern = Pattern::parse(&ch.name)
        .map_err(|e| problems.push(label.clone(), "name", e.to_string()))
        .ok();
    let scope = ch.scope.clone().unwrap_or(Scope::Authenticated);

    let needs_user_param = scope == Scope::User || ch.publish == Some(Scope::User);
    let user_param = match (&ch.user_param, &pattern) {
        (Some(p), Some(pat)) if !pat.params().any(|x| x == p) => {
            problems.push(
                label.clone(),
                "user_param",
                format!("the name has no {{{p}}} placeholder"),
            );
            None
        }
        (Some(p), _) => Some(p.clone()),
        (None, Some(pat)) if needs_user_param => {
            if pat.params().any(|x| x == "userId") {
                Some("userId".to_owned())
            } else {
                problems.push(
                    label.clone(),
                    "scope",
                    "scope \"user\" needs a {userId} placeholder in the name (or user_param naming \
                     another one)",
                );
                None
            }
        }
        _ => None,
    };

    // A subscription token says nothing about publishing (`publish = { proxy }` is the
    // publish proxy: the backend decides, and may rewrite).
    if ch.publish == Some(Scope::Token) {
        problems.push(
            label.clone(),
            "publish",
            "publish may be \"public\", \"authenticated\", \"user\", { role = \"…\" } or \
             { proxy = \"…\" }",
        );
    }

    if ch.auto_subscribe {
        if scope != Scope::User {
            problems.push(
                label.clone(),
                "auto_subscribe",
                "only user-scoped templates (scope = \"user\") can be auto-subscribed",
            );
        } else if let Some(pat) = &pattern
            && pat.params().count() != 1
        {
            problems.push(
                label.clone(),
                "auto_subscribe",
                "the template must have exactly one placeholder, the user's",
            );
        }
    }

    if let Some(h) = ch.history {
        if h.size == 0 {
            problems.push(label.clone(), "history.size", "must be greater than 0");
        }
        if h.ttl.is_zero() {
            problems.push(label.clone(), "history.ttl", "must be greater than 0");
        }
    }

    let schema = match (&ch.schema, &ch.schema_file) {
        (Some(_), Some(_)) => {
            problems.push(
                label.clone(),
                "schema",
                "set schema or schema_file, not both",
            );
            None
        }
        (None, None) => {
            problems.push(
                label.clone(),
                "schema",
                "every channel needs a JSON Schema (schema = {…} or schema_file = \"…\")",
            );
            None
        }
        (Some(inline), None) => Some((inline.clone(), "schema")),
        (None, Some(file)) => {
            let path = base.join(file);
            match std::fs::read_to_string(&path) {
                Err(e) => {
                    problems.push(
                        label.clone(),
                        "schema_file",
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
                Ok(text) => match serde_json::from_str::<Value>(&text) {
                    Ok(v) => Some((v, "schema_file")),
                    Err(e) => {
                        problems.push(
                            label.clone(),
                            "schema_file",
                            format!("{} is not valid JSON: {e}", path.display()),
                        );
                        None
                    }
                },
            }
        }
    };
    let socketio_event = match &ch.socketio {
        None => SocketIoEvent::Channel,
        Some(sio) => {
            match (&sio.event, &sio.event_from) {
                (Some(_), Some(_)) => {
                    problems.push(
                        label.clone(),
                        "socketio",
                        "set socketio.event or socketio.event_from, not both",
                    );
                    SocketIoEvent::Channel
                }
                (Some(name), None) => {
                    if is_reserved_socketio_event(name) {
                        problems.push(
                            label.clone(),
                            "socketio.event",
                            format!(
                                "{name:?} is reserved or empty (reserved: {}, herald:*)",
                                RESERVED_SOCKETIO_EVENTS.join(", ")
                            ),
                        );
                    }
                    SocketIoEvent::Fixed(name.clone())
                }
                (None, Some(pointer)) => {
                    if !pointer.starts_with('/') {
                        problems.push(
                        label.clone(),
                        "socketio.event_from",
                        format!("{pointer:?} is not a JSON pointer into the payload (e.g. \"/type\")"),
                    );
                    }
                    SocketIoEvent::From(pointer.clone())
                }
                (None, None) => SocketIoEvent::Channel,
            }
        }
    };
    let compiled = schema.and_then(|(value, field)| {
        compile_schema(&value, field, &label, problems).map(|v| (value, v))
    });

    if problems.0.len() != before {
        return None;
    }
    let (schema, validator) = compiled?;
    let types_only = TypeSet::of(&schema);
    Some(Descriptor {
        pattern: pattern?,
        scope,
        user_param,
        auto_subscribe: ch.auto_subscribe,
        publish: ch.publish.clone(),
        history: ch.history.map(Into::into),
        presence: ch.presence,
        schema,
        socketio_event,
        validator,
        types_only,
    })
}

pub(crate) fn compile_schema(
    value: &Value,
    field: &str,
    label: &Option<String>,
    problems: &mut Problems,
) -> Option<jsonschema::Validator> {
    // Meta-validate first so a typo like `type = "objekt"` names the offending keyword.
    if let Err(e) = jsonschema::meta::validate(value) {
        let at = e
            .instance_path()
            .as_str()
            .trim_start_matches('/')
            .replace('/', ".");
        let field = if at.is_empty() {
            field.to_owned()
        } else {
            format!("{field}.{at}")
        };
        problems.push(label.clone(), &field, format!("invalid JSON Schema: {e}"));
        return None;
    }
    match jsonschema::validator_for(value) {
        Ok(v) => Some(v),
        Err(e) => {
            problems.push(label.clone(), field, format!("invalid JSON Schema: {e}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn registry(channels: &str) -> Result<Registry, crate::config::ConfigError> {
        let toml = format!("[auth]\nhs256_secret = \"s\"\n{channels}");
        Config::from_toml_str(&toml, Path::new("."))
            .map(|c| std::sync::Arc::try_unwrap(c.registry).unwrap())
    }

    const SAMPLE: &str = r#"
        [[channel]]
        name = "blog.article.feed"
        scope = "public"
        schema = { type = "object", required = ["id"], properties = { id = { type = "string" } } }
        [[channel]]
        name = "notifications.user.{userId}"
        scope = "user"
        auto_subscribe = true
        schema = { type = "object" }
        [[channel]]
        name = "ops.alerts"
        scope = { role = "admin" }
        schema = { type = "object" }
        [[channel]]
        name = "chat.room.{roomId}"
        scope = "authenticated"
        publish = "authenticated"
        schema = { type = "object", required = ["text"] }
    "#;

    fn alice() -> Identity {
        Identity::user("alice", vec![])
    }

    #[test]
    fn resolves_exact_and_template_names() {
        let r = registry(SAMPLE).unwrap();
        assert!(r.resolve("blog.article.feed").is_ok());
        let (d, params) = r.resolve("notifications.user.alice").unwrap();
        assert_eq!(d.pattern.as_str(), "notifications.user.{userId}");
        assert_eq!(params.get("userId"), Some("alice"));
        for bad in [
            "notifications.user.alice.x",
            "notifications.user.",
            "notifications.user.{userId}",
            "*",
            ">",
            "",
            "blog.article.feed\0",
            "blog.article",
        ] {
            assert!(r.resolve(bad).is_err(), "{bad:?} must not resolve");
        }
    }

    #[test]
    fn scopes_are_enforced() {
        let r = registry(SAMPLE).unwrap();
        let (d, p) = r.resolve("notifications.user.bob").unwrap();
        assert!(d.authorize_subscribe(&p, &alice()).is_err());
        let (d, p) = r.resolve("notifications.user.alice").unwrap();
        assert!(d.authorize_subscribe(&p, &alice()).is_ok());
        assert!(d.authorize_subscribe(&p, &Identity::anonymous()).is_err());
        let (d, p) = r.resolve("ops.alerts").unwrap();
        assert!(d.authorize_subscribe(&p, &alice()).is_err());
        let admin = Identity::user("root", vec!["admin".into()]);
        assert!(d.authorize_subscribe(&p, &admin).is_ok());
        assert!(
            d.authorize_publish(&p, &admin).is_err(),
            "server-only channel"
        );
        let (d, p) = r.resolve("chat.room.1").unwrap();
        assert!(d.authorize_publish(&p, &alice()).is_ok());
        assert!(d.authorize_publish(&p, &Identity::anonymous()).is_err());
        let (d, p) = r.resolve("blog.article.feed").unwrap();
        assert!(d.authorize_subscribe(&p, &Identity::anonymous()).is_ok());
    }

    #[test]
    fn schema_violations_carry_the_pointer() {
        let r = registry(SAMPLE).unwrap();
        let (d, _) = r.resolve("blog.article.feed").unwrap();
        assert!(d.validate(&serde_json::json!({"id": "1"})).is_ok());
        let v = d.validate(&serde_json::json!({"id": 1})).unwrap_err();
        assert_eq!(v.pointer, "/id");
        assert!(
            !v.message.contains('1') || v.message.contains("value"),
            "{}",
            v.message
        );
    }

    /// The type-only shortcut must answer exactly as the compiled validator does, for every
    /// JSON type against schemas it takes and schemas it must leave to the validator.
    #[test]
    fn validate_json_answers_as_the_validator() {
        let schemas = [
            ("{}", true),
            (r#"{ type = "object" }"#, true),
            (
                r#"{ type = "object", title = "t", description = "d" }"#,
                true,
            ),
            (r#"{ type = ["string", "null"] }"#, true),
            (r#"{ type = ["integer", "number"] }"#, true),
            (r#"{ type = "integer" }"#, false),
            (r#"{ type = "object", required = ["id"] }"#, false),
            (r#"{ type = "array", items = { type = "number" } }"#, false),
        ];
        let payloads = [
            "{}",
            r#"{"id":1}"#,
            "  [1, 2]",
            r#"["x"]"#,
            r#""s""#,
            "1",
            "1.0",
            "-2.5e3",
            "true",
            "false",
            "null",
        ];
        for (schema, shortcut) in schemas {
            let r = registry(&format!(
                "[[channel]]\nname = \"c\"\nscope = \"public\"\nschema = {schema}"
            ))
            .unwrap();
            let (d, _) = r.resolve("c").unwrap();
            assert_eq!(d.types_only.is_some(), shortcut, "{schema}");
            for text in payloads {
                let value: Value = serde_json::from_str(text).unwrap();
                assert_eq!(
                    d.validate_json(text),
                    d.validate(&value),
                    "{schema} on {text}"
                );
            }
        }
    }

    #[test]
    fn duplicates_and_overlaps_are_refused() {
        let err = registry(&format!(
            "{SAMPLE}\n[[channel]]\nname = \"ops.alerts\"\nscope = \"public\"\nschema = {{}}\n\
             [[channel]]\nname = \"chat.{{kind}}.lobby\"\nscope = \"public\"\nschema = {{}}"
        ))
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("channel #5 \"ops.alerts\", field `name`: duplicate"),
            "{text}"
        );
        assert!(
            text.contains("channel #6 \"chat.{kind}.lobby\", field `name`: overlaps"),
            "{text}"
        );
    }

    #[test]
    fn broken_schema_names_the_keyword() {
        let err = registry(
            "[[channel]]\nname = \"a.b\"\nscope = \"public\"\n\
             schema = { type = \"object\", properties = { id = { type = \"strin\" } } }",
        )
        .unwrap_err();
        let p = &err.problems[0];
        assert_eq!(p.channel.as_deref(), Some("channel #1 \"a.b\""));
        assert!(p.field.starts_with("schema.properties.id"), "{p:?}");
    }

    #[test]
    fn user_scope_needs_its_placeholder() {
        let err =
            registry("[[channel]]\nname = \"a.{x}\"\nscope = \"user\"\nschema = {}").unwrap_err();
        assert_eq!(err.problems[0].field, "scope");
        assert!(
            registry(
                "[[channel]]\nname = \"a.{x}\"\nscope = \"user\"\nuser_param = \"x\"\nschema = {}"
            )
            .is_ok()
        );
        let err = registry(
            "[[channel]]\nname = \"a.b\"\nscope = \"public\"\nauto_subscribe = true\nschema = {}",
        )
        .unwrap_err();
        assert_eq!(err.problems[0].field, "auto_subscribe");
    }
}
