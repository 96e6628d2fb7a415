//! RPC methods: `[[rpc]]` tables, each a method name the client may call with an `rpc` frame,
//! the `[[proxy]]` that answers it, and JSON Schemas for its request and response data.
//!
//! Like channels, methods are part of the contract: a client's `data` is validated against the
//! request schema before the backend sees it, and the backend's answer against the response
//! schema before the client does (codegen types both).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::config::{Problems, ProxyConfig};
use crate::registry::compile_schema;

/// A `[[rpc]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcConfig {
    /// The method name clients call (`rpc` frame `method`), e.g. `room.invite`.
    pub method: String,
    /// The `[[proxy]]` the call is forwarded to.
    pub proxy: String,
    /// JSON Schema of the call's `data` (inline), or `request_file`.
    #[serde(default)]
    pub request: Option<Value>,
    #[serde(default)]
    pub request_file: Option<PathBuf>,
    /// JSON Schema of the answer's `data` (inline), or `response_file`.
    #[serde(default)]
    pub response: Option<Value>,
    #[serde(default)]
    pub response_file: Option<PathBuf>,
}

/// One validated RPC method.
#[derive(Debug)]
pub struct RpcMethod {
    /// The method name.
    pub method: String,
    /// The proxy that answers it.
    pub proxy: String,
    /// The request schema as written (codegen).
    pub request_schema: Value,
    /// The response schema as written (codegen).
    pub response_schema: Value,
    request: jsonschema::Validator,
    response: jsonschema::Validator,
}

impl RpcMethod {
    /// Checks a call's `data`: `Err((pointer, message))` on the first violation (values masked).
    pub fn validate_request(&self, data: &Value) -> Result<(), (String, String)> {
        check(&self.request, data)
    }

    /// Checks the backend's answer `data`.
    pub fn validate_response(&self, data: &Value) -> Result<(), (String, String)> {
        check(&self.response, data)
    }
}

fn check(v: &jsonschema::Validator, data: &Value) -> Result<(), (String, String)> {
    v.validate(data).map_err(|e| {
        (
            e.instance_path().as_str().to_owned(),
            e.masked().to_string(),
        )
    })
}

/// The methods of a config, validated; problems name `rpc #<n> "<method>"`.
pub(crate) fn build(
    configs: &[RpcConfig],
    proxies: &[ProxyConfig],
    base: &Path,
    problems: &mut Problems,
) -> Arc<Vec<RpcMethod>> {
    let mut methods = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let label = Some(format!("rpc #{} {:?}", i + 1, c.method));
        let before = problems.0.len();
        if c.method.is_empty()
            || !c
                .method
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            problems.push(label.clone(), "method", "must be non-empty [A-Za-z0-9._-]");
        }
        if configs[..i].iter().any(|o| o.method == c.method) {
            problems.push(label.clone(), "method", "duplicate method: declared twice");
        }
        if !proxies.iter().any(|p| p.name == c.proxy) {
            problems.push(
                label.clone(),
                "proxy",
                format!("no [[proxy]] is named {:?}", c.proxy),
            );
        }
        let request = schema(
            &c.request,
            &c.request_file,
            "request",
            base,
            &label,
            problems,
        );
        let response = schema(
            &c.response,
            &c.response_file,
            "response",
            base,
            &label,
            problems,
        );
        let (Some((rq, rqv)), Some((rs, rsv))) = (request, response) else {
            continue;
        };
        if problems.0.len() == before {
            methods.push(RpcMethod {
                method: c.method.clone(),
                proxy: c.proxy.clone(),
                request_schema: rq,
                response_schema: rs,
                request: rqv,
                response: rsv,
            });
        }
    }
    Arc::new(methods)
}

/// An inline schema or one read from a file (relative to the config), compiled.
fn schema(
    inline: &Option<Value>,
    file: &Option<PathBuf>,
    field: &str,
    base: &Path,
    label: &Option<String>,
    problems: &mut Problems,
) -> Option<(Value, jsonschema::Validator)> {
    let value = match (inline, file) {
        (Some(_), Some(_)) => {
            problems.push(
                label.clone(),
                field,
                format!("set {field} or {field}_file, not both"),
            );
            return None;
        }
        (None, None) => {
            problems.push(
                label.clone(),
                field,
                format!(
                    "every method needs a {field} JSON Schema ({field} = {{…}} or {field}_file)"
                ),
            );
            return None;
        }
        (Some(v), None) => v.clone(),
        (None, Some(f)) => {
            let path = base.join(f);
            let read = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()));
            match read {
                Ok(v) => v,
                Err(e) => {
                    problems.push(
                        label.clone(),
                        &format!("{field}_file"),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    return None;
                }
            }
        }
    };
    let validator = compile_schema(&value, field, label, problems)?;
    Some((value, validator))
}
