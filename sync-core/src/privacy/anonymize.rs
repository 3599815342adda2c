//! The anonymizer: per-data-type rules applied to a JSON payload before it leaves the device.
//!
//! Rules are declared in code ([`RuleSet::builder`]) or loaded from TOML ([`RuleSet::from_toml`])
//! or JSON ([`RuleSet::from_json`]); both go through the same validation, so a malformed rule (an
//! unknown action, a bad path, a missing or stray parameter, two rules on one field) is an
//! [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) error at load time. A payload
//! that does not fit its rules (a required field missing, a value of the wrong type for its
//! action, a container where the rules expect another) is an `InvalidInput` error at share time:
//! nothing is ever passed through untransformed because it did not fit.
//!
//! ```toml
//! [types.crash-report]
//! mode = "allow_list"          # drop every field no rule names ("deny_list": keep them)
//! rules = [
//!   { path = "app.version",        action = "keep" },
//!   { path = "user.id",            action = "pseudonym", required = true },
//!   { path = "user.age",           action = "bucket", width = 10 },
//!   { path = "user.income",        action = "bucket", bounds = [0, 20000, 50000, 100000] },
//!   { path = "created_at",         action = "time", granularity = "day" },
//!   { path = "events[].at",        action = "time", granularity = "week", unit = "ms" },
//!   { path = "device.location",    action = "grid", cell = 0.1 },
//!   { path = "message",            action = "redact" },
//!   { path = "events[].ip",        action = "redact", patterns = ["ipv4", "ipv6"] },
//! ]
//! ```
//!
//! Paths are field names separated by dots; `name[]` steps into every element of an array. The
//! payload's root is an object. A missing field (or `null`) is left alone unless its rule says
//! `required = true`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Number, Value};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use crate::cipher::{Cipher, CipherExt, SecretKey};
use crate::error::{Error, Result};
use crate::privacy::redact::{PiiKind, Redactor};
use crate::privacy::validate_name;
use crate::store::Store;

/// Context of the pseudonym root key, derived with [`Store::derive_local_key`].
pub const PSEUDONYM_ROOT_CONTEXT: &[u8] = b"hearth.pseudonym-root";
/// Prefix of the per-purpose pseudonym key context: `subkey(pseudonym root, prefix || purpose)`.
pub const PSEUDONYM_PURPOSE_PREFIX: &[u8] = b"hearth.pseudonym/";
/// Bytes of the keyed hash kept in a pseudonym (shown as twice as many hex digits).
pub const PSEUDONYM_LEN: usize = 16;
/// Longest rule path, in bytes.
pub const MAX_PATH_LEN: usize = 1024;
/// Most segments in a rule path.
pub const MAX_PATH_DEPTH: usize = 32;

/// Which fields survive when no rule names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Fields no rule names are kept as they are.
    #[default]
    DenyList,
    /// Fields no rule names are dropped; `keep` rules name what survives unchanged.
    AllowList,
}

/// How numbers are grouped.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Buckets {
    /// Equal buckets of this width from 0: `37` with width 10 becomes `"30..40"`.
    Width(f64),
    /// Buckets between ascending bounds: with `[0, 18, 65]`, `37` becomes `"18..65"`, `-1`
    /// becomes `"<0"` and `70` becomes `">=65"`.
    Bounds(Vec<f64>),
}

/// How coarse a generalized time is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Granularity {
    /// The start of the day (UTC).
    Day,
    /// The start of the ISO week: Monday 00:00 UTC.
    Week,
}

/// The unit of a numeric timestamp.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum EpochUnit {
    /// Seconds since the Unix epoch.
    #[default]
    Seconds,
    /// Milliseconds since the Unix epoch.
    Millis,
}

/// What a rule does to the value at its path.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// Keep it unchanged (names what survives in [`Mode::AllowList`]).
    Keep,
    /// Remove it.
    Drop,
    /// Replace a string or number by its keyed pseudonym for the purpose: 32 hex digits, the
    /// same for the same value within a purpose, unrelated across purposes and without the key.
    Pseudonym,
    /// Replace a number by the range that holds it, as a string.
    Bucket(Buckets),
    /// Truncate a timestamp: an RFC 3339 string stays an RFC 3339 string (UTC); an integer
    /// stays an integer in `unit`.
    Time {
        /// Day or week.
        granularity: Granularity,
        /// Unit of integer timestamps.
        unit: EpochUnit,
    },
    /// Snap coordinates to a grid of `cell` degrees (the south-west corner of the cell): a
    /// number, or an object with `lat`/`lon` (or `lng`, or `latitude`/`longitude`), of which
    /// only the coordinates are kept.
    Grid {
        /// Cell size in degrees.
        cell: f64,
    },
    /// Redact personal data inside a string; an empty list means every [`PiiKind`].
    Redact(Vec<PiiKind>),
}

impl Action {
    fn name(&self) -> &'static str {
        match self {
            Action::Keep => "keep",
            Action::Drop => "drop",
            Action::Pseudonym => "pseudonym",
            Action::Bucket(_) => "bucket",
            Action::Time { .. } => "time",
            Action::Grid { .. } => "grid",
            Action::Redact(_) => "redact",
        }
    }
}

/// One rule: an action at a path.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// The path (`user.id`, `events[].ip`).
    pub path: String,
    /// The action.
    pub action: Action,
    /// When true, a payload without this field is refused.
    pub required: bool,
}

impl Rule {
    /// A rule that applies `action` at `path` when the field is present.
    pub fn new(path: impl Into<String>, action: Action) -> Self {
        Self {
            path: path.into(),
            action,
            required: false,
        }
    }

    /// Makes the field required.
    #[must_use]
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }
}

#[derive(Clone, Debug, Default)]
struct Node {
    /// Display path of this node, for error messages.
    path: String,
    action: Option<(Action, bool)>,
    fields: BTreeMap<String, Node>,
    items: Option<Box<Node>>,
    /// The first required rule at or below this node.
    required_below: Option<String>,
}

/// The compiled rules of one data type.
#[derive(Clone, Debug)]
pub struct TypeRules {
    mode: Mode,
    rules: Vec<Rule>,
    root: Node,
}

impl TypeRules {
    /// Which fields survive when no rule names them.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The rules, in the order given.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

fn rule_error(data_type: &str, index: usize, path: &str, problem: impl fmt::Display) -> Error {
    Error::invalid(format!(
        "anonymization rule {} of data type '{data_type}' (path '{path}'): {problem}",
        index + 1
    ))
}

/// Parses `a.b[].c` into (field name, number of `[]` after it) steps.
fn parse_path(path: &str) -> std::result::Result<Vec<(String, usize)>, String> {
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!("the path is longer than {MAX_PATH_LEN} bytes"));
    }
    let mut out = Vec::new();
    for segment in path.split('.') {
        let mut name = segment;
        let mut arrays = 0;
        while let Some(rest) = name.strip_suffix("[]") {
            name = rest;
            arrays += 1;
        }
        if name.is_empty() {
            return Err("a path segment has no field name (write `name` or `name[]`)".into());
        }
        if name.contains(['[', ']']) || name.chars().any(char::is_control) {
            return Err("a field name contains '[', ']' or a control character; only a trailing `[]` is allowed".into());
        }
        out.push((name.to_owned(), arrays));
    }
    let depth: usize = out.iter().map(|(_, a)| 1 + a).sum();
    if depth > MAX_PATH_DEPTH {
        return Err(format!("the path is deeper than {MAX_PATH_DEPTH} steps"));
    }
    Ok(out)
}

fn check_action(action: &Action) -> std::result::Result<(), String> {
    let finite_positive = |x: f64| x.is_finite() && x > 0.0;
    match action {
        Action::Bucket(Buckets::Width(w)) if !finite_positive(*w) => {
            Err("`width` must be a positive number".into())
        }
        Action::Bucket(Buckets::Bounds(b)) => {
            if b.is_empty() {
                Err("`bounds` must not be empty".into())
            } else if b.iter().any(|x| !x.is_finite()) {
                Err("`bounds` must be finite numbers".into())
            } else if b.windows(2).any(|w| w[0] >= w[1]) {
                Err("`bounds` must be strictly ascending".into())
            } else {
                Ok(())
            }
        }
        Action::Grid { cell } if !finite_positive(*cell) || *cell > 180.0 => {
            Err("`cell` must be a number of degrees above 0 and at most 180".into())
        }
        _ => Ok(()),
    }
}

impl TypeRules {
    fn compile(data_type: &str, mode: Mode, rules: Vec<Rule>) -> Result<Self> {
        let mut root = Node::default();
        for (index, rule) in rules.iter().enumerate() {
            let err = |problem: String| rule_error(data_type, index, &rule.path, problem);
            check_action(&rule.action).map_err(err)?;
            let steps = parse_path(&rule.path).map_err(err)?;
            let mut node = &mut root;
            let mut shown = String::new();
            for (name, arrays) in steps {
                if node.action.is_some() {
                    return Err(err(format!(
                        "it lies inside the field of another rule ('{}')",
                        node.path
                    )));
                }
                if node.items.is_some() {
                    return Err(err(format!(
                        "another rule expects '{}' to be an array, this one an object",
                        node.path
                    )));
                }
                if !shown.is_empty() {
                    shown.push('.');
                }
                shown.push_str(&name);
                node = node.fields.entry(name).or_default();
                node.path.clone_from(&shown);
                for _ in 0..arrays {
                    if node.action.is_some() {
                        return Err(err(format!(
                            "it lies inside the field of another rule ('{}')",
                            node.path
                        )));
                    }
                    if !node.fields.is_empty() {
                        return Err(err(format!(
                            "another rule expects '{}' to be an object, this one an array",
                            node.path
                        )));
                    }
                    shown.push_str("[]");
                    node = node.items.get_or_insert_with(Box::default);
                    node.path.clone_from(&shown);
                }
            }
            if node.action.is_some() {
                return Err(err("another rule has the same path".into()));
            }
            if !node.fields.is_empty() || node.items.is_some() {
                return Err(err("other rules name fields inside this one".into()));
            }
            node.action = Some((rule.action.clone(), rule.required));
        }
        mark_required(&mut root);
        Ok(Self { mode, rules, root })
    }
}

fn mark_required(node: &mut Node) -> Option<String> {
    let mut first = match &node.action {
        Some((_, true)) => Some(node.path.clone()),
        _ => None,
    };
    for child in node.fields.values_mut() {
        let r = mark_required(child);
        first = first.or(r);
    }
    if let Some(items) = node.items.as_deref_mut() {
        let r = mark_required(items);
        first = first.or(r);
    }
    node.required_below.clone_from(&first);
    first
}

/// Anonymization rules for every data type that may leave the device.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    types: BTreeMap<String, TypeRules>,
}

/// Declares a [`RuleSet`] in code.
#[derive(Clone, Debug, Default)]
pub struct RuleSetBuilder {
    types: Vec<(String, Mode, Vec<Rule>)>,
}

impl RuleSetBuilder {
    /// Adds the rules of `data_type`.
    #[must_use]
    pub fn data_type(mut self, data_type: impl Into<String>, mode: Mode, rules: Vec<Rule>) -> Self {
        self.types.push((data_type.into(), mode, rules));
        self
    }

    /// Validates and compiles the rules.
    pub fn build(self) -> Result<RuleSet> {
        let mut types = BTreeMap::new();
        for (data_type, mode, rules) in self.types {
            validate_name("data type", &data_type)?;
            if types.contains_key(&data_type) {
                return Err(Error::invalid(format!(
                    "the rules of data type '{data_type}' are given twice"
                )));
            }
            let compiled = TypeRules::compile(&data_type, mode, rules)?;
            types.insert(data_type, compiled);
        }
        Ok(RuleSet { types })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    types: BTreeMap<String, RawType>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawType {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    path: String,
    action: String,
    #[serde(default)]
    required: bool,
    width: Option<f64>,
    bounds: Option<Vec<f64>>,
    granularity: Option<String>,
    unit: Option<String>,
    cell: Option<f64>,
    patterns: Option<Vec<String>>,
}

impl RawRule {
    fn into_rule(self) -> std::result::Result<Rule, String> {
        let mut allowed: &[&str] = &[];
        let action = match self.action.as_str() {
            "keep" => Action::Keep,
            "drop" => Action::Drop,
            "pseudonym" => Action::Pseudonym,
            "bucket" => {
                allowed = &["width", "bounds"];
                match (self.width, &self.bounds) {
                    (Some(w), None) => Action::Bucket(Buckets::Width(w)),
                    (None, Some(b)) => Action::Bucket(Buckets::Bounds(b.clone())),
                    _ => return Err("`bucket` takes exactly one of `width` or `bounds`".into()),
                }
            }
            "time" => {
                allowed = &["granularity", "unit"];
                let granularity = match self.granularity.as_deref() {
                    Some("day") => Granularity::Day,
                    Some("week") => Granularity::Week,
                    Some(_) => return Err("`granularity` must be \"day\" or \"week\"".into()),
                    None => return Err("`time` needs `granularity` (\"day\" or \"week\")".into()),
                };
                let unit = match self.unit.as_deref() {
                    None | Some("s") => EpochUnit::Seconds,
                    Some("ms") => EpochUnit::Millis,
                    Some(_) => return Err("`unit` must be \"s\" or \"ms\"".into()),
                };
                Action::Time { granularity, unit }
            }
            "grid" => {
                allowed = &["cell"];
                Action::Grid {
                    cell: self.cell.ok_or("`grid` needs `cell` (degrees)")?,
                }
            }
            "redact" => {
                allowed = &["patterns"];
                let mut kinds = Vec::new();
                for name in self.patterns.iter().flatten() {
                    kinds.push(PiiKind::parse(name).ok_or_else(|| {
                        format!(
                            "unknown pattern '{name}'; expected one of {}",
                            PiiKind::ALL.map(PiiKind::as_str).join(", ")
                        )
                    })?);
                }
                Action::Redact(kinds)
            }
            other => {
                return Err(format!(
                    "unknown action '{other}'; expected one of keep, drop, pseudonym, bucket, time, grid, redact"
                ));
            }
        };
        let given = [
            ("width", self.width.is_some()),
            ("bounds", self.bounds.is_some()),
            ("granularity", self.granularity.is_some()),
            ("unit", self.unit.is_some()),
            ("cell", self.cell.is_some()),
            ("patterns", self.patterns.is_some()),
        ];
        if let Some((name, _)) = given.iter().find(|(n, g)| *g && !allowed.contains(n)) {
            return Err(format!(
                "`{name}` does not apply to action '{}'",
                action.name()
            ));
        }
        Ok(Rule {
            path: self.path,
            action,
            required: self.required,
        })
    }
}

impl RuleSet {
    /// Declares rules in code.
    pub fn builder() -> RuleSetBuilder {
        RuleSetBuilder::default()
    }

    /// Loads rules from TOML (format in the module docs).
    pub fn from_toml(text: &str) -> Result<Self> {
        let raw: RawFile = toml::from_str(text)
            .map_err(|e| Error::invalid("the anonymization rules are not valid").with_source(e))?;
        Self::from_raw(raw)
    }

    /// Loads rules from JSON: the same structure as the TOML form,
    /// `{"types": {"crash-report": {"mode": "allow_list", "rules": [{"path": …, "action": …}]}}}`.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawFile = serde_json::from_str(text)
            .map_err(|e| Error::invalid("the anonymization rules are not valid").with_source(e))?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawFile) -> Result<Self> {
        let mut builder = RuleSet::builder();
        for (data_type, t) in raw.types {
            let mode = match t.mode.as_deref() {
                None | Some("deny_list") => Mode::DenyList,
                Some("allow_list") => Mode::AllowList,
                Some(_) => {
                    return Err(Error::invalid(format!(
                        "data type '{data_type}': `mode` must be \"allow_list\" or \"deny_list\""
                    )));
                }
            };
            let mut rules = Vec::with_capacity(t.rules.len());
            for (index, raw_rule) in t.rules.into_iter().enumerate() {
                let path = raw_rule.path.clone();
                rules.push(
                    raw_rule
                        .into_rule()
                        .map_err(|p| rule_error(&data_type, index, &path, p))?,
                );
            }
            builder = builder.data_type(data_type, mode, rules);
        }
        builder.build()
    }

    /// The rules of `data_type`.
    pub fn get(&self, data_type: &str) -> Option<&TypeRules> {
        self.types.get(data_type)
    }

    /// The data types with rules.
    pub fn data_types(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }
}

/// Applies a [`RuleSet`] to payloads. Holds the pseudonym root key; its `Debug` shows neither
/// key nor rules' effects on data.
#[derive(Clone)]
pub struct Anonymizer {
    rules: Arc<RuleSet>,
    cipher: Arc<dyn Cipher>,
    root: SecretKey,
    redactor: Arc<Redactor>,
}

impl fmt::Debug for Anonymizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Anonymizer")
            .field("data_types", &self.rules.types.keys().collect::<Vec<_>>())
            .field("cipher", &self.cipher.name())
            .finish_non_exhaustive()
    }
}

struct Ctx<'a> {
    data_type: &'a str,
    cipher: &'a dyn Cipher,
    key: &'a SecretKey,
    redactor: &'a Redactor,
}

impl Ctx<'_> {
    fn mismatch(&self, path: &str, problem: &str) -> Error {
        Error::invalid(format!(
            "the payload does not match the anonymization rules of '{}': '{path}' {problem}",
            self.data_type
        ))
    }
}

impl Anonymizer {
    /// An anonymizer whose pseudonyms are keyed from `pseudonym_root`.
    pub fn new(cipher: Arc<dyn Cipher>, pseudonym_root: SecretKey, rules: RuleSet) -> Result<Self> {
        Ok(Self {
            rules: Arc::new(rules),
            cipher,
            root: pseudonym_root,
            redactor: Arc::new(Redactor::new()?),
        })
    }

    /// An anonymizer keyed by `store`: the pseudonym root is
    /// `store.derive_local_key("hearth.pseudonym-root")`, so pseudonyms are stable across
    /// restarts (and the same on every device of the store's space) and the key is never stored.
    pub fn for_store(store: &Store, rules: RuleSet) -> Result<Self> {
        let root = store.derive_local_key(PSEUDONYM_ROOT_CONTEXT)?;
        Self::new(store.cipher().clone(), root, rules)
    }

    /// The rules.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// The pseudonym key of `purpose`: `subkey(pseudonym root, "hearth.pseudonym/" || purpose)`.
    pub(crate) fn purpose_key(&self, purpose: &str) -> Result<SecretKey> {
        let mut context = PSEUDONYM_PURPOSE_PREFIX.to_vec();
        context.extend_from_slice(purpose.as_bytes());
        self.cipher.derive_subkey(&self.root, &context)
    }

    /// The pseudonym of `text` for `purpose`: the first 16 bytes of
    /// `BLAKE2b-256(key = purpose key, text)`, as 32 lower-case hex digits. What the anonymizer
    /// writes for a string (numbers are pseudonymized as their JSON text). Apps use it to name a
    /// user to a destination (an erasure request) without revealing who they are.
    pub fn pseudonym(&self, purpose: &str, text: &str) -> Result<String> {
        validate_name("purpose", purpose)?;
        pseudonym_with(self.cipher.as_ref(), &self.purpose_key(purpose)?, text)
    }

    /// Applies the rules of `data_type` to `payload` for `purpose`. Fails with
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) when there are no rules for
    /// the data type or the payload does not match them; the error names the rule's path, never
    /// a value.
    pub fn anonymize(&self, data_type: &str, purpose: &str, payload: &Value) -> Result<Value> {
        validate_name("purpose", purpose)?;
        let rules = self.rules.get(data_type).ok_or_else(|| {
            Error::invalid(format!(
                "there are no anonymization rules for data type '{data_type}'; nothing of it may leave"
            ))
        })?;
        let key = self.purpose_key(purpose)?;
        let ctx = Ctx {
            data_type,
            cipher: self.cipher.as_ref(),
            key: &key,
            redactor: &self.redactor,
        };
        if !payload.is_object() {
            return Err(ctx.mismatch("(root)", "must be a JSON object"));
        }
        match rules.mode {
            Mode::DenyList => {
                let mut out = payload.clone();
                apply_in_place(&ctx, &rules.root, &mut out)?;
                Ok(out)
            }
            Mode::AllowList => {
                Ok(project(&ctx, &rules.root, payload)?
                    .unwrap_or_else(|| Value::Object(Map::new())))
            }
        }
    }
}

pub(crate) fn pseudonym_with(cipher: &dyn Cipher, key: &SecretKey, text: &str) -> Result<String> {
    let h = cipher.keyed_hash(key, &[text.as_bytes()])?;
    Ok(hex::encode(&h[..PSEUDONYM_LEN]))
}

/// Deny-list mode: walks the named paths of `value` and transforms them in place.
fn apply_in_place(ctx: &Ctx<'_>, node: &Node, value: &mut Value) -> Result<()> {
    if !node.fields.is_empty() {
        match value {
            Value::Object(map) => {
                for (name, child) in &node.fields {
                    let Some(v) = map.get_mut(name) else {
                        if let Some(required) = &child.required_below {
                            return Err(ctx.mismatch(required, "is required but missing"));
                        }
                        continue;
                    };
                    match &child.action {
                        Some((action, _)) => match transform(ctx, &child.path, action, v)? {
                            Some(new) => *v = new,
                            None => {
                                map.remove(name);
                            }
                        },
                        None => apply_in_place(ctx, child, v)?,
                    }
                }
            }
            Value::Null => return absent(ctx, node),
            _ => return Err(ctx.mismatch(&node_path(node), "must be an object")),
        }
    }
    if let Some(items) = &node.items {
        match value {
            Value::Array(arr) => match &items.action {
                Some((action, _)) => {
                    let mut out = Vec::with_capacity(arr.len());
                    for v in arr.iter() {
                        if let Some(new) = transform(ctx, &items.path, action, v)? {
                            out.push(new);
                        }
                    }
                    *arr = out;
                }
                None => {
                    for v in arr.iter_mut() {
                        apply_in_place(ctx, items, v)?;
                    }
                }
            },
            Value::Null => return absent(ctx, node),
            _ => return Err(ctx.mismatch(&node_path(node), "must be an array")),
        }
    }
    Ok(())
}

/// Allow-list mode: builds a value holding only what the rules name.
fn project(ctx: &Ctx<'_>, node: &Node, value: &Value) -> Result<Option<Value>> {
    if let Some((action, _)) = &node.action {
        return transform(ctx, &node.path, action, value);
    }
    if !node.fields.is_empty() {
        return match value {
            Value::Object(map) => {
                let mut out = Map::new();
                for (name, child) in &node.fields {
                    match map.get(name) {
                        Some(v) => {
                            if let Some(new) = project(ctx, child, v)? {
                                out.insert(name.clone(), new);
                            }
                        }
                        None => {
                            if let Some(required) = &child.required_below {
                                return Err(ctx.mismatch(required, "is required but missing"));
                            }
                        }
                    }
                }
                Ok(Some(Value::Object(out)))
            }
            Value::Null => absent(ctx, node).map(|()| Some(Value::Null)),
            _ => Err(ctx.mismatch(&node_path(node), "must be an object")),
        };
    }
    if let Some(items) = &node.items {
        return match value {
            Value::Array(arr) => {
                let mut out = Vec::with_capacity(arr.len());
                for v in arr {
                    if let Some(new) = project(ctx, items, v)? {
                        out.push(new);
                    }
                }
                Ok(Some(Value::Array(out)))
            }
            Value::Null => absent(ctx, node).map(|()| Some(Value::Null)),
            _ => Err(ctx.mismatch(&node_path(node), "must be an array")),
        };
    }
    Ok(None)
}

fn node_path(node: &Node) -> String {
    if node.path.is_empty() {
        "(root)".to_owned()
    } else {
        node.path.clone()
    }
}

/// A `null` container: fine unless something below it is required.
fn absent(ctx: &Ctx<'_>, node: &Node) -> Result<()> {
    match &node.required_below {
        Some(required) => Err(ctx.mismatch(required, "is required but missing")),
        None => Ok(()),
    }
}

/// Applies `action` to one value; `None` removes it. `null` passes through every action but
/// `drop` (it carries nothing to hide).
fn transform(ctx: &Ctx<'_>, path: &str, action: &Action, value: &Value) -> Result<Option<Value>> {
    if matches!(action, Action::Drop) {
        return Ok(None);
    }
    if value.is_null() {
        return Ok(Some(Value::Null));
    }
    let out = match action {
        Action::Keep => value.clone(),
        Action::Drop => return Ok(None),
        Action::Pseudonym => {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(ctx.mismatch(path, "must be a string or a number to pseudonymize")),
            };
            Value::String(pseudonym_with(ctx.cipher, ctx.key, &text)?)
        }
        Action::Bucket(buckets) => {
            let x = value
                .as_f64()
                .ok_or_else(|| ctx.mismatch(path, "must be a number to bucket"))?;
            Value::String(bucket(buckets, x))
        }
        Action::Time { granularity, unit } => {
            generalize_time(ctx, path, value, *granularity, *unit)?
        }
        Action::Grid { cell } => grid(ctx, path, value, *cell)?,
        Action::Redact(kinds) => {
            let text = value
                .as_str()
                .ok_or_else(|| ctx.mismatch(path, "must be a string to redact"))?;
            let kinds: &[PiiKind] = if kinds.is_empty() {
                &PiiKind::ALL
            } else {
                kinds
            };
            Value::String(ctx.redactor.redact(text, kinds))
        }
    };
    Ok(Some(out))
}

/// Rounds away binary noise (`0.30000000000000004` → `0.3`) for display.
fn tidy(x: f64) -> f64 {
    let r = (x * 1e9).round() / 1e9;
    if r == 0.0 { 0.0 } else { r }
}

fn show(x: f64) -> String {
    format!("{}", tidy(x))
}

fn bucket(buckets: &Buckets, x: f64) -> String {
    match buckets {
        Buckets::Width(w) => {
            let lo = (x / w).floor() * w;
            format!("{}..{}", show(lo), show(lo + w))
        }
        Buckets::Bounds(bounds) => {
            let i = bounds.partition_point(|b| *b <= x);
            match (i.checked_sub(1).and_then(|j| bounds.get(j)), bounds.get(i)) {
                (None, Some(hi)) => format!("<{}", show(*hi)),
                (Some(lo), Some(hi)) => format!("{}..{}", show(*lo), show(*hi)),
                (Some(lo), None) => format!(">={}", show(*lo)),
                (None, None) => String::from("?"),
            }
        }
    }
}

const DAY_SECS: i64 = 86_400;

/// Start of the day or of the Monday-based week holding `secs`, in seconds.
fn truncate_secs(secs: i64, granularity: Granularity) -> i64 {
    let day = secs.div_euclid(DAY_SECS);
    let start_day = match granularity {
        Granularity::Day => day,
        // 1970-01-01 was a Thursday: day + 3 counts from a Monday.
        Granularity::Week => (day + 3).div_euclid(7) * 7 - 3,
    };
    start_day * DAY_SECS
}

fn generalize_time(
    ctx: &Ctx<'_>,
    path: &str,
    value: &Value,
    granularity: Granularity,
    unit: EpochUnit,
) -> Result<Value> {
    match value {
        Value::String(s) => {
            let t = OffsetDateTime::parse(s, &Rfc3339)
                .map_err(|_| ctx.mismatch(path, "must be an RFC 3339 timestamp"))?;
            let secs = truncate_secs(t.to_offset(UtcOffset::UTC).unix_timestamp(), granularity);
            let out = OffsetDateTime::from_unix_timestamp(secs)
                .map_err(|_| ctx.mismatch(path, "is out of range"))?
                .format(&Rfc3339)
                .map_err(|_| ctx.mismatch(path, "is out of range"))?;
            Ok(Value::String(out))
        }
        Value::Number(n) => {
            let v = n
                .as_i64()
                .ok_or_else(|| ctx.mismatch(path, "must be an integer timestamp"))?;
            let out = match unit {
                EpochUnit::Seconds => truncate_secs(v, granularity),
                EpochUnit::Millis => truncate_secs(v.div_euclid(1000), granularity)
                    .checked_mul(1000)
                    .ok_or_else(|| ctx.mismatch(path, "is out of range"))?,
            };
            Ok(Value::Number(out.into()))
        }
        _ => Err(ctx.mismatch(path, "must be an RFC 3339 string or an integer timestamp")),
    }
}

fn snap(x: f64, cell: f64) -> f64 {
    tidy((x / cell).floor() * cell)
}

fn number(x: f64) -> Option<Value> {
    Number::from_f64(x).map(Value::Number)
}

fn grid(ctx: &Ctx<'_>, path: &str, value: &Value, cell: f64) -> Result<Value> {
    const NAMES: [(&str, &str); 3] = [("lat", "lon"), ("lat", "lng"), ("latitude", "longitude")];
    match value {
        Value::Number(n) => {
            let x = n
                .as_f64()
                .ok_or_else(|| ctx.mismatch(path, "must be a number"))?;
            number(snap(x, cell)).ok_or_else(|| ctx.mismatch(path, "is out of range"))
        }
        Value::Object(map) => {
            let (lat_name, lon_name) = NAMES
                .into_iter()
                .find(|(a, b)| map.contains_key(*a) && map.contains_key(*b))
                .ok_or_else(|| {
                    ctx.mismatch(path, "must hold lat/lon, lat/lng or latitude/longitude")
                })?;
            let lat = map.get(lat_name).and_then(Value::as_f64);
            let lon = map.get(lon_name).and_then(Value::as_f64);
            let (Some(lat), Some(lon)) = (lat, lon) else {
                return Err(ctx.mismatch(path, "must hold numeric coordinates"));
            };
            if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
                return Err(ctx.mismatch(path, "holds coordinates out of range"));
            }
            let mut out = Map::new();
            for (name, x) in [(lat_name, lat), (lon_name, lon)] {
                let v =
                    number(snap(x, cell)).ok_or_else(|| ctx.mismatch(path, "is out of range"))?;
                out.insert(name.to_owned(), v);
            }
            Ok(Value::Object(out))
        }
        _ => Err(ctx.mismatch(path, "must be a number or a coordinate object")),
    }
}

#[cfg(test)]
mod tests;
