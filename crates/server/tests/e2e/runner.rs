//! Plays the corpus' steps (see `shared/bpmn/README.md`) against a [`Driver`].

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};
use steadyflow_store::Vars;

use super::corpus::{Case, Scenario};
use super::driver::{Driver, NOT_SUPPORTED};

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Passed,
    /// Deployment refused naming an unsupported element of the file.
    NotSupported(String),
    Failed {
        step: String,
        expected: String,
        actual: String,
    },
}

#[derive(Debug, Clone)]
pub struct Result_ {
    pub scope: String,
    pub case: String,
    pub scenario: String,
    pub outcome: Outcome,
}

fn fail(step: &Value, expected: impl Into<String>, actual: impl Into<String>) -> Outcome {
    Outcome::Failed {
        step: step.to_string(),
        expected: expected.into(),
        actual: actual.into(),
    }
}

/// Deploys the case's files; `Err(message)` when the engine refused one.
fn deploy(driver: &mut dyn Driver, dir: &Path, case: &Case) -> Result<(), String> {
    for file in case.also_deploy.iter().chain(std::iter::once(&case.file)) {
        let xml = std::fs::read_to_string(dir.join(file))
            .map_err(|e| format!("cannot read {file}: {e}"))?;
        driver.deploy(&xml)?;
    }
    Ok(())
}

/// True when `message` names an element id of the case's file as unsupported.
fn names_unsupported_element(message: &str, xml: &str) -> Option<String> {
    if !message.contains("not supported") {
        return None;
    }
    let start = message.find("with id `")? + "with id `".len();
    let id = &message[start..start + message[start..].find('`')?];
    xml.contains(&format!("id=\"{id}\""))
        .then(|| id.to_string())
}

/// Runs every scenario of `case`, each on a fresh engine from `fresh`.
pub fn run_case(
    dir: &Path,
    case: &Case,
    fresh: &mut dyn FnMut() -> Box<dyn Driver>,
) -> Vec<Result_> {
    let result = |scenario: &str, outcome: Outcome| Result_ {
        scope: case.scope.clone(),
        case: case.label(),
        scenario: scenario.to_string(),
        outcome,
    };
    // Every file of the deployment: an unsupported element may sit in a called process.
    let xml: String = case
        .also_deploy
        .iter()
        .chain(std::iter::once(&case.file))
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default())
        .collect();
    if !case.deploy_ok {
        let mut d = fresh();
        let outcome = match deploy(d.as_mut(), dir, case) {
            Ok(()) => fail(&Value::Null, "deployment refused", "deployment accepted"),
            Err(msg) => {
                let id = case.refused_element_id.as_deref().unwrap_or_default();
                match d.definition_count() {
                    Ok(0) if msg.contains(&format!("`{id}`")) => Outcome::Passed,
                    Ok(0) => fail(&Value::Null, format!("error naming `{id}`"), msg),
                    Ok(n) => fail(
                        &Value::Null,
                        "nothing deployed",
                        format!("{n} definitions deployed"),
                    ),
                    Err(e) => fail(&Value::Null, "definition listing", e),
                }
            }
        };
        return vec![result("deploy refused", outcome)];
    }
    let scenarios: Vec<Scenario> = if case.scenarios.is_empty() {
        vec![Scenario {
            name: "deploy".into(),
            steps: Vec::new(),
        }]
    } else {
        case.scenarios.clone()
    };
    scenarios
        .iter()
        .map(|s| {
            let mut d = fresh();
            let outcome = match deploy(d.as_mut(), dir, case) {
                Err(msg) => match names_unsupported_element(&msg, &xml) {
                    Some(_) if case.scope != "core" => Outcome::NotSupported(msg),
                    _ => fail(&Value::Null, "deployment succeeds", msg),
                },
                Ok(()) => run_scenario(d.as_mut(), case, s),
            };
            result(&s.name, outcome)
        })
        .collect()
}

fn vars_of(step: &Value, key: &str, driver: &mut dyn Driver) -> Vars {
    let mut out = Map::new();
    if let Some(Value::Object(m)) = step.get(key) {
        for (k, v) in m {
            let v = match v.get("$now") {
                Some(_) => Value::String(driver.now().format("%Y-%m-%dT%H:%M:%S").to_string()),
                None => v.clone(),
            };
            out.insert(k.clone(), v);
        }
    }
    out
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn run_scenario(d: &mut dyn Driver, case: &Case, s: &Scenario) -> Outcome {
    let mut instance: Option<String> = None;
    for step in &s.steps {
        if let Err(outcome) = run_step(d, case, step, &mut instance) {
            return outcome;
        }
    }
    Outcome::Passed
}

fn run_step(
    d: &mut dyn Driver,
    case: &Case,
    step: &Value,
    instance: &mut Option<String>,
) -> Result<(), Outcome> {
    let by = step.get("by").and_then(Value::as_str);
    let need = |i: &Option<String>| {
        i.clone()
            .ok_or_else(|| fail(step, "a started instance", "no start step before"))
    };
    let verb = step
        .as_object()
        .and_then(|o| {
            o.keys().find(|k| {
                ![
                    "by",
                    "expect",
                    "errorMentions",
                    "variables",
                    "count",
                    "activityId",
                    "correlationKey",
                ]
                .contains(&k.as_str())
            })
        })
        .cloned()
        .unwrap_or_default();
    match verb.as_str() {
        "start" => {
            let spec = &step["start"];
            let vars = vars_of(spec, "variables", d);
            let started = match spec.get("message").and_then(Value::as_str) {
                Some(m) => d.start_by_message(m, vars),
                None => d.start(&case.process_key, vars),
            };
            if step.get("expect").and_then(Value::as_str) == Some("error") {
                let mention = step
                    .get("errorMentions")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                match started {
                    Err(e) if e.contains(mention) && e != NOT_SUPPORTED => Ok(()),
                    Err(e) => Err(fail(step, format!("an error mentioning `{mention}`"), e)),
                    Ok(id) => {
                        let state = d.state(&id).map_err(|e| fail(step, "instance state", e))?;
                        let msgs = d
                            .incident_messages(&id)
                            .map_err(|e| fail(step, "incidents", e))?;
                        *instance = Some(id);
                        if state == "incident" && msgs.iter().any(|m| m.contains(mention)) {
                            Ok(())
                        } else {
                            Err(fail(
                                step,
                                format!("an incident mentioning `{mention}`"),
                                format!("state {state}, incidents {msgs:?}"),
                            ))
                        }
                    }
                }
            } else {
                *instance = Some(started.map_err(|e| fail(step, "start succeeds", e))?);
                Ok(())
            }
        }
        "expectOpenTasks" | "expectTaskCount" => {
            let id = need(instance)?;
            let tasks = d.tasks(&id).map_err(|e| fail(step, "task list", e))?;
            if verb == "expectTaskCount" {
                let n = step[&verb].as_u64().unwrap_or(u64::MAX) as usize;
                return (tasks.len() == n).then_some(()).ok_or_else(|| {
                    fail(step, format!("{n} open tasks"), format!("{}", tasks.len()))
                });
            }
            let actual = sorted(
                tasks
                    .iter()
                    .map(|t| task_attr(t, by).unwrap_or_default())
                    .collect(),
            );
            let expected = str_list(step.get(&verb));
            (actual == expected)
                .then_some(())
                .ok_or_else(|| fail(step, format!("{expected:?}"), format!("{actual:?}")))
        }
        "completeTask" => {
            let id = need(instance)?;
            let want = step[&verb].as_str().unwrap_or_default();
            let tasks = d.tasks(&id).map_err(|e| fail(step, "task list", e))?;
            let task = tasks
                .iter()
                .find(|t| task_attr(t, by).as_deref() == Some(want))
                .ok_or_else(|| {
                    fail(
                        step,
                        format!("an open task `{want}`"),
                        format!(
                            "{:?}",
                            tasks.iter().map(|t| task_attr(t, by)).collect::<Vec<_>>()
                        ),
                    )
                })?;
            let vars = vars_of(step, "variables", d);
            d.complete_task(&task.id, vars)
                .map_err(|e| fail(step, "task completes", e))
        }
        "expectAssignee" | "expectCandidates" => {
            let id = need(instance)?;
            let spec = &step[&verb];
            let name = spec.get("task").and_then(Value::as_str).unwrap_or_default();
            let tasks = d.tasks(&id).map_err(|e| fail(step, "task list", e))?;
            let matching: Vec<_> = tasks
                .iter()
                .filter(|t| t.name.as_deref() == Some(name))
                .collect();
            let [t] = matching.as_slice() else {
                return Err(fail(
                    step,
                    format!("exactly one open task named `{name}`"),
                    format!("{}", matching.len()),
                ));
            };
            if verb == "expectAssignee" {
                let want = spec.get("assignee").and_then(Value::as_str);
                return (t.assignee.as_deref() == want)
                    .then_some(())
                    .ok_or_else(|| fail(step, format!("{want:?}"), format!("{:?}", t.assignee)));
            }
            let ok = str_list(spec.get("users"))
                .iter()
                .all(|u| t.users.contains(u))
                && str_list(spec.get("groups"))
                    .iter()
                    .all(|g| t.groups.contains(g))
                && !str_list(spec.get("notUsers"))
                    .iter()
                    .any(|u| t.users.contains(u));
            ok.then_some(()).ok_or_else(|| {
                fail(
                    step,
                    spec.to_string(),
                    format!("users {:?}, groups {:?}", t.users, t.groups),
                )
            })
        }
        "expectExternalTasks" => {
            let id = need(instance)?;
            let tasks = d
                .external_tasks(&id)
                .map_err(|e| fail(step, "external task list", e))?;
            let actual = sorted(
                tasks
                    .iter()
                    .map(|t| {
                        if by == Some("activityId") {
                            t.activity_id.clone()
                        } else {
                            t.topic.clone()
                        }
                    })
                    .collect(),
            );
            let expected = str_list(step.get(&verb));
            (actual == expected)
                .then_some(())
                .ok_or_else(|| fail(step, format!("{expected:?}"), format!("{actual:?}")))
        }
        "fetchAndComplete" => {
            let id = need(instance)?;
            let topic = step[&verb].as_str().unwrap_or_default();
            let n = step.get("count").and_then(Value::as_u64).unwrap_or(1) as usize;
            let activity = step.get("activityId").and_then(Value::as_str);
            let mine: Vec<String> = d
                .external_tasks(&id)
                .map_err(|e| fail(step, "external task list", e))?
                .into_iter()
                .map(|t| t.id)
                .collect();
            let locked = d
                .fetch_and_lock(topic, 1000)
                .map_err(|e| fail(step, "fetch and lock", e))?;
            let (chosen, rest): (Vec<_>, Vec<_>) = locked
                .into_iter()
                .partition(|t| mine.contains(&t.id) && activity.is_none_or(|a| a == t.activity_id));
            let chosen: Vec<_> = chosen.into_iter().collect();
            let (take, back) = chosen.split_at(chosen.len().min(n));
            for t in back.iter().chain(rest.iter()) {
                d.unlock_external(&t.id)
                    .map_err(|e| fail(step, "unlock", e))?;
            }
            if take.len() < n {
                return Err(fail(
                    step,
                    format!("{n} fetchable tasks of `{topic}`"),
                    format!("{}", take.len()),
                ));
            }
            let vars = vars_of(step, "variables", d);
            for t in take {
                d.complete_external(&t.id, vars.clone())
                    .map_err(|e| fail(step, "external task completes", e))?;
            }
            Ok(())
        }
        "advanceClock" => {
            let text = step[&verb].as_str().unwrap_or_default();
            let dur = steadyflow_model::parse_duration(text)
                .ok_or_else(|| fail(step, "an ISO-8601 duration", text))?;
            let now = d.now();
            let by = dur
                .after(now)
                .ok_or_else(|| fail(step, "a representable duration", text))?
                - now;
            d.advance_clock(by)
                .map_err(|e| fail(step, "timers fire", e))
        }
        "expectPendingTimers" => {
            let id = need(instance)?;
            let n = step[&verb].as_u64().unwrap_or(u64::MAX) as usize;
            let actual = d
                .pending_timers(&id)
                .map_err(|e| fail(step, "timer list", e))?;
            (actual == n)
                .then_some(())
                .ok_or_else(|| fail(step, format!("{n}"), format!("{actual}")))
        }
        "expectState" => {
            let id = need(instance)?;
            let want = step[&verb].as_str().unwrap_or_default();
            let state = d.state(&id).map_err(|e| fail(step, "instance state", e))?;
            (state == want)
                .then_some(())
                .ok_or_else(|| fail(step, want, state))
        }
        "correlateMessage" => {
            let id = need(instance)?;
            let _ = id;
            let name = step[&verb].as_str().unwrap_or_default();
            let key = step.get("correlationKey").and_then(Value::as_str);
            let vars = vars_of(step, "variables", d);
            let taken = d
                .correlate_message(name, key, vars)
                .map_err(|e| fail(step, "correlation", e))?;
            let want = step.get("expect").and_then(Value::as_str) != Some("noMatch");
            (taken == want).then_some(()).ok_or_else(|| {
                fail(
                    step,
                    format!("correlated: {want}"),
                    format!("correlated: {taken}"),
                )
            })
        }
        "sendSignal" => {
            let name = step[&verb].as_str().unwrap_or_default();
            d.send_signal(name)
                .map_err(|e| fail(step, "signal sent", e))
        }
        "expectSubscriptions" => {
            let id = need(instance)?;
            let (messages, signals) = d
                .subscriptions(&id)
                .map_err(|e| fail(step, "subscriptions", e))?;
            let spec = &step[&verb];
            let ok = sorted(messages.clone()) == str_list(spec.get("message"))
                && sorted(signals.clone()) == str_list(spec.get("signal"));
            ok.then_some(()).ok_or_else(|| {
                fail(
                    step,
                    spec.to_string(),
                    format!("message {messages:?}, signal {signals:?}"),
                )
            })
        }
        other => Err(fail(
            step,
            "a known step",
            format!("unknown step `{other}`"),
        )),
    }
}

fn task_attr(t: &super::driver::TaskView, by: Option<&str>) -> Option<String> {
    match by.unwrap_or("name") {
        "taskDefinitionKey" => Some(t.key.clone()),
        "assignee" => t.assignee.clone(),
        _ => t.name.clone(),
    }
}

/// Prints the per-scope table and every failure, and writes them to
/// `target/conformance/<backend>.txt` (which `.ci/run` shows); returns
/// scope -> [passed, not supported yet, failed].
pub fn report(backend: &str, results: &[Result_]) -> BTreeMap<String, [usize; 3]> {
    let mut table: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    for r in results {
        let row = table.entry(r.scope.clone()).or_default();
        match r.outcome {
            Outcome::Passed => row[0] += 1,
            Outcome::NotSupported(_) => row[1] += 1,
            Outcome::Failed { .. } => row[2] += 1,
        }
    }
    let mut out = format!("BPMN conformance on {backend} (scenarios)\n");
    out += &format!(
        "  {:<16} {:>7} {:>20} {:>7}\n",
        "scope", "passed", "not supported yet", "failed"
    );
    for (scope, [p, n, f]) in &table {
        out += &format!("  {scope:<16} {p:>7} {n:>20} {f:>7}\n");
    }
    for r in results {
        if let Outcome::Failed {
            step,
            expected,
            actual,
        } = &r.outcome
        {
            out += &format!(
                "  FAILED {} / {}: step {step}\n         expected: {expected}\n         actual:   {actual}\n",
                r.case, r.scenario
            );
        }
    }
    eprintln!("\n{out}");
    let dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => std::path::PathBuf::from(d),
        None => super::services::workspace_root().join("target"),
    }
    .join("conformance");
    let slug: String = backend
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join(format!("{slug}.txt")), &out);
    }
    table
}

/// What must hold: every core and refused scenario passes; elsewhere nothing fails.
pub fn assert_conformance(backend: &str, results: &[Result_]) {
    let failed: Vec<_> = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed { .. }))
        .collect();
    let unsupported_core: Vec<_> = results
        .iter()
        .filter(|r| (r.scope == "core" || r.scope == "refused") && r.outcome != Outcome::Passed)
        .collect();
    assert!(
        failed.is_empty() && unsupported_core.is_empty(),
        "{backend}: {} scenarios failed, {} core/refused scenarios did not pass (see the table above)",
        failed.len(),
        unsupported_core.len()
    );
}
