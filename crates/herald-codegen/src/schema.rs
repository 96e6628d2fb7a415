//! JSON Schema → TypeScript type expressions.
//!
//! A type is never narrower than its schema (that would make `tsc` reject valid payloads), so
//! keywords with no TypeScript counterpart (`minLength`, `pattern`, `not`, …) are ignored and
//! anything not understood is `unknown`. Objects without `additionalProperties: false` keep an
//! index signature, as the schema allows extra fields.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

const MAX_DEPTH: usize = 64;

/// Translates one channel schema; local `$defs` / `definitions` become named types.
pub struct Emitter<'a> {
    root_name: String,
    root: &'a Value,
    used: &'a mut HashSet<String>,
    refs: HashMap<String, String>,
    defs: Vec<(String, String)>,
}

impl<'a> Emitter<'a> {
    pub fn new(root_name: &str, root: &'a Value, used: &'a mut HashSet<String>) -> Self {
        Self {
            root_name: root_name.to_owned(),
            root,
            used,
            refs: HashMap::new(),
            defs: Vec::new(),
        }
    }

    /// The root schema's type expression; named definitions are kept for [`Self::take_defs`].
    pub fn root(&mut self) -> String {
        let root = self.root;
        let mut found = Vec::new();
        for section in ["$defs", "definitions"] {
            if let Some(Value::Object(defs)) = root.get(section) {
                for (name, schema) in defs {
                    let mut ty = format!("{}{}", self.root_name, to_pascal_case(name));
                    let base = ty.clone();
                    let mut n = 2;
                    while self.used.contains(&ty) {
                        ty = format!("{base}{n}");
                        n += 1;
                    }
                    self.used.insert(ty.clone());
                    self.refs
                        .insert(format!("#/{section}/{}", escape_pointer(name)), ty.clone());
                    found.push((ty, schema));
                }
            }
        }
        for (name, schema) in found {
            let body = self.ty(schema, 0);
            self.defs.push((name, body));
        }
        self.ty(root, 0)
    }

    pub fn take_defs(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.defs)
    }

    fn ty(&mut self, schema: &Value, depth: usize) -> String {
        if depth > MAX_DEPTH {
            return "unknown".into();
        }
        let obj = match schema {
            Value::Bool(true) => return "unknown".into(),
            Value::Bool(false) => return "never".into(),
            Value::Object(o) => o,
            _ => return "unknown".into(),
        };
        if let Some(Value::String(r)) = obj.get("$ref") {
            if r == "#" {
                return self.root_name.clone();
            }
            return self
                .refs
                .get(r)
                .cloned()
                .unwrap_or_else(|| "unknown".into());
        }
        if let Some(c) = obj.get("const") {
            return literal(c);
        }
        let mut parts: Vec<String> = Vec::new();
        if let Some(Value::Array(values)) = obj.get("enum") {
            parts.push(union(values.iter().map(literal).collect()));
        } else if let Some(base) = self.base(obj, depth) {
            parts.push(base);
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(Value::Array(branches)) = obj.get(key) {
                let branches: Vec<String> =
                    branches.iter().map(|b| self.ty(b, depth + 1)).collect();
                if branches.iter().any(|b| b == "unknown") {
                    continue; // one branch admits anything: the union says nothing
                }
                // A bare `type: object` next to object branches adds nothing but noise.
                if parts.len() == 1 && is_bare_object(obj) {
                    parts.clear();
                }
                parts.push(union(branches));
            }
        }
        if let Some(Value::Array(all)) = obj.get("allOf") {
            for s in all {
                let t = self.ty(s, depth + 1);
                if t != "unknown" {
                    parts.push(t);
                }
            }
        }
        let mut ty = match parts.len() {
            0 => "unknown".to_owned(),
            1 => parts.pop().unwrap_or_default(),
            _ => parts
                .iter()
                .map(|p| paren(p))
                .collect::<Vec<_>>()
                .join(" & "),
        };
        if obj.get("nullable") == Some(&Value::Bool(true)) && ty != "unknown" {
            ty = union(vec![ty, "null".into()]);
        }
        ty
    }

    /// The type named by `type` (or implied by object/array keywords), if any.
    fn base(&mut self, obj: &Map<String, Value>, depth: usize) -> Option<String> {
        match obj.get("type") {
            Some(Value::String(t)) => Some(self.simple(t, obj, depth)),
            Some(Value::Array(ts)) => Some(union(
                ts.iter()
                    .filter_map(Value::as_str)
                    .map(|t| self.simple(t, obj, depth))
                    .collect(),
            )),
            _ if ["properties", "additionalProperties", "required"]
                .iter()
                .any(|k| obj.contains_key(*k)) =>
            {
                Some(self.object(obj, depth))
            }
            _ if obj.contains_key("items") || obj.contains_key("prefixItems") => {
                Some(self.array(obj, depth))
            }
            _ => None,
        }
    }

    fn simple(&mut self, t: &str, obj: &Map<String, Value>, depth: usize) -> String {
        match t {
            "string" => "string".into(),
            "number" | "integer" => "number".into(),
            "boolean" => "boolean".into(),
            "null" => "null".into(),
            "array" => self.array(obj, depth),
            "object" => self.object(obj, depth),
            _ => "unknown".into(),
        }
    }

    fn array(&mut self, obj: &Map<String, Value>, depth: usize) -> String {
        let tuple = match (obj.get("prefixItems"), obj.get("items")) {
            (Some(Value::Array(p)), rest) => Some((p, rest)),
            (None, Some(Value::Array(p))) => Some((p, obj.get("additionalItems"))),
            _ => None,
        };
        if let Some((prefix, rest)) = tuple {
            let mut items: Vec<String> = prefix.iter().map(|s| self.ty(s, depth + 1)).collect();
            let min = obj.get("minItems").and_then(Value::as_u64).unwrap_or(0) as usize;
            for (i, item) in items.iter_mut().enumerate() {
                if i >= min {
                    item.push('?');
                }
            }
            match rest {
                Some(Value::Bool(false)) => {}
                Some(s @ Value::Object(_)) => {
                    let t = self.ty(s, depth + 1);
                    items.push(format!("...{}", array_of(&t)));
                }
                _ => items.push("...unknown[]".into()),
            }
            return format!("[{}]", items.join(", "));
        }
        let item = match obj.get("items") {
            Some(s) => self.ty(s, depth + 1),
            None => "unknown".into(),
        };
        array_of(&item)
    }

    fn object(&mut self, obj: &Map<String, Value>, depth: usize) -> String {
        let required: HashSet<&str> = obj
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut members = Vec::new();
        let mut declared = HashSet::new();
        if let Some(Value::Object(props)) = obj.get("properties") {
            for (name, schema) in props {
                declared.insert(name.as_str());
                let t = self.ty(schema, depth + 1);
                let opt = if required.contains(name.as_str()) {
                    ""
                } else {
                    "?"
                };
                members.push(format!("{}{opt}: {t}", property_key(name)));
            }
        }
        // Required names without a property schema still must be present.
        let mut extra: Vec<&&str> = required
            .iter()
            .filter(|r| !declared.contains(**r))
            .collect();
        extra.sort();
        for name in extra {
            members.push(format!("{}: unknown", property_key(name)));
        }
        let closed = obj.get("additionalProperties") == Some(&Value::Bool(false))
            || obj.get("unevaluatedProperties") == Some(&Value::Bool(false));
        if !closed {
            let index = match obj.get("additionalProperties") {
                // An index signature must admit every declared property's type.
                Some(s @ Value::Object(_))
                    if members.is_empty() && !obj.contains_key("patternProperties") =>
                {
                    self.ty(s, depth + 1)
                }
                _ => "unknown".into(),
            };
            members.push(format!("[key: string]: {index}"));
        }
        if members.is_empty() {
            "Record<string, never>".into()
        } else {
            format!("{{ {} }}", members.join("; "))
        }
    }
}

/// `user-id.v2` → `UserIdV2`.
pub fn to_pascal_case(s: &str) -> String {
    s.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut cs = w.chars();
            match cs.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + cs.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// A JSON value as a TypeScript literal type (JSON literals are valid TS type syntax).
fn literal(v: &Value) -> String {
    match v {
        Value::Object(_) | Value::Array(_) => {
            serde_json::to_string(v).unwrap_or_else(|_| "unknown".into())
        }
        _ => v.to_string(),
    }
}

fn union(mut types: Vec<String>) -> String {
    let mut seen = HashSet::new();
    types.retain(|t| seen.insert(t.clone()));
    match types.len() {
        0 => "never".into(),
        1 => types.pop().unwrap_or_default(),
        _ => types.join(" | "),
    }
}

fn array_of(t: &str) -> String {
    if t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        format!("{t}[]")
    } else {
        format!("Array<{t}>")
    }
}

fn paren(t: &str) -> String {
    if t.contains(" | ") && !t.starts_with('{') {
        format!("({t})")
    } else if t.contains(" | ") {
        // An object literal whose members contain unions: only top-level `|` matters.
        if top_level_union(t) {
            format!("({t})")
        } else {
            t.to_owned()
        }
    } else {
        t.to_owned()
    }
}

fn top_level_union(t: &str) -> bool {
    let mut depth = 0i32;
    let bytes = t.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'{' | b'[' | b'(' | b'<' => depth += 1,
            b'}' | b']' | b')' | b'>' => depth -= 1,
            b'|' if depth == 0 && i > 0 && bytes[i - 1] == b' ' => return true,
            _ => {}
        }
    }
    false
}

fn is_bare_object(obj: &Map<String, Value>) -> bool {
    obj.get("type") == Some(&Value::String("object".into()))
        && !obj.contains_key("properties")
        && !obj.contains_key("additionalProperties")
}

/// Quotes a string as a TypeScript string literal.
pub fn quote(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

fn property_key(name: &str) -> String {
    let mut chars = name.chars();
    let ident = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if ident { name.to_owned() } else { quote(name) }
}

fn escape_pointer(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ts(schema: Value) -> String {
        let mut used = HashSet::new();
        Emitter::new("T", &schema, &mut used).root()
    }

    fn with_defs(schema: Value) -> (String, Vec<(String, String)>) {
        let mut used = HashSet::new();
        let mut e = Emitter::new("T", &schema, &mut used);
        let root = e.root();
        (root, e.take_defs())
    }

    #[test]
    fn scalars() {
        assert_eq!(ts(json!({"type": "string"})), "string");
        assert_eq!(ts(json!({"type": "integer"})), "number");
        assert_eq!(ts(json!({"type": "boolean"})), "boolean");
        assert_eq!(ts(json!({"type": "null"})), "null");
        assert_eq!(ts(json!({})), "unknown");
        assert_eq!(ts(json!(true)), "unknown");
        assert_eq!(ts(json!(false)), "never");
    }

    #[test]
    fn objects_with_required_optional_and_additional_properties() {
        assert_eq!(
            ts(
                json!({"type": "object", "required": ["id"], "additionalProperties": false,
                      "properties": {"id": {"type": "string"}, "n": {"type": "number"}}})
            ),
            "{ id: string; n?: number }"
        );
        assert_eq!(
            ts(json!({"type": "object", "properties": {"id": {"type": "string"}}})),
            "{ id?: string; [key: string]: unknown }"
        );
        assert_eq!(
            ts(json!({"type": "object", "additionalProperties": {"type": "number"}})),
            "{ [key: string]: number }"
        );
        assert_eq!(
            ts(json!({"type": "object", "additionalProperties": false})),
            "Record<string, never>"
        );
        assert_eq!(
            ts(
                json!({"required": ["a b"], "additionalProperties": false, "properties": {"a b": {}}})
            ),
            "{ \"a b\": unknown }"
        );
    }

    #[test]
    fn enums_consts_and_nullable() {
        assert_eq!(
            ts(json!({"enum": ["mention", "reply", 3, null]})),
            "\"mention\" | \"reply\" | 3 | null"
        );
        assert_eq!(ts(json!({"const": "x"})), "\"x\"");
        assert_eq!(ts(json!({"type": ["string", "null"]})), "string | null");
        assert_eq!(
            ts(json!({"type": "string", "nullable": true})),
            "string | null"
        );
    }

    #[test]
    fn arrays_and_tuples() {
        assert_eq!(
            ts(json!({"type": "array", "items": {"type": "string"}})),
            "string[]"
        );
        assert_eq!(
            ts(json!({"type": "array", "items": {"type": ["string", "number"]}})),
            "Array<string | number>"
        );
        assert_eq!(ts(json!({"type": "array"})), "unknown[]");
        assert_eq!(
            ts(
                json!({"type": "array", "prefixItems": [{"type": "number"}, {"type": "string"}],
                      "items": false, "minItems": 2})
            ),
            "[number, string]"
        );
    }

    #[test]
    fn discriminated_unions() {
        let s = json!({
            "type": "object",
            "oneOf": [
                {"type": "object", "required": ["type", "id"], "additionalProperties": false,
                 "properties": {"type": {"const": "created"}, "id": {"type": "string"}}},
                {"type": "object", "required": ["type"], "additionalProperties": false,
                 "properties": {"type": {"const": "deleted"}}}
            ]
        });
        assert_eq!(
            ts(s),
            "{ id: string; type: \"created\" } | { type: \"deleted\" }"
        );
        assert_eq!(
            ts(json!({"anyOf": [{"type": "string"}, {"type": "number"}]})),
            "string | number"
        );
        // A branch that admits anything makes the union say nothing.
        assert_eq!(
            ts(json!({"type": "string", "anyOf": [{"minLength": 1}, {}]})),
            "string"
        );
    }

    #[test]
    fn base_properties_and_union_intersect() {
        assert_eq!(
            ts(
                json!({"type": "object", "required": ["at"], "properties": {"at": {"type": "number"}},
                      "oneOf": [{"required": ["a"], "properties": {"a": {"type": "string"}}},
                                {"required": ["b"], "properties": {"b": {"type": "string"}}}]})
            ),
            "{ at: number; [key: string]: unknown } & ({ a: string; [key: string]: unknown } | { b: string; [key: string]: unknown })"
        );
    }

    #[test]
    fn local_refs_become_named_types() {
        let (root, defs) = with_defs(json!({
            "type": "object",
            "required": ["author"],
            "additionalProperties": false,
            "properties": {"author": {"$ref": "#/$defs/user"}, "other": {"$ref": "other.json"}},
            "$defs": {"user": {"type": "object", "required": ["id"], "additionalProperties": false,
                               "properties": {"id": {"type": "string"}}}}
        }));
        assert_eq!(root, "{ author: TUser; other?: unknown }");
        assert_eq!(
            defs,
            vec![("TUser".to_owned(), "{ id: string }".to_owned())]
        );
    }

    #[test]
    fn pascal_case() {
        assert_eq!(to_pascal_case("blog.article.feed"), "BlogArticleFeed");
        assert_eq!(to_pascal_case("user_id"), "UserId");
        assert_eq!(to_pascal_case("ops-alerts"), "OpsAlerts");
    }
}
