//! "Is every payload schema A allows also allowed by schema B?", answered soundly or not at all.
//!
//! The compatibility check ([`crate::compat`]) reduces every schema question to this one: for
//! server→client payloads A is the new schema and B the old one (old clients must accept what
//! the new server sends), for client→server payloads A is the old schema and B the new one (the
//! gateway must keep accepting what old clients send).
//!
//! Three answers, each one honest:
//! - [`Sub::Yes`] only from rules that are proofs: a keyword that only A carries makes A
//!   smaller; bounds, required lists, types and property maps are compared exactly; enums are
//!   decided value by value with the real validator.
//! - [`Sub::No`] only with a **counterexample**: a whole payload that the `jsonschema` crate
//!   (the validator the gateway itself runs) accepts under A's root schema and rejects under
//!   B's. The structural walk only proposes candidates; a candidate that does not check out is
//!   discarded, so a "breaking" verdict can never be a guess.
//! - [`Sub::Unknown`] otherwise ("cannot decide"): two different `pattern`s, `not`,
//!   `patternProperties`, a `oneOf` whose branches may overlap, remote `$ref`s, recursion past
//!   a depth bound.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// One answer, with where and why when it is not a plain yes.
#[derive(Debug, Clone)]
pub(crate) enum Sub {
    Yes,
    No(Finding),
    Unknown(Finding),
}

/// Where a schema question was lost or undecided, why, and (for `No`) the payload that shows it.
#[derive(Debug, Clone)]
pub(crate) struct Finding {
    /// JSON pointer into the schema, `$ref`s followed in place (`/properties/lines/items/…`).
    pub pointer: String,
    pub reason: String,
    /// A payload A accepts and B rejects (only for `No`).
    pub example: Option<Value>,
}

/// Keywords with no effect on which payloads are valid.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "examples",
    "default",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$defs",
    "definitions",
    "$schema",
    "contentMediaType",
    "contentEncoding",
    "contentSchema",
];

/// Keywords that add a constraint independent of every other keyword (the instance must also
/// satisfy it). The walk does not reason about them: present only in A they only make A
/// smaller, so they are ignored; in B they must appear identically in A, or the answer is
/// "cannot decide" unless a counterexample checks out.
const OPAQUE: &[&str] = &[
    "pattern",
    "format",
    "multipleOf",
    "minProperties",
    "maxProperties",
    "propertyNames",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "contains",
    "minContains",
    "maxContains",
    "not",
    "if",
    "then",
    "else",
];

/// Keywords that change what other keywords mean (`patternProperties` decides which names
/// `additionalProperties` covers, …): on either side, only an identical schema is decided.
const ENTANGLED: &[&str] = &[
    "patternProperties",
    "prefixItems",
    "additionalItems",
    "unevaluatedProperties",
    "unevaluatedItems",
    "$dynamicRef",
    "$recursiveRef",
    "$id",
    "$anchor",
    "$dynamicAnchor",
];

const TYPES: &[&str] = &[
    "null", "boolean", "object", "array", "number", "integer", "string",
];

/// Past this nesting (recursive `$ref`s included) the answer is "cannot decide".
const MAX_DEPTH: usize = 48;

type Embed<'e> = &'e dyn Fn(Value) -> Option<Value>;

/// The two root schemas of one question, their validators and how the report names them.
pub(crate) struct Prover<'s> {
    a_root: &'s Value,
    b_root: &'s Value,
    a_full: Option<jsonschema::Validator>,
    b_full: Option<jsonschema::Validator>,
    /// "the new schema" / "the old schema", in reasons.
    a_name: &'s str,
    b_name: &'s str,
}

impl<'s> Prover<'s> {
    pub(crate) fn new(a: &'s Value, b: &'s Value, a_name: &'s str, b_name: &'s str) -> Self {
        Self {
            a_root: a,
            b_root: b,
            a_full: jsonschema::validator_for(a).ok(),
            b_full: jsonschema::validator_for(b).ok(),
            a_name,
            b_name,
        }
    }

    /// Does every payload valid under A's root validate under B's root?
    pub(crate) fn check(&self) -> Sub {
        let embed = |v: Value| Some(v);
        self.subset(self.a_root, self.b_root, "", &embed, 0)
    }

    /// The first candidate (placed in a whole payload by `embed`) that A accepts and B rejects.
    fn witness(&self, candidates: Vec<Value>, embed: Embed<'_>) -> Option<Value> {
        let (a, b) = (self.a_full.as_ref()?, self.b_full.as_ref()?);
        candidates
            .into_iter()
            .filter_map(embed)
            .find(|root| a.is_valid(root) && !b.is_valid(root))
    }

    /// `No` if a candidate checks out, else `Unknown` with the same reason.
    fn refute(
        &self,
        pointer: String,
        reason: String,
        candidates: Vec<Value>,
        embed: Embed<'_>,
    ) -> Sub {
        match self.witness(candidates, embed) {
            Some(example) => Sub::No(Finding {
                pointer,
                reason,
                example: Some(example),
            }),
            None => Sub::Unknown(Finding {
                pointer,
                reason: format!("{reason}, but no payload showing it could be confirmed"),
                example: None,
            }),
        }
    }

    fn unknown(pointer: String, reason: impl Into<String>) -> Sub {
        Sub::Unknown(Finding {
            pointer,
            reason: reason.into(),
            example: None,
        })
    }

    fn subset(&self, a: &Value, b: &Value, at: &str, embed: Embed<'_>, depth: usize) -> Sub {
        if depth > MAX_DEPTH {
            return Self::unknown(at.into(), "the schemas nest too deeply (recursive $ref?)");
        }
        let a = match resolve(self.a_root, a) {
            Ok(a) => normalize(a),
            Err(why) => return Self::unknown(at.into(), why),
        };
        let b = match resolve(self.b_root, b) {
            Ok(b) => normalize(b),
            Err(why) => return Self::unknown(at.into(), why),
        };
        // `false` as A allows nothing; an unconstrained B allows everything.
        if a.is_none() || b.as_ref().is_some_and(|b| constraints(b).next().is_none()) {
            return Sub::Yes;
        }
        let a = a.unwrap_or_default();
        let Some(b) = b else {
            return self.refute(
                at.into(),
                format!("{} allows no payload here", self.b_name),
                samples(self.a_root, &a),
                embed,
            );
        };
        if a == b && !contains_ref(&Value::Object(a.clone())) {
            return Sub::Yes;
        }

        // A union in A: every branch must fit (sufficient whatever the siblings are).
        for kw in ["anyOf", "oneOf"] {
            if let Some(branches) = a.get(kw).and_then(Value::as_array) {
                let siblings = without(&a, kw);
                let mut verdicts = Vec::new();
                for (i, branch) in branches.iter().enumerate() {
                    let merged = merge(&siblings, branch, self.a_root);
                    let at = format!("{at}/{kw}/{i}");
                    verdicts.push(self.subset(
                        &merged,
                        &Value::Object(b.clone()),
                        &at,
                        embed,
                        depth + 1,
                    ));
                }
                return all(verdicts);
            }
        }
        // `allOf` in A: one merged schema when the parts do not overlap, else any one part.
        if let Some(parts) = a.get("allOf").and_then(Value::as_array) {
            let mut merged = Value::Object(without(&a, "allOf"));
            let mut clean = true;
            for p in parts {
                match merge_strict(&merged, p, self.a_root) {
                    Some(m) => merged = m,
                    None => clean = false,
                }
            }
            if clean {
                return self.subset(&merged, &Value::Object(b.clone()), at, embed, depth + 1);
            }
            for p in parts {
                if let Sub::Yes = self.subset(p, &Value::Object(b.clone()), at, embed, depth + 1) {
                    return Sub::Yes;
                }
            }
            return Self::unknown(
                format!("{at}/allOf"),
                "allOf parts that overlap are not compared",
            );
        }

        // `allOf` in B: A must fit every part and the rest of B.
        if let Some(parts) = b.get("allOf").and_then(Value::as_array) {
            let a_val = Value::Object(a.clone());
            let mut verdicts = vec![self.subset(
                &a_val,
                &Value::Object(without(&b, "allOf")),
                at,
                embed,
                depth + 1,
            )];
            for (i, p) in parts.iter().enumerate() {
                verdicts.push(self.subset(&a_val, p, &format!("{at}/allOf/{i}"), embed, depth + 1));
            }
            return all(verdicts);
        }
        // A union in B: A must fit one branch. `oneOf` only when its branches cannot overlap.
        for kw in ["anyOf", "oneOf"] {
            if let Some(branches) = b.get(kw).and_then(Value::as_array) {
                if kw == "oneOf" && !disjoint(branches, &without(&b, kw), self.b_root) {
                    if let Some(example) = self.witness(samples(self.a_root, &a), embed) {
                        return Sub::No(Finding {
                            pointer: format!("{at}/oneOf"),
                            reason: format!(
                                "{} rejects a payload {} allows",
                                self.b_name, self.a_name
                            ),
                            example: Some(example),
                        });
                    }
                    return Self::unknown(
                        format!("{at}/oneOf"),
                        "a oneOf whose branches may overlap is not compared",
                    );
                }
                let siblings = without(&b, kw);
                let a_val = Value::Object(a.clone());
                let mut found = None;
                for branch in branches {
                    let merged = merge(&siblings, branch, self.b_root);
                    match self.subset(&a_val, &merged, at, embed, depth + 1) {
                        Sub::Yes => return Sub::Yes,
                        Sub::No(f) => found = found.or(f.example),
                        Sub::Unknown(_) => {}
                    }
                }
                // A branch's counterexample is checked against the whole of B, so it shows
                // that no branch takes it.
                return match found {
                    Some(example) => Sub::No(Finding {
                        pointer: at.to_owned(),
                        reason: format!(
                            "no branch of {}'s {kw} accepts every payload {} allows",
                            self.b_name, self.a_name
                        ),
                        example: Some(example),
                    }),
                    None => Self::unknown(
                        at.to_owned(),
                        format!(
                            "no branch of {}'s {kw} provably accepts every payload {} allows",
                            self.b_name, self.a_name
                        ),
                    ),
                };
            }
        }

        for kw in ENTANGLED {
            if a.contains_key(*kw) || b.contains_key(*kw) {
                return Self::unknown(format!("{at}/{kw}"), format!("`{kw}` is not compared"));
            }
        }
        let mut verdicts = Vec::new();
        for kw in OPAQUE {
            // Equal text is equal meaning only without `$ref`s: they resolve in different roots.
            if let Some(bv) = b.get(*kw)
                && (a.get(*kw) != Some(bv) || contains_ref(bv))
            {
                let reason = match (*kw, a.get(*kw)) {
                    ("pattern", Some(_)) => "the two patterns differ; whether one admits more strings than the other is not decided".to_owned(),
                    (kw, Some(_)) => format!("`{kw}` differs between the schemas"),
                    (kw, None) => format!("{} adds `{kw}`", self.b_name),
                };
                // The values the keywords name are the likeliest payloads on the edge.
                let mut candidates = samples(self.a_root, &a);
                candidates.extend(mentioned(bv));
                candidates.extend(a.get(*kw).map(mentioned).unwrap_or_default());
                verdicts.push(self.refute(format!("{at}/{kw}"), reason, candidates, embed));
            }
        }
        if !verdicts.is_empty() {
            return all(verdicts);
        }

        // A finite A is decided value by value.
        if let Some(values) = finite_values(&a) {
            return self.finite(&a, &b, values, at, embed);
        }
        if let Some(kw) = ["const", "enum"].into_iter().find(|k| b.contains_key(*k)) {
            return self.refute(
                format!("{at}/{kw}"),
                format!(
                    "{} allows only listed values here, {} does not",
                    self.b_name, self.a_name
                ),
                samples(self.a_root, &a),
                embed,
            );
        }

        let ta = types_of(&a);
        let tb = types_of(&b);
        for t in &ta {
            let covered = tb.contains(t) || (*t == "integer" && tb.contains("number"));
            if covered {
                verdicts.push(self.by_type(t, &a, &b, at, embed, depth));
            } else if *t == "number" && tb.contains("integer") {
                verdicts.push(self.refute(
                    format!("{at}/type"),
                    format!(
                        "{} allows any number here, {} only integers",
                        self.a_name, self.b_name
                    ),
                    vec![json!(0.5), json!(1.5)],
                    embed,
                ));
            } else if !(*t == "integer" && ta.contains("number")) {
                verdicts.push(self.refute(
                    format!("{at}/type"),
                    format!(
                        "{} allows type {t} here, {} does not",
                        self.a_name, self.b_name
                    ),
                    example_typed(self.a_root, &a, t, 0).into_iter().collect(),
                    embed,
                ));
            }
        }
        all(verdicts)
    }

    fn finite(
        &self,
        a: &Map<String, Value>,
        b: &Map<String, Value>,
        values: Vec<Value>,
        at: &str,
        embed: Embed<'_>,
    ) -> Sub {
        let (Some(va), Some(vb)) = (
            local_validator(self.a_root, a),
            local_validator(self.b_root, b),
        ) else {
            return Self::unknown(
                at.into(),
                "the values could not be checked here (a $ref outside $defs)",
            );
        };
        let kw = if a.contains_key("const") {
            "const"
        } else if a.contains_key("enum") {
            "enum"
        } else {
            "type"
        };
        let lost: Vec<Value> = values
            .into_iter()
            .filter(|v| va.is_valid(v) && !vb.is_valid(v))
            .collect();
        if lost.is_empty() {
            return Sub::Yes;
        }
        let shown: Vec<String> = lost.iter().map(Value::to_string).collect();
        self.refute(
            format!("{at}/{kw}"),
            format!(
                "{} allows {} here, {} does not",
                self.a_name,
                shown.join(", "),
                self.b_name
            ),
            lost,
            embed,
        )
    }

    /// The keywords of one instance type, with both schemas allowing the type.
    fn by_type(
        &self,
        t: &str,
        a: &Map<String, Value>,
        b: &Map<String, Value>,
        at: &str,
        embed: Embed<'_>,
        depth: usize,
    ) -> Sub {
        match t {
            "string" => self.bounds_len(a, b, at, embed, ("minLength", "maxLength"), |n| {
                json!("x".repeat(n))
            }),
            "number" | "integer" => self.bounds_num(t, a, b, at, embed),
            "array" => {
                let item = a
                    .get("items")
                    .and_then(|i| example(self.a_root, i, 0))
                    .unwrap_or(Value::Null);
                let mut v = vec![
                    self.bounds_len(a, b, at, embed, ("minItems", "maxItems"), |n| {
                        json!(vec![item.clone(); n])
                    }),
                ];
                if b.get("uniqueItems") == Some(&json!(true))
                    && a.get("uniqueItems") != Some(&json!(true))
                {
                    v.push(self.refute(
                        format!("{at}/uniqueItems"),
                        format!(
                            "{} requires unique items, {} does not",
                            self.b_name, self.a_name
                        ),
                        vec![json!([item.clone(), item])],
                        embed,
                    ));
                }
                if a.get("items").is_some_and(Value::is_array)
                    || b.get("items").is_some_and(Value::is_array)
                {
                    v.push(Self::unknown(
                        format!("{at}/items"),
                        "tuple `items` (draft 7 arrays) are not compared",
                    ));
                } else if let Some(items_b) = b.get("items") {
                    let items_a = a.get("items").cloned().unwrap_or(Value::Bool(true));
                    let min = a
                        .get("minItems")
                        .and_then(Value::as_u64)
                        .unwrap_or(0)
                        .max(1) as usize;
                    let inner = |w: Value| embed(Value::Array(vec![w; min]));
                    v.push(self.subset(
                        &items_a,
                        items_b,
                        &format!("{at}/items"),
                        &inner,
                        depth + 1,
                    ));
                }
                all(v)
            }
            "object" => self.object(a, b, at, embed, depth),
            _ => Sub::Yes,
        }
    }

    fn bounds_len(
        &self,
        a: &Map<String, Value>,
        b: &Map<String, Value>,
        at: &str,
        embed: Embed<'_>,
        (min_kw, max_kw): (&str, &str),
        make: impl Fn(usize) -> Value,
    ) -> Sub {
        let get = |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_u64);
        let mut v = Vec::new();
        let (a_min, b_min) = (get(a, min_kw).unwrap_or(0), get(b, min_kw).unwrap_or(0));
        if b_min > a_min {
            v.push(self.refute(
                format!("{at}/{min_kw}"),
                format!("{} raises {min_kw} from {a_min} to {b_min}", self.b_name),
                vec![make(a_min as usize)],
                embed,
            ));
        }
        if let Some(b_max) = get(b, max_kw) {
            match get(a, max_kw) {
                Some(a_max) if a_max <= b_max => {}
                a_max => v.push(self.refute(
                    format!("{at}/{max_kw}"),
                    match a_max {
                        Some(a_max) => format!(
                            "{} allows {max_kw} {a_max}, {} only {b_max}",
                            self.a_name, self.b_name
                        ),
                        None => format!(
                            "{} limits {max_kw} to {b_max}, {} does not",
                            self.b_name, self.a_name
                        ),
                    },
                    vec![make(b_max as usize + 1)],
                    embed,
                )),
            }
        }
        all(v)
    }

    fn bounds_num(
        &self,
        t: &str,
        a: &Map<String, Value>,
        b: &Map<String, Value>,
        at: &str,
        embed: Embed<'_>,
    ) -> Sub {
        let mut v = Vec::new();
        for (lower, incl, excl) in [
            (true, "minimum", "exclusiveMinimum"),
            (false, "maximum", "exclusiveMaximum"),
        ] {
            for m in [a, b] {
                if m.get(excl).is_some_and(|x| !x.is_number()) {
                    return Self::unknown(
                        format!("{at}/{excl}"),
                        "boolean exclusive bounds (draft 4) are not compared",
                    );
                }
            }
            let (Some(bb), ab) = (bound(b, incl, excl, lower), bound(a, incl, excl, lower)) else {
                continue;
            };
            // Is A's bound at least as tight as B's?
            let fits = ab.is_some_and(|(av, aex)| {
                if lower {
                    av > bb.0 || (av == bb.0 && (aex || !bb.1))
                } else {
                    av < bb.0 || (av == bb.0 && (aex || !bb.1))
                }
            });
            if !fits {
                let kw = if bb.1 { excl } else { incl };
                let edge = bb.0;
                let step = if lower { -1.0 } else { 1.0 };
                let mut candidates = vec![
                    json!(edge),
                    json!(edge + step),
                    json!((edge + step).floor()),
                    json!((edge + step).ceil()),
                ];
                if let Some((av, _)) = ab {
                    candidates.insert(0, json!(av));
                }
                if t == "integer" {
                    candidates.retain(|c| c.as_f64().is_some_and(|f| f.fract() == 0.0));
                    candidates = candidates
                        .into_iter()
                        .map(|c| json!(c.as_f64().unwrap_or(0.0) as i64))
                        .collect();
                }
                v.push(self.refute(
                    format!("{at}/{kw}"),
                    format!(
                        "{} allows values {} than {} does",
                        self.a_name,
                        if lower { "lower" } else { "higher" },
                        self.b_name
                    ),
                    candidates,
                    embed,
                ));
            }
        }
        all(v)
    }

    fn object(
        &self,
        a: &Map<String, Value>,
        b: &Map<String, Value>,
        at: &str,
        embed: Embed<'_>,
        depth: usize,
    ) -> Sub {
        let mut v = Vec::new();
        let req = |m: &Map<String, Value>| -> BTreeSet<String> {
            m.get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        let (req_a, req_b) = (req(a), req(b));
        for p in req_b.difference(&req_a) {
            v.push(
                self.refute(
                    format!("{at}/required"),
                    format!(
                        "`{p}` is required by {} but not by {}",
                        self.b_name, self.a_name
                    ),
                    example_object(self.a_root, a, 0)
                        .into_iter()
                        .map(Value::Object)
                        .collect(),
                    embed,
                ),
            );
        }
        let props = |m: &Map<String, Value>| {
            m.get("properties")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        let (pa, pb) = (props(a), props(b));
        let extra = |m: &Map<String, Value>| {
            m.get("additionalProperties")
                .cloned()
                .unwrap_or(Value::Bool(true))
        };
        let (xa, xb) = (extra(a), extra(b));
        let names: BTreeSet<&String> = pa.keys().chain(pb.keys()).collect();
        for name in names {
            let sa = pa.get(name).unwrap_or(&xa);
            let sb = pb.get(name).unwrap_or(&xb);
            if *sa == Value::Bool(false) {
                continue;
            }
            let inner = |w: Value| {
                let mut o = example_object(self.a_root, a, 0)?;
                o.insert(name.clone(), w);
                embed(Value::Object(o))
            };
            let at = format!("{at}/properties/{}", escape(name));
            if *sb == Value::Bool(false) {
                v.push(self.refute(
                    at,
                    format!(
                        "`{name}` is not allowed by {} but is by {}",
                        self.b_name, self.a_name
                    ),
                    example(self.a_root, sa, 0).into_iter().collect(),
                    &inner,
                ));
            } else {
                v.push(self.subset(sa, sb, &at, &inner, depth + 1));
            }
        }
        if xa != Value::Bool(false) {
            let mut fresh = "extra".to_owned();
            while pa.contains_key(&fresh) || pb.contains_key(&fresh) {
                fresh.push('_');
            }
            let inner = |w: Value| {
                let mut o = example_object(self.a_root, a, 0)?;
                o.insert(fresh.clone(), w);
                embed(Value::Object(o))
            };
            let at = format!("{at}/additionalProperties");
            if xb == Value::Bool(false) {
                v.push(self.refute(
                    at,
                    format!("{} allows properties it does not name, {} does not (additionalProperties: false)", self.a_name, self.b_name),
                    example(self.a_root, &xa, 0).into_iter().chain([json!("x"), json!(0)]).collect(),
                    &inner,
                ));
            } else {
                v.push(self.subset(&xa, &xb, &at, &inner, depth + 1));
            }
        }
        all(v)
    }
}

/// The worst of several answers: a `No` wins, then an `Unknown`, else `Yes`.
fn all(verdicts: Vec<Sub>) -> Sub {
    let mut unknown = None;
    for v in verdicts {
        match v {
            Sub::No(f) => return Sub::No(f),
            Sub::Unknown(f) => unknown = unknown.or(Some(f)),
            Sub::Yes => {}
        }
    }
    unknown.map_or(Sub::Yes, Sub::Unknown)
}

/// Follows local `$ref`s (only ones with nothing else beside them but annotations).
fn resolve<'v>(root: &'v Value, mut s: &'v Value) -> Result<&'v Value, String> {
    for _ in 0..32 {
        let Some(r) = s.get("$ref").and_then(Value::as_str) else {
            return Ok(s);
        };
        let siblings = s
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| *k != "$ref" && !ANNOTATIONS.contains(&k.as_str()))
            .count();
        if siblings > 0 {
            return Err("a $ref with other keywords beside it is not compared".into());
        }
        let Some(pointer) = r.strip_prefix('#') else {
            return Err(format!("the $ref {r:?} is not local to the schema"));
        };
        s = root
            .pointer(pointer)
            .ok_or_else(|| format!("the $ref {r:?} points nowhere"))?;
    }
    Err("a chain of $refs too long to follow".into())
}

/// `true` → `{}`, `false` → `None`; annotations dropped.
fn normalize(s: &Value) -> Option<Map<String, Value>> {
    match s {
        Value::Bool(false) => None,
        Value::Object(m) => Some(
            m.iter()
                .filter(|(k, _)| !ANNOTATIONS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        _ => Some(Map::new()),
    }
}

/// The keywords that constrain (everything but annotations and unknown words).
fn constraints(m: &Map<String, Value>) -> impl Iterator<Item = &String> {
    const KNOWN: &[&str] = &[
        "type",
        "enum",
        "const",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "allOf",
        "anyOf",
        "oneOf",
        "$ref",
    ];
    m.keys().filter(|k| {
        KNOWN.contains(&k.as_str())
            || OPAQUE.contains(&k.as_str())
            || ENTANGLED.contains(&k.as_str())
    })
}

fn contains_ref(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.contains_key("$ref") || m.values().any(contains_ref),
        Value::Array(a) => a.iter().any(contains_ref),
        _ => false,
    }
}

fn without(m: &Map<String, Value>, kw: &str) -> Map<String, Value> {
    let mut m = m.clone();
    m.remove(kw);
    m
}

/// A branch with its parent's other keywords: `allOf: [siblings, branch]`, which means exactly
/// what the parent means for values of that branch (overriding one keyword with the other would
/// not: two `properties` maps, or `additionalProperties` beside another `properties`).
fn merge(siblings: &Map<String, Value>, branch: &Value, _root: &Value) -> Value {
    if siblings.is_empty() {
        branch.clone()
    } else {
        json!({ "allOf": [Value::Object(siblings.clone()), branch] })
    }
}

/// `base` and `part` as one schema, or `None` when both set the same keyword differently.
fn merge_strict(base: &Value, part: &Value, root: &Value) -> Option<Value> {
    let part = resolve(root, part).ok()?;
    let (Value::Object(bm), Value::Object(pm)) = (base, part) else {
        return None;
    };
    // Keywords that only act together: split across parts, each is inert (`then` without
    // `if`); joined, they would constrain, and the merge would be narrower than the `allOf`.
    for group in [
        &["if", "then", "else"][..],
        &["contains", "minContains", "maxContains"][..],
    ] {
        let in_base = group.iter().any(|k| bm.contains_key(*k));
        let in_part = group.iter().any(|k| pm.contains_key(*k));
        if in_base && in_part && group.iter().any(|k| bm.get(*k) != pm.get(*k)) {
            return None;
        }
    }
    let mut m = bm.clone();
    for (k, v) in pm {
        if ANNOTATIONS.contains(&k.as_str()) {
            continue;
        }
        match m.get(k) {
            Some(existing) if existing != v => return None,
            _ => {
                m.insert(k.clone(), v.clone());
            }
        }
    }
    Some(Value::Object(m))
}

/// Do the branches of a `oneOf` exclude each other? Yes when every branch requires one
/// property with a `const` (or `enum`) and no value repeats: a discriminated union.
fn disjoint(branches: &[Value], siblings: &Map<String, Value>, root: &Value) -> bool {
    // `required` only binds objects: a string would satisfy every branch at once unless the
    // branches (or their parent) only admit objects.
    let only_objects =
        |m: &Map<String, Value>| m.contains_key("type") && types_of(m).iter().eq(["object"].iter());
    let parent_objects = only_objects(siblings);
    let tags: Vec<Option<(String, Vec<Value>)>> = branches
        .iter()
        .map(|b| {
            let b = resolve(root, b).ok()?;
            if !parent_objects && !b.as_object().is_some_and(only_objects) {
                return None;
            }
            tag_values(b)
        })
        .collect();
    let Some(Some((first, _))) = tags.first() else {
        return false;
    };
    let mut seen: Vec<&Value> = Vec::new();
    for t in &tags {
        let Some((name, values)) = t else {
            return false;
        };
        if name != first {
            return false;
        }
        for v in values {
            if seen.contains(&v) {
                return false;
            }
            seen.push(v);
        }
    }
    true
}

/// The first required property with a `const`/`enum`, and its values.
fn tag_values(s: &Value) -> Option<(String, Vec<Value>)> {
    let props = s.get("properties")?.as_object()?;
    for name in s
        .get("required")?
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
    {
        if let Some(p) = props.get(name) {
            if let Some(c) = p.get("const") {
                return Some((name.to_owned(), vec![c.clone()]));
            }
            if let Some(Value::Array(e)) = p.get("enum") {
                return Some((name.to_owned(), e.clone()));
            }
        }
    }
    None
}

/// Every value A could have, when there are few: `const`, `enum`, or only null/boolean types.
fn finite_values(a: &Map<String, Value>) -> Option<Vec<Value>> {
    if let Some(c) = a.get("const") {
        return Some(vec![c.clone()]);
    }
    if let Some(Value::Array(e)) = a.get("enum") {
        return Some(e.clone());
    }
    let t = types_of(a);
    if t.iter().all(|t| *t == "null" || *t == "boolean") {
        let mut v = Vec::new();
        if t.contains("null") {
            v.push(Value::Null);
        }
        if t.contains("boolean") {
            v.extend([json!(false), json!(true)]);
        }
        return Some(v);
    }
    None
}

/// The instance types a schema allows (every type when `type` is absent).
fn types_of(m: &Map<String, Value>) -> BTreeSet<&'static str> {
    let named: Vec<&str> = match m.get("type") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => return TYPES.iter().copied().collect(),
    };
    TYPES
        .iter()
        .copied()
        .filter(|t| named.contains(t))
        .collect()
}

/// A lower (or upper) bound as (value, exclusive), the tighter of the two keywords.
fn bound(m: &Map<String, Value>, incl: &str, excl: &str, lower: bool) -> Option<(f64, bool)> {
    let i = m.get(incl).and_then(Value::as_f64).map(|v| (v, false));
    let e = m.get(excl).and_then(Value::as_f64).map(|v| (v, true));
    match (i, e) {
        (Some(i), Some(e)) => Some(if (lower && e.0 >= i.0) || (!lower && e.0 <= i.0) {
            e
        } else {
            i
        }),
        (x, y) => x.or(y),
    }
}

/// A validator for a subschema: the root's `$defs`/`definitions` and `$schema` come along so
/// local `$ref`s still resolve. `None` when a `$ref` points anywhere else.
fn local_validator(root: &Value, sub: &Map<String, Value>) -> Option<jsonschema::Validator> {
    fn refs_ok(v: &Value) -> bool {
        match v {
            Value::Object(m) => m.iter().all(|(k, v)| {
                if k == "$ref" {
                    v.as_str().is_some_and(|r| {
                        r.starts_with("#/$defs/") || r.starts_with("#/definitions/")
                    })
                } else {
                    refs_ok(v)
                }
            }),
            Value::Array(a) => a.iter().all(refs_ok),
            _ => true,
        }
    }
    let mut m = sub.clone();
    for k in ["$defs", "definitions", "$schema"] {
        if let Some(v) = root.get(k) {
            m.insert(k.to_owned(), v.clone());
        }
    }
    let v = Value::Object(m);
    if !refs_ok(&v) {
        return None;
    }
    jsonschema::validator_for(&v).ok()
}

/// Every `const` and `enum` value inside a schema.
fn mentioned(s: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    match s {
        Value::Object(m) => {
            out.extend(m.get("const").cloned());
            if let Some(Value::Array(e)) = m.get("enum") {
                out.extend(e.iter().cloned());
            }
            for (k, v) in m {
                if k != "const" && k != "enum" {
                    out.extend(mentioned(v));
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| out.extend(mentioned(v))),
        _ => {}
    }
    out
}

/// Payloads to try as counterexamples for a schema: its example, then one of each type.
fn samples(root: &Value, a: &Map<String, Value>) -> Vec<Value> {
    let mut v: Vec<Value> = example(root, &Value::Object(a.clone()), 0)
        .into_iter()
        .collect();
    for t in types_of(a) {
        v.extend(example_typed(root, a, t, 0));
    }
    v.extend([
        json!("herald-compat-probe"),
        json!(-1),
        json!(0.5),
        json!({}),
        json!([]),
        Value::Null,
        json!(true),
    ]);
    v
}

/// Some value the schema probably accepts (checked by the validator before anyone trusts it).
pub(crate) fn example(root: &Value, s: &Value, depth: usize) -> Option<Value> {
    if depth > 16 {
        return None;
    }
    let s = resolve(root, s).ok()?;
    let m = normalize(s)?;
    if let Some(c) = m.get("const") {
        return Some(c.clone());
    }
    if let Some(e) = m.get("enum").and_then(Value::as_array) {
        return e.first().cloned();
    }
    for kw in ["oneOf", "anyOf"] {
        if let Some(first) = m.get(kw).and_then(Value::as_array).and_then(|b| b.first()) {
            return example(root, &merge(&without(&m, kw), first, root), depth + 1);
        }
    }
    if let Some(parts) = m.get("allOf").and_then(Value::as_array) {
        let mut merged = Value::Object(without(&m, "allOf"));
        for p in parts {
            merged = merge_strict(&merged, p, root)?;
        }
        return example(root, &merged, depth + 1);
    }
    // Prefer the richest type, so a `{type: [object, null]}` gives an object.
    let t = [
        "object", "array", "string", "integer", "number", "boolean", "null",
    ]
    .into_iter()
    .find(|t| types_of(&m).contains(t))?;
    example_typed(root, &m, t, depth)
}

fn example_typed(root: &Value, m: &Map<String, Value>, t: &str, depth: usize) -> Option<Value> {
    let num = |k: &str| m.get(k).and_then(Value::as_f64);
    Some(match t {
        "null" => Value::Null,
        "boolean" => json!(false),
        "string" => {
            json!("x".repeat(m.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize))
        }
        "integer" | "number" => {
            let low = num("minimum").or(num("exclusiveMinimum").map(|v| v + 1.0));
            let high = num("maximum").or(num("exclusiveMaximum").map(|v| v - 1.0));
            let v = low.map(f64::ceil).or(high.map(f64::floor)).unwrap_or(0.0);
            json!(v as i64)
        }
        "array" => {
            let n = m.get("minItems").and_then(Value::as_u64).unwrap_or(0) as usize;
            let item = match m.get("items") {
                Some(i) if n > 0 => example(root, i, depth + 1)?,
                _ => Value::Null,
            };
            json!(vec![item; n])
        }
        "object" => Value::Object(example_object(root, m, depth)?),
        _ => return None,
    })
}

/// An object with just the required properties, each with an example value.
fn example_object(
    root: &Value,
    m: &Map<String, Value>,
    depth: usize,
) -> Option<Map<String, Value>> {
    let props = m.get("properties").and_then(Value::as_object);
    let extra = m
        .get("additionalProperties")
        .cloned()
        .unwrap_or(Value::Bool(true));
    let mut o = Map::new();
    for name in m
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let s = props.and_then(|p| p.get(name)).unwrap_or(&extra);
        o.insert(
            name.to_owned(),
            example(root, s, depth + 1).unwrap_or(Value::Null),
        );
    }
    Some(o)
}

/// A property name as a JSON pointer token.
pub(crate) fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}
