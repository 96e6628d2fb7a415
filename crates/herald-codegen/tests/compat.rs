//! `herald check --against` as a table: each row is one registry or schema change, the verdict
//! it must get (breaking for whom, compatible, cannot decide) and the JSON pointer it must name.
//! Every breaking schema verdict must also carry a counterexample that really is accepted by
//! one side and refused by the other (checked here again with the validator).

use std::path::Path;

use herald_codegen::compat::{Affects, Report, Status, compare};
use herald_core::Config;
use serde_json::Value;

fn registry(channels: &str) -> Config {
    let toml = format!("[auth]\nhs256_secret = \"s\"\n{channels}");
    Config::from_toml_str(&toml, Path::new(".")).unwrap_or_else(|e| panic!("{e}\n{toml}"))
}

/// A server→client channel named `c` with this schema.
fn feed(schema: &str) -> String {
    format!("[[channel]]\nname = \"c\"\nscope = \"public\"\nschema = {schema}\n")
}

/// A channel clients publish on (both directions live).
fn chat(schema: &str) -> String {
    format!(
        "[[channel]]\nname = \"c\"\nscope = \"authenticated\"\npublish = \"authenticated\"\nschema = {schema}\n"
    )
}

const OBJ: &str = r#"{ type = "object", required = ["id", "title"], properties = { id = { type = "string" }, title = { type = "string" } } }"#;

struct Row {
    what: &'static str,
    old: String,
    new: String,
    status: Status,
    affects: Option<Affects>,
    pointer: &'static str,
}

fn row(
    what: &'static str,
    old: String,
    new: String,
    status: Status,
    affects: Option<Affects>,
    pointer: &'static str,
) -> Row {
    Row {
        what,
        old,
        new,
        status,
        affects,
        pointer,
    }
}

fn table() -> Vec<Row> {
    use Affects::*;
    use Status::*;
    let union = |branches: &str| format!(r#"{{ oneOf = [{branches}] }}"#);
    let mention = r#"{ type = "object", required = ["type", "text"], properties = { type = { const = "mention" }, text = { type = "string" } } }"#;
    let reply = r#"{ type = "object", required = ["type", "to"], properties = { type = { const = "reply" }, to = { type = "string" } } }"#;
    let digest = r#"{ type = "object", required = ["type", "count"], properties = { type = { const = "digest" }, count = { type = "integer" } } }"#;
    let order = |qty: &str| {
        format!(
            r##"{{ type = "object", required = ["lines"], properties = {{ lines = {{ type = "array", items = {{ "$ref" = "#/$defs/line" }} }} }}, "$defs" = {{ line = {{ type = "object", required = ["qty"], properties = {{ qty = {{ type = "{qty}" }} }} }} }} }}"##
        )
    };
    vec![
        // Registry-level changes.
        row("nothing changed", feed(OBJ), feed(OBJ), Compatible, None, ""),
        row(
            "channel removed",
            feed(OBJ) + &feed(OBJ).replace("\"c\"", "\"d\""),
            feed(OBJ),
            Breaking,
            Some(Everyone),
            "/name",
        ),
        row(
            "channel added",
            feed(OBJ),
            feed(OBJ) + &feed(OBJ).replace("\"c\"", "\"d\""),
            Compatible,
            Some(Everyone),
            "/name",
        ),
        row(
            "template placeholders moved",
            feed(OBJ).replace("\"c\"", "\"chat.room.{roomId}\""),
            feed(OBJ).replace("\"c\"", "\"chat.{org}.room.{roomId}\""),
            Breaking,
            Some(Everyone),
            "/name",
        ),
        row(
            "template placeholder renamed only",
            feed(OBJ).replace("\"c\"", "\"chat.room.{roomId}\""),
            feed(OBJ).replace("\"c\"", "\"chat.room.{id}\""),
            Compatible,
            Some(Everyone),
            "/name",
        ),
        row(
            "scope narrowed public → authenticated",
            feed(OBJ),
            feed(OBJ).replace("\"public\"", "\"authenticated\""),
            Breaking,
            Some(Subscribers),
            "/scope",
        ),
        row(
            "scope widened authenticated → public",
            feed(OBJ).replace("\"public\"", "\"authenticated\""),
            feed(OBJ),
            Compatible,
            Some(Subscribers),
            "/scope",
        ),
        row(
            "scope role changed",
            feed(OBJ).replace("\"public\"", "{ role = \"admin\" }"),
            feed(OBJ).replace("\"public\"", "{ role = \"ops\" }"),
            Breaking,
            Some(Subscribers),
            "/scope",
        ),
        row(
            "client publishing removed",
            chat(OBJ),
            feed(OBJ).replace("\"public\"", "\"authenticated\""),
            Breaking,
            Some(Publishers),
            "/publish",
        ),
        row(
            "client publishing added",
            feed(OBJ),
            feed(OBJ) + "publish = \"authenticated\"\n",
            Compatible,
            Some(Publishers),
            "/publish",
        ),
        row(
            "history removed",
            feed(OBJ) + "history = { size = 10, ttl = \"1m\" }\n",
            feed(OBJ),
            Breaking,
            Some(Subscribers),
            "/history",
        ),
        row(
            "presence removed",
            feed(OBJ) + "presence = true\n",
            feed(OBJ),
            Breaking,
            Some(Subscribers),
            "/presence",
        ),
        row(
            "auto_subscribe removed",
            "[[channel]]\nname = \"n.{userId}\"\nscope = \"user\"\nauto_subscribe = true\nschema = { type = \"object\" }\n".into(),
            "[[channel]]\nname = \"n.{userId}\"\nscope = \"user\"\nschema = { type = \"object\" }\n".into(),
            Breaking,
            Some(Subscribers),
            "/auto_subscribe",
        ),
        // Server→client payloads: new ⊆ old.
        row(
            "required property added (open object)",
            feed(OBJ),
            feed(&OBJ.replace(r#"["id", "title"]"#, r#"["id", "title", "summary"]"#)),
            Compatible,
            Some(Subscribers),
            "/schema/required",
        ),
        row(
            "required property removed",
            feed(OBJ),
            feed(&OBJ.replace(r#"["id", "title"]"#, r#"["id"]"#)),
            Breaking,
            Some(Subscribers),
            "/schema/required",
        ),
        row(
            "type widened to nullable",
            feed(OBJ),
            feed(&OBJ.replace(r#"title = { type = "string" }"#, r#"title = { type = ["string", "null"] }"#)),
            Breaking,
            Some(Subscribers),
            "/schema/properties/title/type",
        ),
        row(
            "type narrowed from nullable",
            feed(&OBJ.replace(r#"title = { type = "string" }"#, r#"title = { type = ["string", "null"] }"#)),
            feed(OBJ),
            Compatible,
            Some(Subscribers),
            "/schema/properties/title/type",
        ),
        row(
            "integer widened to number",
            feed(r#"{ type = "object", properties = { n = { type = "integer" } } }"#),
            feed(r#"{ type = "object", properties = { n = { type = "number" } } }"#),
            Breaking,
            Some(Subscribers),
            "/schema/properties/n/type",
        ),
        row(
            "number narrowed to integer",
            feed(r#"{ type = "object", properties = { n = { type = "number" } } }"#),
            feed(r#"{ type = "object", properties = { n = { type = "integer" } } }"#),
            Compatible,
            Some(Subscribers),
            "/schema/properties/n/type",
        ),
        row(
            "enum value added",
            feed(r#"{ type = "object", properties = { k = { enum = ["a", "b"] } } }"#),
            feed(r#"{ type = "object", properties = { k = { enum = ["a", "b", "c"] } } }"#),
            Breaking,
            Some(Subscribers),
            "/schema/properties/k/enum",
        ),
        row(
            "enum value removed",
            feed(r#"{ type = "object", properties = { k = { enum = ["a", "b"] } } }"#),
            feed(r#"{ type = "object", properties = { k = { enum = ["a"] } } }"#),
            Compatible,
            Some(Subscribers),
            "/schema/properties/k/enum",
        ),
        row(
            "maxLength loosened",
            feed(r#"{ type = "string", maxLength = 10 }"#),
            feed(r#"{ type = "string", maxLength = 20 }"#),
            Breaking,
            Some(Subscribers),
            "/schema/maxLength",
        ),
        row(
            "minimum lowered",
            feed(r#"{ type = "integer", minimum = 1 }"#),
            feed(r#"{ type = "integer", minimum = 0 }"#),
            Breaking,
            Some(Subscribers),
            "/schema/minimum",
        ),
        row(
            "additionalProperties: false added",
            feed(OBJ),
            feed(&OBJ.replace("type = \"object\",", "type = \"object\", additionalProperties = false,")),
            Compatible,
            Some(Subscribers),
            "/schema/additionalProperties",
        ),
        row(
            "additionalProperties: false removed",
            feed(&OBJ.replace("type = \"object\",", "type = \"object\", additionalProperties = false,")),
            feed(OBJ),
            Breaking,
            Some(Subscribers),
            "/schema/additionalProperties",
        ),
        row(
            "property added to a closed object",
            feed(&OBJ.replace("type = \"object\",", "type = \"object\", additionalProperties = false,")),
            feed(
                &OBJ.replace("type = \"object\",", "type = \"object\", additionalProperties = false,")
                    .replace("title = { type = \"string\" }", "title = { type = \"string\" }, tags = { type = \"array\" }"),
            ),
            Breaking,
            Some(Subscribers),
            "/schema/properties/tags",
        ),
        row(
            "pattern added (server side narrows)",
            feed(r#"{ type = "string" }"#),
            feed(r#"{ type = "string", pattern = "^[a-z]+$" }"#),
            Compatible,
            Some(Subscribers),
            "/schema/pattern",
        ),
        row(
            "two different patterns",
            feed(r#"{ type = "string", pattern = "^[a-z]+$" }"#),
            feed(r#"{ type = "string", pattern = "^[a-z0-9]+$" }"#),
            CannotDecide,
            Some(Subscribers),
            "/schema/pattern",
        ),
        row(
            "a `not` that changed",
            feed(r#"{ type = "string", not = { const = "a" } }"#),
            feed(r#"{ type = "string", not = { const = "b" } }"#),
            Breaking,
            Some(Subscribers),
            "/schema/not",
        ),
        row(
            "union branch added",
            feed(&union(&format!("{mention}, {reply}"))),
            feed(&union(&format!("{mention}, {reply}, {digest}"))),
            Breaking,
            Some(Subscribers),
            "/schema/oneOf/2",
        ),
        row(
            "union branch removed",
            feed(&union(&format!("{mention}, {reply}, {digest}"))),
            feed(&union(&format!("{mention}, {reply}"))),
            Compatible,
            Some(Subscribers),
            "/schema/oneOf",
        ),
        row(
            "type changed behind a $ref",
            feed(&order("integer")),
            feed(&order("number")),
            Breaking,
            Some(Subscribers),
            "/schema/properties/lines/items/properties/qty/type",
        ),
        row(
            "schema replaced by `true`",
            feed(OBJ),
            feed("true"),
            Breaking,
            Some(Subscribers),
            "/schema/type",
        ),
        row(
            "oneOf tagged by `required` alone also admits non-objects (not a discriminated union)",
            feed(r#"{ oneOf = [{ required = ["t"], properties = { t = { const = "a" } } }, { required = ["t"], properties = { t = { const = "b" } } }] }"#),
            feed(r#"{ type = "string" }"#),
            Breaking,
            Some(Subscribers),
            "/schema/oneOf",
        ),
        row(
            "draft-07 tuple items",
            feed(r#"{ "$schema" = "http://json-schema.org/draft-07/schema#", type = "array", items = [{ type = "string" }] }"#),
            feed(r#"{ "$schema" = "http://json-schema.org/draft-07/schema#", type = "array", items = [{ type = "integer" }] }"#),
            CannotDecide,
            Some(Subscribers),
            "/schema/items",
        ),
        // Client→server payloads: old ⊆ new as well.
        row(
            "client channel: required property added",
            chat(OBJ),
            chat(&OBJ.replace(r#"["id", "title"]"#, r#"["id", "title", "summary"]"#)),
            Breaking,
            Some(Publishers),
            "/schema/required",
        ),
        row(
            "client channel: maxLength tightened",
            chat(r#"{ type = "string", maxLength = 20 }"#),
            chat(r#"{ type = "string", maxLength = 10 }"#),
            Breaking,
            Some(Publishers),
            "/schema/maxLength",
        ),
        row(
            "client channel: pattern added",
            chat(r#"{ type = "string" }"#),
            chat(r#"{ type = "string", pattern = "^[0-9]+$" }"#),
            Breaking,
            Some(Publishers),
            "/schema/pattern",
        ),
        row(
            "client channel: typed property added to an open object",
            chat(OBJ),
            chat(&OBJ.replace("title = { type = \"string\" }", "title = { type = \"string\" }, mood = { type = \"string\" }")),
            Breaking,
            Some(Publishers),
            "/schema/properties/mood/type",
        ),
        row(
            "client channel: only descriptions changed",
            chat(OBJ),
            chat(&OBJ.replace("id = { type = \"string\" }", "id = { type = \"string\", description = \"the id\" }")),
            Compatible,
            Some(Everyone),
            "/schema/properties/id/description",
        ),
        row(
            "client channel: a oneOf whose branches overlap",
            chat(r#"{ oneOf = [{ type = "string" }, { maxLength = 3 }] }"#),
            chat(r#"{ oneOf = [{ type = "string" }, { maxLength = 4 }] }"#),
            CannotDecide,
            Some(Subscribers),
            "/schema/oneOf/0/oneOf",
        ),
    ]
}

/// The change a row is about: the first one that is not compatible, else the first.
fn main_change(report: &Report) -> Option<&herald_codegen::compat::Change> {
    let changes: Vec<_> = report.channels.iter().flat_map(|c| &c.changes).collect();
    changes
        .iter()
        .find(|c| c.status != Status::Compatible)
        .or(changes.first())
        .copied()
}

#[test]
fn every_change_is_classified_with_its_pointer() {
    let rows = table();
    assert!(rows.len() >= 25, "{} rows", rows.len());
    let mut failures = Vec::new();
    for r in &rows {
        let (old, new) = (registry(&r.old), registry(&r.new));
        let report = compare(&old.registry, &new.registry);
        let got = main_change(&report);
        let ok = report.status == r.status
            && got.map(|c| c.affects) == r.affects
            && got.map_or("", |c| c.pointer.as_str()) == r.pointer;
        if !ok {
            failures.push(format!(
                "{}: expected {:?} {:?} {:?}, got {}",
                r.what,
                r.status,
                r.affects,
                r.pointer,
                serde_json::to_string_pretty(&report).unwrap()
            ));
        }
        // A breaking schema verdict shows a payload; check it is what the verdict says.
        for c in report.channels.iter().flat_map(|c| &c.changes) {
            if c.status == Status::Breaking && c.pointer.starts_with("/schema") {
                let example = c
                    .example
                    .as_ref()
                    .unwrap_or_else(|| panic!("{}: no example", r.what));
                let schema =
                    |cfg: &Config| -> Value { cfg.registry.descriptors()[0].schema.clone() };
                let valid = |s: &Value| jsonschema::validator_for(s).unwrap().is_valid(example);
                let (o, n) = (schema(&old), schema(&new));
                let shown = match c.affects {
                    Affects::Publishers => valid(&o) && !valid(&n),
                    _ => valid(&n) && !valid(&o),
                };
                assert!(
                    shown,
                    "{}: the example {example} does not show the break",
                    r.what
                );
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows wrong:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

/// A change that is compatible in one direction and breaking in the other is reported for the
/// side it breaks, and the channel is breaking.
#[test]
fn both_directions_of_a_client_channel_are_checked() {
    let old = registry(&chat(r#"{ type = "string", maxLength = 20 }"#));
    let new = registry(&chat(r#"{ type = "string", maxLength = 10 }"#));
    let report = compare(&old.registry, &new.registry);
    let changes = &report.channels[0].changes;
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[0].affects, Affects::Subscribers);
    assert_eq!(changes[0].status, Status::Compatible);
    assert_eq!(changes[1].affects, Affects::Publishers);
    assert_eq!(changes[1].status, Status::Breaking);
    assert_eq!(changes[1].example, Some(Value::String("x".repeat(11))));
}
