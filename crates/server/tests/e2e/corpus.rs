//! The shared BPMN conformance corpus (`../shared/bpmn`): loading and validating `cases.json`.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Where the corpus lives: `STEADYFLOW_BPMN_CORPUS`, else `../shared/bpmn` beside the project.
pub fn corpus_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("STEADYFLOW_BPMN_CORPUS") {
        Some(d) => PathBuf::from(d),
        None => super::services::workspace_root().join("../shared/bpmn"),
    };
    dir.join("cases.json").is_file().then_some(dir)
}

#[derive(Debug, Clone)]
pub struct Case {
    pub index: usize,
    pub file: String,
    pub also_deploy: Vec<String>,
    pub deploy_ok: bool,
    pub refused_element_id: Option<String>,
    pub process_key: String,
    pub scope: String,
    pub scenarios: Vec<Scenario>,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub steps: Vec<Value>,
}

impl Case {
    pub fn label(&self) -> String {
        format!("case #{} ({})", self.index, self.file)
    }
}

const SCOPES: &[&str] = &[
    "core",
    "events",
    "subprocess",
    "call-activity",
    "multi-instance",
    "escalation",
    "compensation",
    "refused",
];

fn field<'a>(entry: &'a Value, name: &str, label: &str) -> Result<&'a Value, String> {
    entry
        .get(name)
        .ok_or_else(|| format!("{label} is malformed: field `{name}` is missing"))
}

fn string(entry: &Value, name: &str, label: &str) -> Result<String, String> {
    field(entry, name, label)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{label} is malformed: field `{name}` must be a string"))
}

/// Parses and validates `cases.json`; a malformed entry is refused with a message naming it.
pub fn parse_cases(text: &str) -> Result<Vec<Case>, String> {
    let all: Value =
        serde_json::from_str(text).map_err(|e| format!("cases.json is not valid JSON: {e}"))?;
    let entries = all.as_array().ok_or("cases.json must be an array")?;
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| parse_case(i, e))
        .collect()
}

fn parse_case(index: usize, e: &Value) -> Result<Case, String> {
    let file_label = e.get("file").and_then(Value::as_str).unwrap_or("<no file>");
    let label = format!("case #{index} ({file_label})");
    let file = string(e, "file", &label)?;
    let deploy = string(e, "deploy", &label)?;
    let deploy_ok = match deploy.as_str() {
        "ok" => true,
        "refused" => false,
        other => {
            return Err(format!(
                "{label} is malformed: deploy must be `ok` or `refused`, not `{other}`"
            ));
        }
    };
    let scope = string(e, "scope", &label)?;
    if !SCOPES.contains(&scope.as_str()) {
        return Err(format!("{label} is malformed: unknown scope `{scope}`"));
    }
    let refused_element_id = match e.get("refusedElementId") {
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| format!("{label} is malformed: refusedElementId must be a string"))?
                .to_string(),
        ),
        None => None,
    };
    if !deploy_ok && refused_element_id.is_none() {
        return Err(format!(
            "{label} is malformed: a refused case needs refusedElementId"
        ));
    }
    let also_deploy = match e.get("alsoDeploy") {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|x| x.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| {
                format!("{label} is malformed: alsoDeploy must be a list of file names")
            })?,
    };
    let scenarios = field(e, "scenarios", &label)?
        .as_array()
        .ok_or_else(|| format!("{label} is malformed: scenarios must be a list"))?
        .iter()
        .enumerate()
        .map(|(si, s)| {
            let name = s
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{label} is malformed: scenario #{si} has no name"))?;
            let steps = s.get("steps").and_then(Value::as_array).ok_or_else(|| {
                format!("{label} is malformed: scenario `{name}` has no steps list")
            })?;
            Ok(Scenario {
                name: name.to_string(),
                steps: steps.clone(),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Case {
        index,
        file,
        also_deploy,
        deploy_ok,
        refused_element_id,
        process_key: string(e, "processKey", &label)?,
        scope,
        scenarios,
    })
}

pub fn load(dir: &Path) -> Vec<Case> {
    let text = std::fs::read_to_string(dir.join("cases.json")).expect("read cases.json");
    parse_cases(&text).unwrap_or_else(|e| panic!("the conformance runner refuses cases.json: {e}"))
}
