//! Segment conditions in GrowthBook's condition language (MongoDB-like JSON).
//!
//! A condition is compiled once, when a tenant's rules are loaded, into a tree of [`Clause`]s
//! and [`Test`]s: operators are resolved to enum variants, regexes compiled, version literals
//! padded and attribute paths split. Evaluation then walks the tree against borrowed JSON
//! attributes and allocates nothing for the operators segments are made of (equality, `$in`,
//! comparisons, `$exists`, `$regex` on strings, `$type`, boolean combinators).
//!
//! Two ways to compile, one semantics:
//! - [`Condition::compile`] is strict: an unknown operator, an invalid regex or a malformed
//!   operand is an error naming the JSON path inside the condition, so a marketer's typo is
//!   caught at load, not silently evaluated as "never matches".
//! - [`Condition::compile_lenient`] accepts whatever the reference SDK accepts and evaluates
//!   it exactly as the reference does at run time (an unknown operator is false, an invalid
//!   regex never matches). It exists for interoperability with conditions authored for
//!   GrowthBook, and it is what the conformance suite runs.

use std::collections::HashMap;
use std::fmt;

use regex::Regex;
use serde_json::{Map, Value};

use crate::js;
use crate::version;

/// Saved groups: named lists of attribute values referenced by `$inGroup` / `$notInGroup`.
pub type SavedGroups = HashMap<String, Vec<Value>>;

/// Why a condition was rejected, and where inside it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at {path}: {message}")]
pub struct ConditionError {
    /// JSON path inside the condition, e.g. `$.$and[1].bday.$regex`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// A compiled condition: every clause must hold.
#[derive(Debug, Clone)]
pub struct Condition {
    clauses: Vec<Clause>,
}

#[derive(Debug, Clone)]
enum Clause {
    Or(Vec<Condition>),
    Nor(Vec<Condition>),
    And(Vec<Condition>),
    Not(Box<Condition>),
    /// `$or`/`$and`/`$nor` with a non-array operand: the reference's loop over `.length`
    /// (undefined) runs zero times, so the clause holds (or fails, for `$nor`).
    Constant(bool),
    Path(AttrPath, Test),
}

/// A dotted attribute path, split once.
#[derive(Debug, Clone)]
struct AttrPath(Box<[Box<str>]>);

impl AttrPath {
    fn new(path: &str) -> Self {
        AttrPath(path.split('.').map(Box::from).collect())
    }

    /// The reference's `getPath`: walks objects by key and arrays by canonical index; anything
    /// else yields `None`, which behaves as JavaScript `null`.
    fn resolve<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        let mut current = root;
        for part in self.0.iter() {
            current = match current {
                Value::Object(map) => map.get(&**part)?,
                Value::Array(items) => items.get(array_index(part)?)?,
                _ => return None,
            };
        }
        Some(current)
    }
}

/// JavaScript's `"3" in array`: only canonical decimal indices name elements.
fn array_index(part: &str) -> Option<usize> {
    if part.len() > 1 && part.starts_with('0') {
        return None;
    }
    part.parse().ok()
}

/// A test of one value (the reference's `evalConditionValue`).
#[derive(Debug, Clone)]
enum Test {
    /// `value + "" === s` (or case-insensitively, inside `$alli`).
    Str(Box<str>),
    /// `value * 1 === n`.
    Num(f64),
    /// `value !== null && !!value === b`.
    Bool(bool),
    /// `value === null`.
    Null,
    /// Arrays and non-operator objects: `JSON.stringify` equality.
    Json(Value),
    /// An operator object: every operator must hold.
    Ops(Vec<Op>),
}

#[derive(Debug, Clone)]
enum Op {
    Version(VersionCmp, String),
    Eq(Value),
    Ne(Value),
    Lt(Value),
    Lte(Value),
    Gt(Value),
    Gte(Value),
    Exists(bool),
    In(Vec<Value>),
    Nin(Vec<Value>),
    InFold(Vec<Value>),
    NinFold(Vec<Value>),
    InGroup(String),
    NotInGroup(String),
    Not(Box<Test>),
    Size(Box<Test>),
    ElemMatchValue(Box<Test>),
    ElemMatchCondition(Box<Condition>),
    All(Vec<Test>),
    AllFold(Vec<Test>),
    Regex(Regex),
    Type(Box<str>),
    /// What the reference evaluates as false: an unknown operator, an invalid regex, a
    /// non-array operand to `$in`/`$nin`/`$all`. Only [`Condition::compile_lenient`] makes it.
    Never,
}

#[derive(Debug, Clone, Copy)]
enum VersionCmp {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
}

struct Compiler {
    strict: bool,
}

/// Builds a JSON path for error messages only when an error is actually reported.
#[derive(Clone, Copy)]
enum Loc<'a> {
    Root,
    Key(&'a Loc<'a>, &'a str),
    Index(&'a Loc<'a>, usize),
}

impl fmt::Display for Loc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Root => f.write_str("$"),
            Loc::Key(parent, key) => write!(f, "{parent}.{key}"),
            Loc::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

fn err(loc: &Loc<'_>, message: impl Into<String>) -> ConditionError {
    ConditionError {
        path: loc.to_string(),
        message: message.into(),
    }
}

impl Condition {
    /// Compiles a condition, rejecting anything that would silently never match.
    pub fn compile(json: &Value) -> Result<Self, ConditionError> {
        Compiler { strict: true }.condition(json, &Loc::Root)
    }

    /// Compiles a condition with the reference SDK's run-time tolerance (see the module docs).
    /// Only a condition that is not a JSON object at all is an error.
    pub fn compile_lenient(json: &Value) -> Result<Self, ConditionError> {
        Compiler { strict: false }.condition(json, &Loc::Root)
    }

    /// A condition that always holds (`{}`).
    pub fn always() -> Self {
        Condition {
            clauses: Vec::new(),
        }
    }

    /// Evaluates the condition against an attributes object.
    pub fn matches(&self, attributes: &Value, groups: &SavedGroups) -> bool {
        self.clauses.iter().all(|c| c.matches(attributes, groups))
    }
}

impl Compiler {
    fn condition(&self, json: &Value, loc: &Loc<'_>) -> Result<Condition, ConditionError> {
        let Value::Object(map) = json else {
            return Err(err(
                loc,
                format!("a condition must be a JSON object, found {}", kind(json)),
            ));
        };
        let mut clauses = Vec::with_capacity(map.len());
        for (key, value) in map {
            let here = Loc::Key(loc, key);
            let clause = match key.as_str() {
                "$or" => self
                    .list(value, &here)?
                    .map_or(Clause::Constant(true), Clause::Or),
                "$nor" => self
                    .list(value, &here)?
                    .map_or(Clause::Constant(false), Clause::Nor),
                "$and" => self
                    .list(value, &here)?
                    .map_or(Clause::Constant(true), Clause::And),
                "$not" => Clause::Not(Box::new(self.condition(value, &here)?)),
                _ => {
                    if self.strict && key.is_empty() {
                        return Err(err(&here, "empty attribute name"));
                    }
                    Clause::Path(AttrPath::new(key), self.test(value, &here, false)?)
                }
            };
            clauses.push(clause);
        }
        Ok(Condition { clauses })
    }

    /// Operands of `$or`/`$and`/`$nor`: `None` when not an array (lenient mode only).
    fn list(&self, value: &Value, loc: &Loc<'_>) -> Result<Option<Vec<Condition>>, ConditionError> {
        match value {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, c)| self.condition(c, &Loc::Index(loc, i)))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            other if self.strict => Err(err(
                loc,
                format!("expected an array of conditions, found {}", kind(other)),
            )),
            _ => Ok(None),
        }
    }

    fn test(&self, value: &Value, loc: &Loc<'_>, fold: bool) -> Result<Test, ConditionError> {
        Ok(match value {
            Value::String(s) if fold => Test::Str(s.to_lowercase().into()),
            Value::String(s) => Test::Str(s.as_str().into()),
            Value::Number(n) => Test::Num(js::num(n)),
            Value::Bool(b) => Test::Bool(*b),
            Value::Null => Test::Null,
            Value::Array(_) => Test::Json(value.clone()),
            Value::Object(map) if is_operator_object(map) => {
                let mut ops = Vec::with_capacity(map.len());
                for (op, operand) in map {
                    ops.push(self.op(op, operand, &Loc::Key(loc, op))?);
                }
                Test::Ops(ops)
            }
            Value::Object(map) => {
                if self.strict
                    && let Some(op) = map.keys().find(|k| k.starts_with('$'))
                {
                    return Err(err(
                        &Loc::Key(loc, op),
                        "operators cannot be mixed with plain keys in one object (it would be compared as a literal)",
                    ));
                }
                Test::Json(value.clone())
            }
        })
    }

    fn op(&self, op: &str, operand: &Value, loc: &Loc<'_>) -> Result<Op, ConditionError> {
        let never = |message: String| {
            if self.strict {
                Err(err(loc, message))
            } else {
                Ok(Op::Never)
            }
        };
        let array = |operand: &Value| match operand {
            Value::Array(items) => Ok(Some(items.clone())),
            other => never(format!("{op} expects an array, found {}", kind(other))).map(|_| None),
        };
        let version = |cmp| {
            if self.strict && !(operand.is_string() || operand.is_number()) {
                return Err(err(
                    loc,
                    format!("{op} expects a version string, found {}", kind(operand)),
                ));
            }
            Ok(Op::Version(cmp, version::padded(Some(operand))))
        };
        Ok(match op {
            "$veq" => version(VersionCmp::Eq)?,
            "$vne" => version(VersionCmp::Ne)?,
            "$vgt" => version(VersionCmp::Gt)?,
            "$vgte" => version(VersionCmp::Gte)?,
            "$vlt" => version(VersionCmp::Lt)?,
            "$vlte" => version(VersionCmp::Lte)?,
            "$eq" => Op::Eq(operand.clone()),
            "$ne" => Op::Ne(operand.clone()),
            "$lt" => Op::Lt(operand.clone()),
            "$lte" => Op::Lte(operand.clone()),
            "$gt" => Op::Gt(operand.clone()),
            "$gte" => Op::Gte(operand.clone()),
            "$exists" => Op::Exists(js::truthy(Some(operand))),
            "$in" => array(operand)?.map_or(Op::Never, Op::In),
            "$nin" => array(operand)?.map_or(Op::Never, Op::Nin),
            "$ini" => array(operand)?.map_or(Op::Never, Op::InFold),
            "$nini" => array(operand)?.map_or(Op::Never, Op::NinFold),
            "$inGroup" | "$notInGroup" => {
                let Value::String(group) = operand else {
                    return never(format!(
                        "{op} expects a saved group id (a string), found {}",
                        kind(operand)
                    ));
                };
                if op == "$inGroup" {
                    Op::InGroup(group.clone())
                } else {
                    Op::NotInGroup(group.clone())
                }
            }
            "$not" => Op::Not(Box::new(self.test(operand, loc, false)?)),
            "$size" => Op::Size(Box::new(self.test(operand, loc, false)?)),
            "$elemMatch" => match operand {
                Value::Object(map) if is_operator_object(map) => {
                    Op::ElemMatchValue(Box::new(self.test(operand, loc, false)?))
                }
                _ => Op::ElemMatchCondition(Box::new(self.condition(operand, loc)?)),
            },
            "$all" | "$alli" => match array(operand)? {
                Some(items) => {
                    let fold = op == "$alli";
                    let tests = items
                        .iter()
                        .enumerate()
                        .map(|(i, t)| self.test(t, &Loc::Index(loc, i), fold))
                        .collect::<Result<Vec<_>, _>>()?;
                    if fold {
                        Op::AllFold(tests)
                    } else {
                        Op::All(tests)
                    }
                }
                None => Op::Never,
            },
            "$regex" | "$regexi" => {
                let Value::String(pattern) = operand else {
                    return never(format!(
                        "{op} expects a pattern string, found {}",
                        kind(operand)
                    ));
                };
                match regex::RegexBuilder::new(pattern)
                    .case_insensitive(op == "$regexi")
                    .build()
                {
                    Ok(re) => Op::Regex(re),
                    Err(e) => {
                        return never(format!(
                            "invalid regular expression {pattern:?}: {}",
                            first_line(&e.to_string())
                        ));
                    }
                }
            }
            "$type" => match operand {
                Value::String(t) => {
                    if self.strict
                        && !matches!(
                            t.as_str(),
                            "string" | "number" | "boolean" | "object" | "array" | "null"
                        )
                    {
                        return Err(err(
                            loc,
                            format!(
                                "unknown type {t:?}: expected string, number, boolean, object, array or null"
                            ),
                        ));
                    }
                    Op::Type(t.as_str().into())
                }
                other => return never(format!("$type expects a type name, found {}", kind(other))),
            },
            unknown => return never(format!("unknown operator {unknown:?}")),
        })
    }
}

fn first_line(s: &str) -> &str {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The reference's `isOperatorObject`: non-empty, and every key starts with `$`.
fn is_operator_object(map: &Map<String, Value>) -> bool {
    !map.is_empty() && map.keys().all(|k| k.starts_with('$'))
}

impl Clause {
    fn matches(&self, attrs: &Value, groups: &SavedGroups) -> bool {
        match self {
            Clause::Or(list) => list.is_empty() || list.iter().any(|c| c.matches(attrs, groups)),
            Clause::Nor(list) => {
                !(list.is_empty() || list.iter().any(|c| c.matches(attrs, groups)))
            }
            Clause::And(list) => list.iter().all(|c| c.matches(attrs, groups)),
            Clause::Not(c) => !c.matches(attrs, groups),
            Clause::Constant(b) => *b,
            Clause::Path(path, test) => test.matches(path.resolve(attrs), groups, false),
        }
    }
}

impl Test {
    fn matches(&self, value: Option<&Value>, groups: &SavedGroups, fold: bool) -> bool {
        match self {
            Test::Str(s) if fold => js::to_js_string(value).to_lowercase() == **s,
            Test::Str(s) => js::string_equals(value, s),
            Test::Num(n) => js::to_number(value) == *n,
            Test::Bool(b) => !matches!(value, None | Some(Value::Null)) && js::truthy(value) == *b,
            Test::Null => matches!(value, None | Some(Value::Null)),
            Test::Json(expected) => js::json_equals(value, expected),
            Test::Ops(ops) => ops.iter().all(|op| op.matches(value, groups)),
        }
    }
}

fn is_in(actual: Option<&Value>, expected: &[Value], eq: fn(&Value, &Value) -> bool) -> bool {
    let null = Value::Null;
    match actual.unwrap_or(&null) {
        Value::Array(items) => items.iter().any(|el| expected.iter().any(|e| eq(el, e))),
        one => expected.iter().any(|e| eq(one, e)),
    }
}

fn same_value_zero(a: &Value, b: &Value) -> bool {
    js::strict_equals(Some(a), b)
}

impl Op {
    fn matches(&self, actual: Option<&Value>, groups: &SavedGroups) -> bool {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match self {
            Op::Version(cmp, expected) => {
                let actual = version::padded(actual);
                let ord = js::cmp_utf16(&actual, expected);
                match cmp {
                    VersionCmp::Eq => ord == Equal,
                    VersionCmp::Ne => ord != Equal,
                    VersionCmp::Gt => ord == Greater,
                    VersionCmp::Gte => ord != Less,
                    VersionCmp::Lt => ord == Less,
                    VersionCmp::Lte => ord != Greater,
                }
            }
            Op::Eq(e) => js::strict_equals(actual, e),
            Op::Ne(e) => !js::strict_equals(actual, e),
            Op::Lt(e) => js::js_compare(actual, Some(e)) == Some(Less),
            Op::Lte(e) => matches!(js::js_compare(actual, Some(e)), Some(Less | Equal)),
            Op::Gt(e) => js::js_compare(actual, Some(e)) == Some(Greater),
            Op::Gte(e) => matches!(js::js_compare(actual, Some(e)), Some(Greater | Equal)),
            Op::Exists(want) => *want != matches!(actual, None | Some(Value::Null)),
            Op::In(list) => is_in(actual, list, same_value_zero),
            Op::Nin(list) => !is_in(actual, list, same_value_zero),
            Op::InFold(list) => is_in(actual, list, js::fold_eq),
            Op::NinFold(list) => !is_in(actual, list, js::fold_eq),
            Op::InGroup(g) => is_in(
                actual,
                groups.get(g).map_or(&[], Vec::as_slice),
                same_value_zero,
            ),
            Op::NotInGroup(g) => !is_in(
                actual,
                groups.get(g).map_or(&[], Vec::as_slice),
                same_value_zero,
            ),
            Op::Not(t) => !t.matches(actual, groups, false),
            Op::Size(t) => match actual {
                Some(Value::Array(items)) => {
                    #[expect(
                        clippy::cast_precision_loss,
                        reason = "array lengths are far below 2^53"
                    )]
                    let len = Value::from(items.len() as f64);
                    t.matches(Some(&len), groups, false)
                }
                _ => false,
            },
            Op::ElemMatchValue(t) => match actual {
                Some(Value::Array(items)) => items
                    .iter()
                    .any(|el| js::truthy(Some(el)) && t.matches(Some(el), groups, false)),
                _ => false,
            },
            Op::ElemMatchCondition(c) => match actual {
                Some(Value::Array(items)) => items
                    .iter()
                    .any(|el| js::truthy(Some(el)) && c.matches(el, groups)),
                _ => false,
            },
            Op::All(tests) | Op::AllFold(tests) => {
                let fold = matches!(self, Op::AllFold(_));
                match actual {
                    Some(Value::Array(items)) => tests
                        .iter()
                        .all(|t| items.iter().any(|el| t.matches(Some(el), groups, fold))),
                    _ => false,
                }
            }
            Op::Regex(re) => match actual {
                Some(Value::String(s)) => re.is_match(s),
                other => re.is_match(&js::to_js_string(other)),
            },
            Op::Type(t) => js::type_name(actual) == &**t,
            Op::Never => false,
        }
    }
}
