//! `herald check --against`: what a registry change does to the clients and backends already
//! running against the old one.
//!
//! Channels are matched by name. For each, every change is classified:
//! - the payload schema, in each direction that is live: **server→client** (every channel: a
//!   subscriber built from the old schema must accept what the new one allows, so new ⊆ old)
//!   and **client→server** (channels clients publish on, before and after: the gateway must
//!   keep accepting what old clients send, so old ⊆ new). The set question is
//!   the `subset` module's, which answers with a checked counterexample or says it cannot decide;
//! - the descriptor: a removed channel, a narrowed subscribe or publish scope, a template whose
//!   placeholders moved, lost history, presence or auto-subscription break someone; the reverse
//!   changes are listed as compatible.
//!
//! Pointers are JSON pointers into the channel's descriptor (`/scope`, `/schema/properties/…`;
//! a `$ref` is followed in place). Nothing here reads files: the caller loads both configs.

use std::collections::BTreeMap;

use herald_core::registry::{Descriptor, Registry, Scope};
use serde::Serialize;
use serde_json::Value;

use crate::subset::{Prover, Sub, escape};

/// How a change lands on the running clients and backends, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Nobody built against the old registry is broken by it.
    Compatible,
    /// The check cannot tell (see the reason); a person has to.
    CannotDecide,
    /// Someone built against the old registry breaks; the reason says who and how.
    Breaking,
}

/// Who a change reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Affects {
    /// Clients receiving the channel (server→client payloads, subscribe rules).
    Subscribers,
    /// Clients publishing on the channel (client→server payloads, publish rules).
    Publishers,
    /// Both, e.g. a removed channel.
    Everyone,
}

/// One classified change.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// What the change does to those built against the old registry.
    pub status: Status,
    /// Who it reaches.
    pub affects: Affects,
    /// JSON pointer into the channel descriptor (`/schema/required`, `/scope`, …).
    pub pointer: String,
    /// Why, in words: what was allowed before and is not now (or the reverse).
    pub reason: String,
    /// For a breaking schema change: a payload one side accepts and the other rejects,
    /// checked with the gateway's own validator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example: Option<Value>,
}

/// Every change of one channel (matched by name; a removed channel has the old name).
#[derive(Debug, Clone, Serialize)]
pub struct ChannelReport {
    /// The channel name as declared (`notifications.user.{userId}`).
    pub channel: String,
    /// The worst of `changes`.
    pub status: Status,
    /// Every change found on the channel, breaking or not.
    pub changes: Vec<Change>,
}

/// The whole comparison; channels without changes are left out.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The worst of all channels (`compatible` when nothing changed).
    pub status: Status,
    /// The channels that changed, old names first (removed or changed), then new ones.
    pub channels: Vec<ChannelReport>,
}

/// Compares the registry a deployment runs (`old`) with the one about to replace it (`new`).
pub fn compare(old: &Registry, new: &Registry) -> Report {
    let by_name = |r: &Registry| -> BTreeMap<String, usize> {
        r.descriptors()
            .iter()
            .enumerate()
            .map(|(i, d)| (d.pattern.as_str().to_owned(), i))
            .collect()
    };
    let (old_names, new_names) = (by_name(old), by_name(new));
    let mut channels = Vec::new();
    for (name, &i) in &old_names {
        let o = &old.descriptors()[i];
        let changes = match new_names.get(name) {
            Some(&j) => descriptor_changes(o, &new.descriptors()[j]),
            None => vec![removed(o, new)],
        };
        if !changes.is_empty() {
            channels.push(report(name, changes));
        }
    }
    for (name, &j) in &new_names {
        let n = &new.descriptors()[j];
        let replaces = old
            .descriptors()
            .iter()
            .any(|o| !new_names.contains_key(o.pattern.as_str()) && skeleton(o) == skeleton(n));
        if !old_names.contains_key(name) && !replaces {
            channels.push(report(
                name,
                vec![change(
                    Status::Compatible,
                    Affects::Everyone,
                    "/name",
                    "new channel",
                )],
            ));
        }
    }
    let status = channels
        .iter()
        .map(|c| c.status)
        .max()
        .unwrap_or(Status::Compatible);
    Report { status, channels }
}

fn report(name: &str, changes: Vec<Change>) -> ChannelReport {
    ChannelReport {
        channel: name.to_owned(),
        status: changes
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Compatible),
        changes,
    }
}

fn change(status: Status, affects: Affects, pointer: &str, reason: impl Into<String>) -> Change {
    Change {
        status,
        affects,
        pointer: pointer.to_owned(),
        reason: reason.into(),
        example: None,
    }
}

/// A template's literal segments with the placeholders blanked: two names with the same
/// skeleton match exactly the same concrete channels.
fn skeleton(d: &Descriptor) -> Vec<Option<String>> {
    d.pattern
        .as_str()
        .split('.')
        .map(|s| (!s.starts_with('{')).then(|| s.to_owned()))
        .collect()
}

/// A channel missing from the new registry: renamed placeholders (same concrete names), or
/// really gone.
fn removed(o: &Descriptor, new: &Registry) -> Change {
    if let Some(n) = new
        .descriptors()
        .iter()
        .find(|n| skeleton(n) == skeleton(o))
    {
        return change(
            Status::Compatible,
            Affects::Everyone,
            "/name",
            format!(
                "renamed to {:?}: only placeholder names changed, so every concrete channel \
                 name stays the same (code that fills the template by placeholder name must \
                 follow)",
                n.pattern.as_str()
            ),
        );
    }
    let literal: Vec<&str> = o
        .pattern
        .as_str()
        .split('.')
        .filter(|s| !s.starts_with('{'))
        .collect();
    let moved = new.descriptors().iter().find(|n| {
        o.pattern.is_template()
            && n.pattern
                .as_str()
                .split('.')
                .filter(|s| !s.starts_with('{'))
                .eq(literal.iter().copied())
    });
    let reason = match moved {
        Some(n) => format!(
            "the template's parameters changed ({:?} → {:?}): the names clients use no longer \
             match",
            o.pattern.as_str(),
            n.pattern.as_str()
        ),
        None => "channel removed: subscribers and publishers of it are refused".to_owned(),
    };
    change(Status::Breaking, Affects::Everyone, "/name", reason)
}

fn descriptor_changes(o: &Descriptor, n: &Descriptor) -> Vec<Change> {
    let mut out = Vec::new();
    if let Some(c) = scope_change(&o.scope, &n.scope, "/scope", Affects::Subscribers) {
        out.push(c);
    }
    if o.user_param != n.user_param && (o.scope == Scope::User || n.scope == Scope::User) {
        out.push(change(
            Status::Breaking,
            Affects::Everyone,
            "/user_param",
            format!(
                "the placeholder holding the owner's user id changed from {:?} to {:?}: other \
                 users own the same channel names now",
                o.user_param, n.user_param
            ),
        ));
    }
    match (&o.publish, &n.publish) {
        (None, None) => {}
        (Some(_), None) => out.push(change(
            Status::Breaking,
            Affects::Publishers,
            "/publish",
            "clients may no longer publish on this channel",
        )),
        (None, Some(_)) => out.push(change(
            Status::Compatible,
            Affects::Publishers,
            "/publish",
            "clients may now publish on this channel",
        )),
        (Some(os), Some(ns)) => {
            out.extend(scope_change(os, ns, "/publish", Affects::Publishers));
        }
    }
    flag(
        &mut out,
        o.auto_subscribe,
        n.auto_subscribe,
        "/auto_subscribe",
        "connections are no longer subscribed at connect: clients that never subscribe \
         explicitly stop receiving it",
        "connections are now subscribed at connect",
    );
    flag(
        &mut out,
        o.presence,
        n.presence,
        "/presence",
        "presence is off: presence requests are refused and join/leave events stop",
        "presence is now on",
    );
    match (o.history, n.history) {
        (Some(_), None) => out.push(change(
            Status::Breaking,
            Affects::Subscribers,
            "/history",
            "history is off: reconnecting clients can no longer recover missed publications, \
             and the history API refuses the channel",
        )),
        (None, Some(_)) => out.push(change(
            Status::Compatible,
            Affects::Subscribers,
            "/history",
            "history is now kept",
        )),
        (Some(a), Some(b)) if a != b => out.push(change(
            Status::Compatible,
            Affects::Subscribers,
            "/history",
            format!(
                "history changed (size {} → {}, ttl {:?} → {:?}): recovery covers a different \
                 window; clients already handle a gap by refetching",
                a.size, b.size, a.ttl, b.ttl
            ),
        )),
        _ => {}
    }
    if o.schema != n.schema {
        out.extend(schema_changes(o, n));
    }
    out
}

fn flag(out: &mut Vec<Change>, old: bool, new: bool, pointer: &str, off: &str, on: &str) {
    match (old, new) {
        (true, false) => out.push(change(Status::Breaking, Affects::Subscribers, pointer, off)),
        (false, true) => out.push(change(
            Status::Compatible,
            Affects::Subscribers,
            pointer,
            on,
        )),
        _ => {}
    }
}

/// How wide a scope is: `a` admits every identity `b` admits.
fn admits_all_of(a: &Scope, b: &Scope) -> bool {
    match (a, b) {
        (Scope::Public, _) => true,
        (Scope::Authenticated, s) => *s != Scope::Public,
        (x, y) => x == y,
    }
}

fn scope_change(o: &Scope, n: &Scope, pointer: &str, affects: Affects) -> Option<Change> {
    if o == n {
        return None;
    }
    let show = |s: &Scope| match s {
        Scope::Role(r) => format!("role {r:?}"),
        Scope::Proxy(p) => format!("proxy {p:?}"),
        other => format!("{other:?}").to_lowercase(),
    };
    let (status, what) = if admits_all_of(n, o) {
        (Status::Compatible, "widened")
    } else if admits_all_of(o, n) {
        (Status::Breaking, "narrowed")
    } else {
        (Status::Breaking, "changed")
    };
    let tail = if status == Status::Breaking {
        ": identities the old scope admitted are refused"
    } else {
        ": more identities are admitted"
    };
    Some(change(
        status,
        affects,
        pointer,
        format!("{what} from {} to {}{tail}", show(o), show(n)),
    ))
}

fn schema_changes(o: &Descriptor, n: &Descriptor) -> Vec<Change> {
    let mut out = Vec::new();
    let to_subscribers = Prover::new(&n.schema, &o.schema, "the new schema", "the old schema");
    out.push(classify(
        to_subscribers.check(),
        Affects::Subscribers,
        "subscribers built from the old schema may be sent payloads it rejects",
        o,
        n,
    ));
    if o.publish.is_some() && n.publish.is_some() {
        let from_publishers = Prover::new(&o.schema, &n.schema, "the old schema", "the new schema");
        out.push(classify(
            from_publishers.check(),
            Affects::Publishers,
            "payloads clients built from the old schema send may be refused",
            o,
            n,
        ));
    }
    // One compatible line per schema change is enough.
    if out.iter().all(|c| c.status == Status::Compatible) {
        out.truncate(1);
        out[0].affects = if o.publish.is_some() && n.publish.is_some() {
            Affects::Everyone
        } else {
            Affects::Subscribers
        };
    }
    out
}

fn classify(sub: Sub, affects: Affects, harm: &str, o: &Descriptor, n: &Descriptor) -> Change {
    match sub {
        Sub::Yes => Change {
            status: Status::Compatible,
            affects,
            pointer: format!("/schema{}", first_difference(&o.schema, &n.schema)),
            reason: "the schema changed; every payload stays acceptable in the directions the \
                     channel is used"
                .into(),
            example: None,
        },
        Sub::No(f) => Change {
            status: Status::Breaking,
            affects,
            pointer: format!("/schema{}", f.pointer),
            reason: format!("{harm}: {}", f.reason),
            example: f.example,
        },
        Sub::Unknown(f) => Change {
            status: Status::CannotDecide,
            affects,
            pointer: format!("/schema{}", f.pointer),
            reason: format!("cannot decide whether {harm}: {}", f.reason),
            example: None,
        },
    }
}

/// The pointer of the first place two JSON values differ (`""` for the whole value).
fn first_difference(a: &Value, b: &Value) -> String {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) if p == q => {}
                    (Some(p), Some(q)) => {
                        return format!("/{}{}", escape(k), first_difference(p, q));
                    }
                    _ => return format!("/{}", escape(k)),
                }
            }
            String::new()
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .position(|(p, q)| p != q)
            .map(|i| format!("/{i}{}", first_difference(&x[i], &y[i])))
            .unwrap_or_default(),
        _ => String::new(),
    }
}
