//! `herald codegen asyncapi`: the registry as an AsyncAPI 3.0 document.
//!
//! The document describes the **gateway** as the application: it *sends* every channel's
//! publications to subscribers (over WebSocket or SSE) and *receives* publications from
//! backends (the server API) and, on channels with `publish`, from clients (gate 3). One
//! channel per descriptor, its address the name as written (template placeholders become
//! channel parameters), one message per channel whose payload is the channel's JSON Schema
//! verbatim. Herald's own rules (subscribe scope, who may publish, history, presence,
//! auto-subscription) have no AsyncAPI keyword and travel in `x-herald` extensions.
//!
//! The payload is wrapped as a multi-format schema (`application/schema+json;version=draft-07`,
//! the JSON Schema dialect AsyncAPI tools understand); its local `$ref`s are rewritten to point
//! at the same place inside the document, so they resolve there exactly as in the registry.

use herald_core::registry::{Descriptor, Registry, Scope};
use serde_json::{Map, Value, json};

/// Renders the AsyncAPI 3.0 document. `host` is where clients reach the gateway
/// (`server.listen` by default); `source` names the config in the description.
pub fn asyncapi(registry: &Registry, source: &str, host: &str) -> Value {
    let names = crate::channel_type_names(registry);
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    for (d, id) in registry.descriptors().iter().zip(&names) {
        let message_ref = json!({ "$ref": format!("#/channels/{id}/messages/{id}") });
        let base = format!("#/components/messages/{id}/payload/schema");
        messages.insert(
            id.clone(),
            json!({
                "name": id,
                "title": d.pattern.as_str(),
                "contentType": "application/json",
                "payload": {
                    "schemaFormat": "application/schema+json;version=draft-07",
                    "schema": rebase_refs(&d.schema, &base),
                },
            }),
        );
        let mut channel = json!({
            "address": d.pattern.as_str(),
            "description": describe(d),
            "servers": [
                { "$ref": "#/servers/websocket" },
                { "$ref": "#/servers/sse" },
                { "$ref": "#/servers/api" },
            ],
            "messages": { id.clone(): { "$ref": format!("#/components/messages/{id}") } },
            "bindings": {
                "ws": {
                    "method": "GET",
                    "query": {
                        "type": "object",
                        "properties": {
                            "token": { "type": "string", "description": "A JWT (browsers cannot set headers on a WebSocket)." }
                        }
                    },
                    "bindingVersion": "0.1.0"
                }
            },
            "x-herald": rules(d),
        });
        let params: Map<String, Value> = d
            .pattern
            .params()
            .map(|p| {
                let what = if d.user_param.as_deref() == Some(p) {
                    "The user id of the channel's owner (one name segment)."
                } else {
                    "One name segment."
                };
                (p.to_owned(), json!({ "description": what }))
            })
            .collect();
        if !params.is_empty() {
            channel["parameters"] = Value::Object(params);
        }
        channels.insert(id.clone(), channel);

        let channel_ref = json!({ "$ref": format!("#/channels/{id}") });
        operations.insert(
            format!("{id}.deliver"),
            json!({
                "action": "send",
                "channel": channel_ref,
                "summary": format!("Delivered to subscribers ({}).", scope_text(&d.scope)),
                "messages": [message_ref],
                "security": [{ "$ref": "#/components/securitySchemes/jwt" }],
            }),
        );
        operations.insert(
            format!("{id}.publish"),
            json!({
                "action": "receive",
                "channel": channel_ref,
                "summary": "Published by backends: POST /v1/publish (validated against the schema).",
                "messages": [message_ref],
                "security": [{ "$ref": "#/components/securitySchemes/apiKey" }],
                "bindings": { "http": { "method": "POST", "bindingVersion": "0.3.0" } },
            }),
        );
        if let Some(scope) = &d.publish {
            operations.insert(
                format!("{id}.clientPublish"),
                json!({
                    "action": "receive",
                    "channel": channel_ref,
                    "summary": format!(
                        "Published by clients ({}), each message checked against the scope and the schema.",
                        scope_text(scope)
                    ),
                    "messages": [message_ref],
                    "security": [{ "$ref": "#/components/securitySchemes/jwt" }],
                }),
            );
        }
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Herald channels",
            "version": "1.0.0",
            "description": format!(
                "Generated by `herald codegen asyncapi` from {source}. Do not edit: change the \
                 channel registry and generate again. The application described is the Herald \
                 gateway: it sends publications to subscribers and receives them from backends \
                 (and from clients where a channel allows it)."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "websocket": {
                "host": host,
                "protocol": "ws",
                "pathname": "/v1/ws",
                "description": "Protocol v1: JSON text frames; subscribe, unsubscribe and publish are frames on one connection.",
                "security": [{ "$ref": "#/components/securitySchemes/jwt" }],
            },
            "sse": {
                "host": host,
                "protocol": "http",
                "pathname": "/v1/sse",
                "description": "Protocol v1 as Server-Sent Events (GET), commands as POST /v1/sse/{session}.",
                "security": [{ "$ref": "#/components/securitySchemes/jwt" }],
                "x-herald-transport": "sse",
            },
            "api": {
                "host": host,
                "protocol": "http",
                "pathname": "/v1/publish",
                "description": "The server API for backends (see the OpenAPI document at /v1/openapi.json).",
                "security": [{ "$ref": "#/components/securitySchemes/apiKey" }],
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "securitySchemes": {
                "jwt": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "Authorization: Bearer <jwt>, ?token=<jwt> or the configured cookie.",
                },
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Authorization: Bearer <api.key>.",
                },
            },
        },
    })
}

/// Every local `$ref` (`#/…`) re-pointed below `base`, where the schema sits in the document.
fn rebase_refs(schema: &Value, base: &str) -> Value {
    match schema {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    ("$ref", Value::String(r)) if r.starts_with('#') => {
                        (k.clone(), Value::String(format!("{base}{}", &r[1..])))
                    }
                    _ => (k.clone(), rebase_refs(v, base)),
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|v| rebase_refs(v, base)).collect()),
        other => other.clone(),
    }
}

fn scope_text(scope: &Scope) -> String {
    match scope {
        Scope::Public => "any connection".into(),
        Scope::Authenticated => "authenticated users".into(),
        Scope::Role(r) => format!("identities with role {r:?}"),
        Scope::User => "only the user the name belongs to".into(),
        Scope::Token => "holders of a subscription token for the channel".into(),
        Scope::Proxy(p) => format!("whoever the backend allows (proxy {p:?})"),
    }
}

fn scope_json(scope: &Scope) -> Value {
    match scope {
        Scope::Role(r) => json!({ "role": r }),
        Scope::Proxy(p) => json!({ "proxy": p }),
        other => json!(format!("{other:?}").to_lowercase()),
    }
}

fn describe(d: &Descriptor) -> String {
    let mut s = format!("Subscribe: {}.", scope_text(&d.scope));
    match &d.publish {
        Some(p) => s.push_str(&format!(" Clients may publish: {}.", scope_text(p))),
        None => s.push_str(" Only backends publish (server API, event sources)."),
    }
    if d.auto_subscribe {
        s.push_str(" Every connection of the user is subscribed at connect.");
    }
    s
}

fn rules(d: &Descriptor) -> Value {
    json!({
        "scope": scope_json(&d.scope),
        "user_param": d.user_param,
        "publish": d.publish.as_ref().map(scope_json),
        "auto_subscribe": d.auto_subscribe,
        "presence": d.presence,
        "history": d.history.map(|h| json!({ "size": h.size, "ttl_ms": h.ttl.as_millis() as u64 })),
    })
}
