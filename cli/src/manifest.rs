//! Kubernetes manifests as documents: reading YAML streams and JSON (with the document and line
//! of any error), writing them back in the same format, and checking objects against the API's
//! types.

use serde::Deserialize as _;
use serde_json::Value;

/// The format a manifest was written in; output keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A YAML stream of documents separated by `---`.
    Yaml,
    /// One JSON value, or several one after the other.
    Json,
}

/// A manifest that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: document {document}{}: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
pub struct ParseError {
    /// The file (or `<stdin>`).
    pub source_name: String,
    /// The document's position in the stream, from 1.
    pub document: usize,
    /// The line in the file, from 1, when known.
    pub line: Option<usize>,
    /// What was wrong.
    pub message: String,
}

/// Reads the documents of `text`: JSON when it starts with `{` or `[`, YAML otherwise. Empty
/// YAML documents are dropped.
pub fn parse(text: &str, source_name: &str) -> Result<(Format, Vec<Value>), ParseError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let mut docs = Vec::new();
        let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        for (i, doc) in stream.enumerate() {
            match doc {
                Ok(doc) => docs.push(doc),
                Err(e) => {
                    return Err(ParseError {
                        source_name: source_name.into(),
                        document: i + 1,
                        line: Some(e.line()),
                        message: strip_position(&e.to_string()),
                    })
                }
            }
        }
        return Ok((Format::Json, docs));
    }
    let mut docs = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(de) {
            Ok(Value::Null) => {}
            Ok(doc) => docs.push(doc),
            Err(e) => {
                return Err(ParseError {
                    source_name: source_name.into(),
                    document: i + 1,
                    line: e.location().map(|l| l.line()),
                    message: strip_position(&e.to_string()),
                })
            }
        }
    }
    Ok((Format::Yaml, docs))
}

/// serde's messages carry their own "at line L column C"; the error says it once.
fn strip_position(message: &str) -> String {
    let Some(start) = message.find(" at line ") else {
        return message.to_string();
    };
    let rest = &message[start + " at line ".len()..];
    let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let mut end = digits(rest);
    if let Some(col) = rest[end..].strip_prefix(" column ") {
        end += " column ".len() + digits(col);
    }
    format!("{}{}", &message[..start], &rest[end..])
}

/// Writes documents: YAML separated by `---`, or JSON (pretty, one value per document).
pub fn write(format: Format, docs: &[Value]) -> String {
    let mut out = String::new();
    for doc in docs {
        match format {
            Format::Yaml => {
                out.push_str("---\n");
                // Invariant: a serde_json::Value always serializes to YAML.
                out.push_str(&serde_yaml_ng::to_string(doc).expect("a JSON value is YAML"));
            }
            Format::Json => {
                out.push_str(&serde_json::to_string_pretty(doc).expect("a JSON value serializes"));
                out.push('\n');
            }
        }
    }
    out
}

/// `kind/name` (with the namespace when there is one), for messages.
pub fn describe(doc: &Value) -> String {
    let kind = doc["kind"].as_str().unwrap_or("<no kind>");
    let name = doc["metadata"]["name"]
        .as_str()
        .or_else(|| doc["metadata"]["generateName"].as_str())
        .unwrap_or("<no name>");
    match doc["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{}/{name} in {ns}", kind.to_lowercase()),
        None => format!("{}/{name}", kind.to_lowercase()),
    }
}

/// Checks that `doc` is an object of the Kubernetes API: it deserializes into its k8s-openapi
/// type and serializes back to the same value (so no field is misspelt or misplaced). Nulls are
/// ignored, as the API server ignores them.
pub fn check_typed(doc: &Value) -> Result<(), String> {
    use k8s_openapi::api::{
        admissionregistration::v1 as admission, apps::v1 as apps, batch::v1 as batch,
        core::v1 as core, policy::v1 as policy, rbac::v1 as rbac,
    };
    fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
        doc: &Value,
    ) -> Result<(), String> {
        let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
        let back = serde_json::to_value(typed).map_err(|e| e.to_string())?;
        let (want, got) = (without_nulls(doc), without_nulls(&back));
        if let Some(path) = lost(&want, &got, String::new()) {
            return Err(format!(
                "a field the type does not have or reads otherwise: {path}"
            ));
        }
        Ok(())
    }
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    match (api_version, kind) {
        ("v1", "Namespace") => round_trip::<core::Namespace>(doc),
        ("v1", "ServiceAccount") => round_trip::<core::ServiceAccount>(doc),
        ("v1", "Service") => round_trip::<core::Service>(doc),
        ("v1", "ConfigMap") => round_trip::<core::ConfigMap>(doc),
        ("v1", "Secret") => round_trip::<core::Secret>(doc),
        ("v1", "Pod") => round_trip::<core::Pod>(doc),
        ("v1", "ReplicationController") => round_trip::<core::ReplicationController>(doc),
        ("apps/v1", "Deployment") => round_trip::<apps::Deployment>(doc),
        ("apps/v1", "StatefulSet") => round_trip::<apps::StatefulSet>(doc),
        ("apps/v1", "DaemonSet") => round_trip::<apps::DaemonSet>(doc),
        ("apps/v1", "ReplicaSet") => round_trip::<apps::ReplicaSet>(doc),
        ("batch/v1", "Job") => round_trip::<batch::Job>(doc),
        ("batch/v1", "CronJob") => round_trip::<batch::CronJob>(doc),
        ("policy/v1", "PodDisruptionBudget") => round_trip::<policy::PodDisruptionBudget>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<rbac::ClusterRole>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            round_trip::<rbac::ClusterRoleBinding>(doc)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<rbac::Role>(doc),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<rbac::RoleBinding>(doc),
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            round_trip::<admission::MutatingWebhookConfiguration>(doc)
        }
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => round_trip::<
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        >(doc),
        _ => Err(format!(
            "{api_version} {kind} is not a type this check knows"
        )),
    }
}

fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// The first place where `want` has something `got` lacks or differs on (the type may add
/// fields of its own, like `kind` on a claim template).
fn lost(want: &Value, got: &Value, path: String) -> Option<String> {
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, v)| match b.get(k) {
            None => Some(format!("{path}/{k}")),
            Some(w) => lost(v, w, format!("{path}/{k}")),
        }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| lost(v, w, format!("{path}/{i}"))),
        _ if want == got => None,
        // A schema's `minimum: 1` comes back as the type's `1.0`: the same number.
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => None,
        _ => Some(format!("{path}: {want} became {got}")),
    }
}

// === templates (`manifests/<folder>/`) ===

/// The values a template folder's templates see: `defaults` (its `values.yaml`) with the flags'
/// `overrides` and then the `--set KEY=VALUE` pairs applied (dotted keys that must exist, values
/// of the default's type); an empty `imageTag` becomes `image_tag`.
pub fn template_values(
    defaults: &str,
    folder: &str,
    overrides: Vec<(String, String)>,
    set: &[String],
    image_tag: &str,
) -> anyhow::Result<Value> {
    use anyhow::Context as _;
    let mut values: Value = serde_yaml_ng::from_str(defaults)
        .with_context(|| format!("reading manifests/{folder}/values.yaml (a bug)"))?;
    let mut all = overrides;
    for pair in set {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--set {pair:?}: expected KEY=VALUE"))?;
        all.push((k.trim().into(), v.into()));
    }
    for (key, raw) in all {
        set_value(&mut values, &key, &raw, folder).with_context(|| format!("--set {key}={raw}"))?;
    }
    if values["imageTag"].as_str().is_some_and(str::is_empty) {
        values["imageTag"] = Value::String(image_tag.to_string());
    }
    Ok(values)
}

/// Sets one dotted key; the key must exist and the value have the default's type.
fn set_value(values: &mut Value, key: &str, raw: &str, folder: &str) -> anyhow::Result<()> {
    let mut at = &mut *values;
    for part in key.split('.') {
        at = match at.get_mut(part) {
            Some(next) => next,
            None => anyhow::bail!("no value {key:?} (see manifests/{folder}/values.yaml)"),
        };
    }
    *at = match at {
        Value::Bool(_) => Value::Bool(
            raw.parse()
                .map_err(|_| anyhow::anyhow!("{raw:?} is not true or false"))?,
        ),
        Value::Number(n) if n.is_f64() => Value::Number(
            raw.parse()
                .map_err(|_| anyhow::anyhow!("{raw:?} is not a number"))?,
        ),
        Value::Number(_) => Value::Number(
            raw.parse::<i64>()
                .map_err(|_| anyhow::anyhow!("{raw:?} is not a whole number"))?
                .into(),
        ),
        Value::String(_) => Value::String(raw.to_string()),
        _ => anyhow::bail!("{key:?} is a group of values; set one of its keys"),
    };
    Ok(())
}

/// The string at a dotted key of the values (`controller.image`): "" when it is missing or not
/// a string.
pub fn value_str<'a>(values: &'a Value, key: &str) -> &'a str {
    key.split('.')
        .fold(values, |at, part| &at[part])
        .as_str()
        .unwrap_or_default()
}

/// Refuses the value at `key` (see [`value_str`]) when it is empty or has a character `ok`
/// refuses: a value the templates write as it is must not be able to break the YAML.
///
/// ```
/// # use mesh_cli::manifest::{check_word, dns_char};
/// let values = serde_json::json!({"clusterDomain": "cluster.local", "trustDomain": "a b"});
/// assert!(check_word(&values, "clusterDomain", dns_char).is_ok());
/// let e = check_word(&values, "trustDomain", dns_char).unwrap_err();
/// assert_eq!(e.to_string(), r#"trustDomain: "a b" is not allowed here"#);
/// ```
pub fn check_word(values: &Value, key: &str, ok: impl Fn(char) -> bool) -> anyhow::Result<()> {
    let v = value_str(values, key);
    if v.is_empty() || !v.chars().all(ok) {
        anyhow::bail!("{key}: {v:?} is not allowed here");
    }
    Ok(())
}

/// A character of a DNS name: a lowercase letter, a digit, `-` or `.`.
pub fn dns_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'
}

/// A character of an image reference or tag, or of a resource quantity: a letter, a digit or
/// one of `._-/:@`.
pub fn image_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._-/:@".contains(c)
}

/// A character of a log filter (`info,mesh=debug`): a letter, a digit or one of `_-=,.:`.
pub fn filter_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-=,.:".contains(c)
}

/// Refuses an `imagePullPolicy` that Kubernetes does not know.
pub fn check_pull_policy(values: &Value) -> anyhow::Result<()> {
    let policy = value_str(values, "imagePullPolicy");
    if !["Always", "IfNotPresent", "Never"].contains(&policy) {
        anyhow::bail!("imagePullPolicy: {policy:?} is not Always, IfNotPresent or Never");
    }
    Ok(())
}

/// The template environment of every folder of `manifests/`: undefined names are errors, and
/// values are written the way YAML and the binaries' flag parsers read them. minijinja's own
/// spelling of a boolean is Python's (`False`), which clap refuses in `--native-sidecar=False`.
pub fn template_env() -> minijinja::Environment<'static> {
    use minijinja::value::ValueKind;
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_formatter(|out, state, value| match value.kind() {
        ValueKind::Bool => {
            let text = if value.is_true() { "true" } else { "false" };
            out.write_str(text).map_err(minijinja::Error::from)
        }
        ValueKind::None => out.write_str("null").map_err(minijinja::Error::from),
        _ => minijinja::escape_formatter(out, state, value),
    });
    env
}

/// Renders a folder's templates in order with `env` and `context`, passes every document to
/// `each` (which may change it), and checks it against its Kubernetes type.
pub fn render_templates(
    env: &minijinja::Environment,
    context: &minijinja::Value,
    folder: &str,
    templates: &[(&str, &str)],
    mut each: impl FnMut(&mut Value) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Value>> {
    use anyhow::Context as _;
    let mut objects = Vec::new();
    for (name, template) in templates {
        let text = env
            .render_str(template, context)
            .with_context(|| format!("rendering manifests/{folder}/{name} (a bug)"))?;
        let (_, docs) = parse(&text, name)
            .with_context(|| format!("manifests/{folder}/{name} renders invalid YAML"))?;
        for mut doc in docs {
            each(&mut doc)?;
            check_typed(&doc).map_err(|e| {
                anyhow::anyhow!("manifests/{folder}/{name}: {}: {e}", describe(&doc))
            })?;
            objects.push(doc);
        }
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_render_as_yaml_and_flag_parsers_spell_them() {
        let env = template_env();
        let ctx = minijinja::context! { t => true, f => false, n => (), s => "False", i => 3 };
        let text = env
            .render_str("{{ t }} {{ f }} {{ n }} {{ s }} {{ i }}", ctx)
            .unwrap();
        assert_eq!(text, "true false null False 3");
    }

    #[test]
    fn yaml_errors_name_the_document_and_line() {
        let text = "kind: A\n---\nkind: B\n---\nkind: [unclosed\n";
        let e = parse(text, "app.yaml").unwrap_err();
        assert_eq!(e.document, 3);
        assert_eq!(e.line, Some(6));
        assert!(
            e.to_string().starts_with("app.yaml: document 3, line 6: "),
            "{e}"
        );
    }

    #[test]
    fn json_errors_name_the_line() {
        let e = parse("{\"kind\": \"A\"}\n{\"kind\": \n}", "x.json").unwrap_err();
        assert_eq!((e.document, e.line), (2, Some(3)));
    }

    #[test]
    fn empty_yaml_documents_are_dropped_and_order_is_kept() {
        let (format, docs) = parse("---\n---\nz: 1\na: 2\n", "-").unwrap();
        assert_eq!(format, Format::Yaml);
        assert_eq!(write(format, &docs), "---\nz: 1\na: 2\n");
    }

    #[test]
    fn a_misplaced_field_fails_the_typed_check() {
        let good = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x"}, "data": {"a": "b"}});
        check_typed(&good).unwrap();
        let bad = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "data": {"a": "b"}}});
        assert!(check_typed(&bad).unwrap_err().contains("/metadata/data"));
        let wrong_type = serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "x"}, "spec": {"ports": [{"port": "80"}]}});
        assert!(check_typed(&wrong_type).is_err());
    }
}
