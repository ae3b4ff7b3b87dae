//! CustomResourceDefinitions in the stand-in: a created CRD makes its group served
//! (discovery, CRUD, list/watch, status subresource, tables with its printer columns),
//! and its objects are checked against its structural schema the way the real API
//! server checks them: types, `format: cidr`, bounds, lengths, patterns, enums,
//! int-or-string, required fields, defaults, unknown fields (refused under
//! `fieldValidation=Strict`, else pruned). Not done: CEL (`x-kubernetes-validations`),
//! conversion between versions, `additionalProperties: false`.

use std::sync::{Mutex, OnceLock};

use serde_json::{json, Value};

use super::store::{age_secs, ApiError};

/// What a CRD defines, kept for the life of the test process.
#[derive(Debug)]
pub struct CustomKind {
    /// API group, e.g. `extip.io`.
    pub group: String,
    /// The served version.
    pub version: String,
    /// `group/version`.
    pub api_version: String,
    /// Plural, as in URLs.
    pub plural: String,
    /// Singular, for `kubectl get ippool`.
    pub singular: String,
    /// Kind of one object.
    pub kind: String,
    /// Kind of a list.
    pub list_kind: String,
    /// Short names, for `kubectl get ipp`.
    pub short_names: Vec<String>,
    /// Namespaced (else cluster-scoped).
    pub namespaced: bool,
    /// `openAPIV3Schema` of the served version.
    pub schema: Value,
    /// `additionalPrinterColumns` of the served version.
    pub columns: Vec<Value>,
    /// Whether `/status` is a subresource.
    pub status: bool,
}

fn registry() -> &'static Mutex<Vec<&'static CustomKind>> {
    static KINDS: OnceLock<Mutex<Vec<&'static CustomKind>>> = OnceLock::new();
    KINDS.get_or_init(|| Mutex::new(Vec::new()))
}

/// The kind registered under `index`.
pub fn custom_kind(index: usize) -> &'static CustomKind {
    registry().lock().expect("kinds")[index]
}

/// The index of the kind `group`/`plural`, if some CRD in this process defined it.
pub fn find_kind(group: &str, plural: &str) -> Option<usize> {
    let kinds = registry().lock().expect("kinds");
    kinds
        .iter()
        .position(|k| k.group == group && k.plural == plural)
}

fn invalid(kind: &str, name: &str, causes: &[String]) -> ApiError {
    ApiError {
        code: 422,
        reason: "Invalid",
        message: format!("{kind} \"{name}\" is invalid: {}", causes.join(", ")),
    }
}

/// Register the kind a CRD object defines (the same definition again reuses its
/// index); the object comes back with the status the real server gives an
/// established CRD.
pub fn define(crd: &mut Value) -> Result<usize, ApiError> {
    let name = crd["metadata"]["name"].as_str().unwrap_or("").to_string();
    let spec = &crd["spec"];
    let names = &spec["names"];
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    let version = spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["served"] == true && v["storage"] == true)
        .cloned()
        .unwrap_or(Value::Null);
    let (group, plural) = (text(&spec["group"]), text(&names["plural"]));
    let mut causes = Vec::new();
    if name != format!("{plural}.{group}") {
        causes.push(format!(
            "metadata.name: Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
        ));
    }
    if version.is_null() {
        causes.push(
            "spec.versions: Invalid value: must have exactly one version marked as storage version"
                .into(),
        );
    }
    if !causes.is_empty() {
        return Err(invalid(
            "CustomResourceDefinition.apiextensions.k8s.io",
            &name,
            &causes,
        ));
    }
    let kind = CustomKind {
        api_version: format!("{group}/{}", text(&version["name"])),
        version: text(&version["name"]),
        group: group.clone(),
        singular: names["singular"]
            .as_str()
            .map_or_else(|| text(&names["kind"]).to_lowercase(), str::to_string),
        list_kind: names["listKind"]
            .as_str()
            .map_or_else(|| format!("{}List", text(&names["kind"])), str::to_string),
        kind: text(&names["kind"]),
        plural: plural.clone(),
        short_names: names["shortNames"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect(),
        namespaced: spec["scope"] != "Cluster",
        schema: version["schema"]["openAPIV3Schema"].clone(),
        columns: version["additionalPrinterColumns"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
        status: !version["subresources"]["status"].is_null(),
    };
    crd["status"] = json!({
        "acceptedNames": names,
        "storedVersions": [kind.version],
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found"},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"},
        ],
    });
    let mut kinds = registry().lock().expect("kinds");
    if let Some(i) = kinds
        .iter()
        .position(|k| k.group == group && k.plural == plural)
    {
        return Ok(i);
    }
    kinds.push(Box::leak(Box::new(kind)));
    Ok(kinds.len() - 1)
}

/// Check `obj` against the schema of `kind`, filling defaults and dropping unknown
/// fields (or refusing them when `strict`). Only `spec` and `status` are checked.
pub fn admit(kind: &CustomKind, obj: &mut Value, strict: bool) -> Result<(), ApiError> {
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let mut causes = Vec::new();
    let mut unknown = Vec::new();
    let props = &kind.schema["properties"];
    for (field, required) in [("spec", true), ("status", false)] {
        let schema = &props[field];
        if schema.is_null() || obj[field].is_null() {
            let listed = kind.schema["required"]
                .as_array()
                .is_some_and(|r| r.iter().any(|f| f == field));
            if required && listed && obj[field].is_null() {
                causes.push(format!("{field}: Required value"));
            }
            continue;
        }
        let mut value = obj[field].take();
        check(schema, &mut value, field, &mut causes, &mut unknown);
        obj[field] = value;
    }
    if strict && !unknown.is_empty() {
        let list: Vec<String> = unknown
            .iter()
            .map(|u| format!("unknown field \"{u}\""))
            .collect();
        return Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
            kind.kind,
            kind.version,
            kind.kind,
            list.join(", ")
        )));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        let full = format!("{}.{}", kind.kind, kind.group);
        Err(invalid(&full, &name, &causes))
    }
}

/// Check one value at `path`; errors in the real server's words go to `causes`,
/// fields the schema does not know to `unknown` (and out of the value).
fn check(
    schema: &Value,
    v: &mut Value,
    path: &str,
    causes: &mut Vec<String>,
    unknown: &mut Vec<String>,
) {
    if schema["x-kubernetes-int-or-string"] == true {
        if !(v.is_i64() || v.is_u64() || v.is_string()) {
            causes.push(format!(
                "{path}: Invalid value: \"{}\": {path} in body must be of type integer or string",
                type_name(v)
            ));
            return;
        }
        if let Some(branches) = schema["anyOf"].as_array() {
            let fits = |b: &Value| type_fits(&b["type"], v);
            if let Some(branch) = branches.iter().find(|b| fits(b)) {
                check_value(branch, v, path, causes);
            }
        }
        return;
    }
    if !type_fits(&schema["type"], v) {
        let want = schema["type"].as_str().unwrap_or("");
        causes.push(format!(
            "{path}: Invalid value: \"{}\": {path} in body must be of type {want}: \"{}\"",
            type_name(v),
            type_name(v)
        ));
        return;
    }
    check_value(schema, v, path, causes);
    let Some(fields) = v.as_object_mut() else {
        return;
    };
    for req in schema["required"].as_array().into_iter().flatten() {
        let req = req.as_str().unwrap_or("");
        if !fields.contains_key(req) {
            causes.push(format!("{path}.{req}: Required value"));
        }
    }
    let props = schema["properties"].as_object();
    if let Some(props) = props {
        for (name, sub) in props {
            if !fields.contains_key(name) && !sub["default"].is_null() {
                fields.insert(name.clone(), sub["default"].clone());
            }
        }
    }
    let extra = &schema["additionalProperties"];
    let keys: Vec<String> = fields.keys().cloned().collect();
    for key in keys {
        let sub = props
            .and_then(|p| p.get(&key))
            .or(extra.is_object().then_some(extra));
        let child = format!("{path}.{key}");
        match sub {
            Some(sub) => check(
                sub,
                fields.get_mut(&key).expect("key"),
                &child,
                causes,
                unknown,
            ),
            None if schema["x-kubernetes-preserve-unknown-fields"] == true => {}
            None => {
                fields.remove(&key);
                unknown.push(child);
            }
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), v.as_array_mut()) {
        for (i, item) in list.iter_mut().enumerate() {
            check(items, item, &format!("{path}[{i}]"), causes, unknown);
        }
    }
}

/// Value validations: format, bounds, lengths, pattern, enum.
fn check_value(schema: &Value, v: &Value, path: &str, causes: &mut Vec<String>) {
    let shown = match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    };
    if let (Some("cidr"), Some(s)) = (schema["format"].as_str(), v.as_str()) {
        if s.parse::<ipnet::IpNet>().is_err() {
            causes.push(format!(
                "{path}: Invalid value: {shown}: {path} in body must be of type cidr: {shown}"
            ));
        }
    }
    if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), v.as_f64()) {
        if n < min {
            causes.push(format!("{path}: Invalid value: {shown}: {path} in body should be greater than or equal to {min}"));
        }
    }
    if let (Some(max), Some(n)) = (schema["maximum"].as_f64(), v.as_f64()) {
        if n > max {
            causes.push(format!("{path}: Invalid value: {shown}: {path} in body should be less than or equal to {max}"));
        }
    }
    if let Some(s) = v.as_str() {
        if let Some(max) = schema["maxLength"].as_u64() {
            if s.len() as u64 > max {
                causes.push(format!(
                    "{path}: Too long: may not be more than {max} bytes"
                ));
            }
        }
        if schema["minLength"]
            .as_u64()
            .is_some_and(|min| (s.len() as u64) < min)
        {
            causes.push(format!(
                "{path}: Invalid value: {shown}: {path} in body should be at least {} chars long",
                schema["minLength"]
            ));
        }
        if let Some(p) = schema["pattern"].as_str() {
            let re = regex::Regex::new(p).expect("the CRD's pattern compiles");
            if !re.is_match(s) {
                causes.push(format!(
                    "{path}: Invalid value: {shown}: {path} in body should match '{p}'"
                ));
            }
        }
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(ToString::to_string).collect();
            causes.push(format!(
                "{path}: Unsupported value: {shown}: supported values: {}",
                list.join(", ")
            ));
        }
    }
}

fn type_fits(want: &Value, v: &Value) -> bool {
    match want.as_str() {
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        _ => true,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Table columns of `kind`: Name, then its printer columns (as the real server adds them).
pub fn columns(kind: &CustomKind) -> Vec<Value> {
    let mut out = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}),
    ];
    out.extend(kind.columns.iter().map(|c| {
        json!({"name": c["name"], "type": c["type"], "format": c["format"].as_str().unwrap_or(""),
               "description": c["description"].as_str().unwrap_or(""), "priority": c["priority"].as_i64().unwrap_or(0)})
    }));
    out
}

/// Table cells of `obj`, per [`columns`]; a `date` column reads as an age, as the real
/// server converts it.
pub fn cells(kind: &CustomKind, obj: &Value) -> Vec<Value> {
    let mut out = vec![obj["metadata"]["name"].clone()];
    for c in &kind.columns {
        let found = json_path(obj, c["jsonPath"].as_str().unwrap_or(""));
        out.push(match (c["type"].as_str(), found) {
            (_, None) => Value::Null,
            (Some("date"), Some(v)) => json!(age_text(v.as_str().map_or(0, age_secs))),
            (_, Some(v)) => v,
        });
    }
    out
}

/// The age the way kubectl prints it.
pub fn age_text(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        _ => format!("{}h", secs / 3600),
    }
}

/// `path` split at the dots that are not inside brackets.
fn path_parts(path: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut depth = 0;
    for ch in path.trim_start_matches('.').chars() {
        match ch {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ => {}
        }
        if ch == '.' && depth == 0 {
            parts.push(String::new());
        } else {
            parts.last_mut().expect("a part").push(ch);
        }
    }
    parts
}

/// The subset of JSONPath printer columns use: `.a.b`, `.a[0]`, `.a[?(@.k=="v")].b`.
fn json_path(obj: &Value, path: &str) -> Option<Value> {
    let mut at = obj.clone();
    for part in path_parts(path) {
        let (field, filter) = match part.split_once('[') {
            Some((f, rest)) => (f.to_string(), Some(rest.trim_end_matches(']').to_string())),
            None => (part.clone(), None),
        };
        if !field.is_empty() {
            at = at.get(&field)?.clone();
        }
        match filter.as_deref() {
            Some(f) if f.starts_with("?(@.") => {
                let cond = f.trim_start_matches("?(@.").trim_end_matches(')');
                let (key, want) = cond.split_once("==")?;
                let want = want.trim_matches('"');
                at = at.as_array()?.iter().find(|e| e[key] == want)?.clone();
            }
            Some(index) => at = at.get(index.parse::<usize>().ok()?)?.clone(),
            None => {}
        }
    }
    Some(at)
}
