//! Channel names and name templates.
//!
//! A channel name is a dot-separated list of segments, each made of `[A-Za-z0-9_-]`, at most
//! 255 bytes in all. A template is the same shape where a segment may be a `{param}`
//! placeholder; a placeholder matches exactly one segment, never zero and never several, so a
//! crafted name such as `notifications.user.alice.x` can never reach `notifications.user.{userId}`.

use std::fmt;

/// Longest channel name accepted anywhere, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Why a string is not a valid channel name or template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    #[error("channel name has an empty segment (leading, trailing or doubled '.')")]
    EmptySegment,
    #[error("segment {0:?} may only contain A-Z, a-z, 0-9, '_' and '-'")]
    BadSegment(String),
    #[error("placeholder {0:?} must look like {{name}} with name made of A-Z, a-z, 0-9, '_'")]
    BadPlaceholder(String),
    #[error("placeholder {{{0}}} appears twice")]
    DuplicatePlaceholder(String),
}

/// True when `s` is a valid concrete segment: non-empty, `[A-Za-z0-9_-]` only.
pub fn is_valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks a concrete channel name (no placeholders).
pub fn validate_name(name: &str) -> Result<(), NameError> {
    check_length(name)?;
    for seg in name.split('.') {
        if seg.is_empty() {
            return Err(NameError::EmptySegment);
        }
        if !is_valid_segment(seg) {
            return Err(NameError::BadSegment(seg.to_owned()));
        }
    }
    Ok(())
}

fn check_length(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A parsed channel name pattern: either an exact name or a template with placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    segments: Vec<Segment>,
}

impl Pattern {
    /// Parses `notifications.user.{userId}` or `blog.article.feed`.
    pub fn parse(source: &str) -> Result<Self, NameError> {
        check_length(source)?;
        let mut segments = Vec::new();
        for seg in source.split('.') {
            if seg.is_empty() {
                return Err(NameError::EmptySegment);
            }
            if let Some(inner) = seg.strip_prefix('{') {
                let param = inner
                    .strip_suffix('}')
                    .filter(|p| {
                        !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    })
                    .ok_or_else(|| NameError::BadPlaceholder(seg.to_owned()))?;
                if segments
                    .iter()
                    .any(|s| matches!(s, Segment::Param(p) if p == param))
                {
                    return Err(NameError::DuplicatePlaceholder(param.to_owned()));
                }
                segments.push(Segment::Param(param.to_owned()));
            } else if is_valid_segment(seg) {
                segments.push(Segment::Literal(seg.to_owned()));
            } else {
                return Err(NameError::BadSegment(seg.to_owned()));
            }
        }
        Ok(Self {
            source: source.to_owned(),
            segments,
        })
    }

    /// The pattern as written in the registry.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when the pattern has at least one placeholder.
    pub fn is_template(&self) -> bool {
        self.segments.iter().any(|s| matches!(s, Segment::Param(_)))
    }

    /// Names of the placeholders, in order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(p) => Some(p.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Number of segments; a name can only match a pattern of its own length.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// Patterns always have at least one segment; present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Matches a concrete, already validated name; returns the placeholder values.
    pub fn matches(&self, name: &str) -> Option<Params> {
        let mut params = Params::default();
        let mut parts = name.split('.');
        for seg in &self.segments {
            let part = parts.next()?;
            match seg {
                Segment::Literal(lit) => {
                    if lit != part {
                        return None;
                    }
                }
                Segment::Param(p) => {
                    if !is_valid_segment(part) {
                        return None;
                    }
                    params.0.push((p.clone(), part.to_owned()));
                }
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(params)
    }

    /// True when some concrete name would match both patterns: same length and, at every
    /// position, equal literals or a placeholder on either side. The registry refuses such
    /// pairs so that a name never resolves to two descriptors.
    pub fn overlaps(&self, other: &Pattern) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|pair| match pair {
                    (Segment::Literal(a), Segment::Literal(b)) => a == b,
                    _ => true,
                })
    }

    /// Builds a concrete name by substituting the placeholders from `values`
    /// (`None` when a placeholder has no value or a value is not a valid segment).
    pub fn instantiate(&self, values: &[(&str, &str)]) -> Option<String> {
        let mut out = String::with_capacity(self.source.len());
        for (i, seg) in self.segments.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            match seg {
                Segment::Literal(l) => out.push_str(l),
                Segment::Param(p) => {
                    let (_, v) = values.iter().find(|(k, _)| k == p)?;
                    if !is_valid_segment(v) {
                        return None;
                    }
                    out.push_str(v);
                }
            }
        }
        (out.len() <= MAX_NAME_LEN).then_some(out)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Placeholder values captured when a name matched a template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every (placeholder, value) pair, in the template's order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name("blog.article.feed").is_ok());
        assert!(validate_name("a-b_c.9").is_ok());
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name("a..b"), Err(NameError::EmptySegment));
        assert_eq!(validate_name("a."), Err(NameError::EmptySegment));
        assert!(matches!(validate_name("*"), Err(NameError::BadSegment(_))));
        assert!(matches!(validate_name(">"), Err(NameError::BadSegment(_))));
        assert!(matches!(
            validate_name("a.\0"),
            Err(NameError::BadSegment(_))
        ));
        assert!(matches!(
            validate_name("a.{userId}"),
            Err(NameError::BadSegment(_))
        ));
        assert_eq!(validate_name(&"a".repeat(256)), Err(NameError::TooLong));
        assert!(validate_name(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn templates_match_exactly_one_segment_per_placeholder() {
        let p = Pattern::parse("notifications.user.{userId}").unwrap();
        assert!(p.is_template());
        assert_eq!(
            p.matches("notifications.user.alice").unwrap().get("userId"),
            Some("alice")
        );
        assert!(p.matches("notifications.user.alice.x").is_none());
        assert!(p.matches("notifications.user").is_none());
        assert!(p.matches("notifications.users.alice").is_none());
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(matches!(
            Pattern::parse("a.{}"),
            Err(NameError::BadPlaceholder(_))
        ));
        assert!(matches!(
            Pattern::parse("a.{x"),
            Err(NameError::BadPlaceholder(_))
        ));
        assert!(matches!(
            Pattern::parse("a.{x}.{x}"),
            Err(NameError::DuplicatePlaceholder(_))
        ));
        assert!(matches!(
            Pattern::parse("a.b{x}"),
            Err(NameError::BadSegment(_))
        ));
    }

    #[test]
    fn overlap_detection() {
        let a = Pattern::parse("chat.room.{id}").unwrap();
        let b = Pattern::parse("chat.{kind}.lobby").unwrap();
        let c = Pattern::parse("chat.room").unwrap();
        let d = Pattern::parse("chat.dm.{id}").unwrap();
        assert!(a.overlaps(&b));
        assert!(!a.overlaps(&c));
        assert!(!a.overlaps(&d));
    }

    #[test]
    fn instantiate_refuses_invalid_values() {
        let p = Pattern::parse("notifications.user.{userId}").unwrap();
        assert_eq!(
            p.instantiate(&[("userId", "alice")]).as_deref(),
            Some("notifications.user.alice")
        );
        assert_eq!(p.instantiate(&[("userId", "a.b")]), None);
        assert_eq!(p.instantiate(&[("userId", "a@b.com")]), None);
        assert_eq!(p.instantiate(&[]), None);
    }
}
