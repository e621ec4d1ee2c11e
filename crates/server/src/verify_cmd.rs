//! `steadyflow verify-recovery`: is a (recovered) node whole? Asked over its HTTP API
//! only, so it works against any node, on either backend, from any host:
//!
//! * `health`: `/health`, each component (`down` fails, `degraded` warns);
//! * `ready`: `/ready` answers 200 (the database takes writes);
//! * `journal`: the newest database recovery point's chain is whole (the server checks
//!   parents and journal gaps; `GET /api/v1/backups`);
//! * `rows`: the live database holds at least the `definitions` and `instances` rows of
//!   the newest full backup's manifest (neither table ever loses rows);
//! * `instances`: no instance whose runtime cannot be read: an active one whose runtime
//!   does not parse (no active element) or names an element its definition lacks, or
//!   an open `corruptState` incident;
//! * `smoke`: deploys a small definition (`steadyflow-verify-recovery`: a user task then
//!   an external task), starts it, completes both tasks, waits for its end and reads its
//!   history. The definition stays (deploying it again is a no-op: the same version); a
//!   smoke instance that does not complete is cancelled, so none is left waiting.
//!
//! Exit code 0 only when no check failed; a check the token may not read (backups need
//! the operator or admin role) is skipped and says so.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use serde_json::{Value, json};

/// The smoke process: its key, its external task's topic and its worker id.
pub const SMOKE_KEY: &str = "steadyflow-verify-recovery";

const SMOKE_BPMN: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn" targetNamespace="https://steadyflow.dev/verify-recovery">
  <process id="steadyflow-verify-recovery" name="Steadyflow recovery check" isExecutable="true">
    <startEvent id="start" />
    <sequenceFlow id="f1" sourceRef="start" targetRef="confirm" />
    <userTask id="confirm" name="Confirm the recovery check" />
    <sequenceFlow id="f2" sourceRef="confirm" targetRef="probe" />
    <serviceTask id="probe" name="Recovery probe" camunda:type="external" camunda:topic="steadyflow-verify-recovery" />
    <sequenceFlow id="f3" sourceRef="probe" targetRef="end" />
    <endEvent id="end" />
  </process>
</definitions>"#;

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Base URL of the node to check.
    #[arg(long, env = "STEADYFLOW_URL", default_value = "http://localhost:8080")]
    pub url: String,
    /// Print the report as one JSON object on stdout instead of the human report.
    #[arg(long)]
    pub json: bool,
    /// Seconds each waiting step (a task to appear, the smoke instance to end) may take.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Warn,
    Skip,
    Fail,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Warn => "WARN",
            Outcome::Skip => "SKIP",
            Outcome::Fail => "FAIL",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
    pub detail: String,
    #[serde(rename = "durationMs")]
    pub duration_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub url: String,
    pub ok: bool,
    pub checks: Vec<Check>,
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// An answer: status and body (JSON when it parses, else the text as a JSON string).
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `code: message` of an API error body, or the body itself.
    fn why(&self) -> String {
        let e = &self.body["error"];
        match (e["code"].as_str(), e["message"].as_str()) {
            (Some(c), Some(m)) => format!("HTTP {}: {c}: {m}", self.status),
            _ => format!("HTTP {}: {}", self.status, short(&self.body.to_string())),
        }
    }
}

fn short(s: &str) -> String {
    if s.chars().count() > 200 {
        format!("{}…", s.chars().take(200).collect::<String>())
    } else {
        s.to_string()
    }
}

impl Client {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Body<'_>>,
    ) -> Result<Answer> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        match body {
            Some(Body::Json(v)) => {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(v.to_string());
            }
            Some(Body::Xml(x)) => {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/xml")
                    .body(x.to_string());
            }
            None => {}
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .with_context(|| format!("reading the answer of {url}"))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer { status, body })
    }

    async fn get(&self, path: &str) -> Result<Answer> {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Result<Answer> {
        self.send(reqwest::Method::POST, path, Some(Body::Json(body)))
            .await
    }

    /// Every item of a paged list (`items`, `nextCursor`); `query` without `after`.
    async fn walk(&self, path: &str, query: &str, mut each: impl FnMut(&Value)) -> Result<u64> {
        let mut after: Option<String> = None;
        let mut n = 0;
        loop {
            let sep = if query.is_empty() { "" } else { "&" };
            let cursor = after
                .as_deref()
                .map(|a| format!("&after={a}"))
                .unwrap_or_default();
            let a = self
                .get(&format!("{path}?limit=1000{sep}{query}{cursor}"))
                .await?;
            if !a.ok() {
                bail!("GET {path}: {}", a.why());
            }
            for item in a.body["items"].as_array().into_iter().flatten() {
                each(item);
                n += 1;
            }
            match a.body["nextCursor"].as_str() {
                Some(c) => after = Some(c.to_string()),
                None => return Ok(n),
            }
        }
    }
}

enum Body<'a> {
    Json(Value),
    Xml(&'a str),
}

/// Runs every check and prints the report; the process exit code (0: all hold).
pub async fn run(args: VerifyArgs) -> i32 {
    let report = verify(&args).await;
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: {e}"),
        }
    } else {
        print!("{}", human(&report));
    }
    if report.ok { 0 } else { 1 }
}

/// The human report: one line per check, then the verdict.
pub fn human(report: &Report) -> String {
    let mut out = format!("Recovery verification of {}\n", report.url);
    for c in &report.checks {
        out.push_str(&format!(
            "  {}  {:<10} {} ({} ms)\n",
            c.outcome.label(),
            c.name,
            c.detail,
            c.duration_ms
        ));
    }
    let failed: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| c.outcome == Outcome::Fail)
        .map(|c| c.name)
        .collect();
    if failed.is_empty() {
        out.push_str("RECOVERY VERIFIED\n");
    } else {
        out.push_str(&format!(
            "RECOVERY NOT VERIFIED: {} failed\n",
            failed.join(", ")
        ));
    }
    out
}

pub async fn verify(args: &VerifyArgs) -> Report {
    let base = args.url.trim_end_matches('/').to_string();
    let mut checks = Vec::new();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            checks.push(Check {
                name: "client",
                outcome: Outcome::Fail,
                detail: format!("cannot build an HTTP client: {e}"),
                duration_ms: 0,
            });
            return Report {
                url: base,
                ok: false,
                checks,
            };
        }
    };
    let client = Client {
        http,
        base: base.clone(),
        token: std::env::var("STEADYFLOW_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty()),
    };
    let wait = Duration::from_secs(args.timeout.max(1));

    timed(&mut checks, "health", health(&client)).await;
    timed(&mut checks, "ready", ready(&client)).await;
    let mut newest_full = None;
    timed(&mut checks, "journal", journal(&client, &mut newest_full)).await;
    timed(&mut checks, "rows", rows(&client, newest_full.as_ref())).await;
    timed(&mut checks, "instances", instances(&client)).await;
    timed(&mut checks, "smoke", smoke(&client, wait)).await;

    let ok = checks.iter().all(|c| c.outcome != Outcome::Fail);
    Report {
        url: base,
        ok,
        checks,
    }
}

async fn timed(
    checks: &mut Vec<Check>,
    name: &'static str,
    f: impl std::future::Future<Output = Result<(Outcome, String)>>,
) {
    let t = Instant::now();
    let (outcome, detail) = f
        .await
        .unwrap_or_else(|e| (Outcome::Fail, format!("{e:#}")));
    checks.push(Check {
        name,
        outcome,
        detail,
        duration_ms: u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX),
    });
}

async fn health(c: &Client) -> Result<(Outcome, String)> {
    let a = c.get("/health").await?;
    let Some(components) = a.body["components"].as_object() else {
        bail!("/health: {}", a.why());
    };
    let mut down = Vec::new();
    let mut degraded = Vec::new();
    let mut up = Vec::new();
    for (name, comp) in components {
        let why = comp["reason"]
            .as_str()
            .map(|r| format!("{name} ({r})"))
            .unwrap_or_else(|| name.clone());
        match comp["status"].as_str() {
            Some("up") => up.push(name.clone()),
            Some("degraded") => degraded.push(why),
            _ => down.push(why),
        }
    }
    let status = a.body["status"].as_str().unwrap_or("unknown");
    if !down.is_empty() || status == "down" || !a.ok() {
        return Ok((
            Outcome::Fail,
            format!("{status} (HTTP {}): down: {}", a.status, down.join(", ")),
        ));
    }
    let mode = a.body["mode"]["mode"].as_str().unwrap_or("normal");
    let mut detail = format!("{status}; components up: {}; mode {mode}", up.join(", "));
    if !degraded.is_empty() {
        detail.push_str(&format!("; degraded: {}", degraded.join(", ")));
        return Ok((Outcome::Warn, detail));
    }
    Ok((Outcome::Pass, detail))
}

async fn ready(c: &Client) -> Result<(Outcome, String)> {
    let a = c.get("/ready").await?;
    if a.status == 200 {
        Ok((Outcome::Pass, "200: the database takes requests".into()))
    } else {
        let reason = a.body["components"]["database"]["reason"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| a.why());
        Ok((Outcome::Fail, format!("HTTP {}: {reason}", a.status)))
    }
}

/// The newest full database backup: its id and per-table rows.
struct FullPoint {
    id: String,
    tables: BTreeMap<String, u64>,
}

async fn journal(c: &Client, newest_full: &mut Option<FullPoint>) -> Result<(Outcome, String)> {
    let mut points = Vec::new();
    let walked = c
        .walk("/api/v1/backups", "", |p| points.push(p.clone()))
        .await;
    if let Err(e) = walked {
        let text = format!("{e:#}");
        if text.contains("backups_not_configured") {
            return Ok((
                Outcome::Skip,
                "this node has no backup targets (`backup.targets`): nothing to compare with"
                    .into(),
            ));
        }
        // 403: a viewer's token (skipped); 401, a token the node refuses, fails below.
        if text.contains("HTTP 403") {
            return Ok((
                Outcome::Skip,
                "the token may not list backups (operator or admin role needed)".into(),
            ));
        }
        return Err(e);
    }
    // Newest first; only points with database tables count.
    let mut db = points.iter().filter(|p| p["sourceBackend"].is_string());
    let Some(newest) = db.clone().next() else {
        return Ok((
            Outcome::Skip,
            "no database backup on this node or its targets".into(),
        ));
    };
    if let Some(full) = db.find(|p| p["kind"] == "full") {
        *newest_full = Some(FullPoint {
            id: full["id"].as_str().unwrap_or_default().to_string(),
            tables: serde_json::from_value(full["tables"].clone()).unwrap_or_default(),
        });
    }
    let id = newest["id"].as_str().unwrap_or("?");
    let v = &newest["verification"];
    if v["state"] == "failed" {
        return Ok((
            Outcome::Fail,
            format!(
                "the chain of {id} is broken: {}",
                v["reason"].as_str().unwrap_or("no reason given")
            ),
        ));
    }
    let last = newest["journal"]["lastSeq"]
        .as_i64()
        .or_else(|| newest["journal"]["resumeSeq"].as_i64());
    Ok((
        Outcome::Pass,
        format!(
            "newest point {id} ({}): chain whole, journal up to {}",
            v["state"].as_str().unwrap_or("?"),
            last.map_or("-".to_string(), |s| s.to_string())
        ),
    ))
}

async fn rows(c: &Client, full: Option<&FullPoint>) -> Result<(Outcome, String)> {
    let Some(full) = full else {
        return Ok((
            Outcome::Skip,
            "no full database backup to compare with".into(),
        ));
    };
    let definitions = c.walk("/api/v1/process-definitions", "", |_| {}).await?;
    let instances = c.walk("/api/v1/process-instances", "", |_| {}).await?;
    let mut short_of = Vec::new();
    let mut seen = Vec::new();
    for (table, live) in [("definitions", definitions), ("instances", instances)] {
        let Some(&backed) = full.tables.get(table) else {
            continue;
        };
        seen.push(format!("{table} {live} (backup {backed})"));
        if live < backed {
            short_of.push(format!("{table}: {live} live, {backed} in {}", full.id));
        }
    }
    if !short_of.is_empty() {
        return Ok((
            Outcome::Fail,
            format!(
                "rows missing against the newest full backup: {}",
                short_of.join("; ")
            ),
        ));
    }
    if seen.is_empty() {
        return Ok((
            Outcome::Skip,
            format!(
                "{} lists no table rows (a server before per-table counts?)",
                full.id
            ),
        ));
    }
    Ok((
        Outcome::Pass,
        format!("against {}: {}", full.id, seen.join(", ")),
    ))
}

async fn instances(c: &Client) -> Result<(Outcome, String)> {
    // Active instances: their active elements must exist in their definition.
    let mut active = Vec::new();
    let n = c
        .walk("/api/v1/process-instances", "state=active", |i| {
            active.push(i.clone())
        })
        .await?;
    let mut xml: HashMap<String, Option<String>> = HashMap::new();
    let mut bad = Vec::new();
    for inst in &active {
        let id = inst["id"].as_str().unwrap_or("?");
        let ids: Vec<&str> = inst["activeActivityIds"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if ids.is_empty() {
            bad.push(format!("{id}: its runtime cannot be read"));
            continue;
        }
        let def = inst["definitionId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !xml.contains_key(&def) {
            let a = c
                .get(&format!("/api/v1/process-definitions/{def}/xml"))
                .await?;
            let text = if a.ok() {
                a.body.as_str().map(str::to_string)
            } else {
                None
            };
            xml.insert(def.clone(), text);
        }
        match xml.get(&def).and_then(Option::as_ref) {
            None => bad.push(format!("{id}: its definition {def} cannot be read")),
            Some(x) => {
                for el in ids {
                    if !x.contains(&format!("id=\"{el}\"")) && !x.contains(&format!("id='{el}'")) {
                        bad.push(format!("{id}: waits at `{el}`, which {def} does not have"));
                    }
                }
            }
        }
    }
    let mut incidents = 0;
    c.walk("/api/v1/incidents", "open=true", |i| {
        if i["incidentType"] == "corruptState" {
            incidents += 1;
            bad.push(format!(
                "{}: corruptState incident: {}",
                i["processInstanceId"].as_str().unwrap_or("?"),
                short(i["message"].as_str().unwrap_or_default())
            ));
        }
    })
    .await?;
    if !bad.is_empty() {
        let more = if bad.len() > 10 {
            format!(" (and {} more)", bad.len() - 10)
        } else {
            String::new()
        };
        bad.truncate(10);
        return Ok((
            Outcome::Fail,
            format!("corrupt instances: {}{more}", bad.join("; ")),
        ));
    }
    Ok((
        Outcome::Pass,
        format!("{n} active instances readable, no corruptState incident"),
    ))
}

async fn smoke(c: &Client, wait: Duration) -> Result<(Outcome, String)> {
    let a = c
        .send(
            reqwest::Method::POST,
            "/api/v1/process-definitions",
            Some(Body::Xml(SMOKE_BPMN)),
        )
        .await?;
    if !a.ok() {
        bail!("deploy: {}", a.why());
    }
    let def = a.body["id"]
        .as_str()
        .ok_or_else(|| anyhow!("deploy answered no id: {}", a.body))?
        .to_string();
    let business_key = format!("verify-recovery-{}", chrono::Utc::now().timestamp_millis());
    let a = c
        .post(
            &format!("/api/v1/process-definitions/{def}/start"),
            json!({ "businessKey": business_key, "variables": { "verifyRecovery": true } }),
        )
        .await?;
    if !a.ok() {
        bail!("start {def}: {}", a.why());
    }
    let instance = a.body["id"]
        .as_str()
        .ok_or_else(|| anyhow!("start answered no id: {}", a.body))?
        .to_string();
    match drive(c, &instance, wait).await {
        Ok(events) => Ok((
            Outcome::Pass,
            format!("{def}: instance {instance} completed ({events} history events)"),
        )),
        Err(e) => {
            // Leave nothing waiting behind: cancel the smoke instance.
            let cancelled = c
                .send(
                    reqwest::Method::DELETE,
                    &format!("/api/v1/process-instances/{instance}"),
                    None,
                )
                .await
                .map(|a| a.ok())
                .unwrap_or(false);
            let left = if cancelled {
                "cancelled"
            } else {
                "could not be cancelled"
            };
            Ok((
                Outcome::Fail,
                format!("instance {instance} ({left}): {e:#}"),
            ))
        }
    }
}

/// Completes the smoke instance's tasks, waits for its end, reads its history; the
/// number of history events.
async fn drive(c: &Client, instance: &str, wait: Duration) -> Result<u64> {
    let task = poll(wait, "its user task to open", || async {
        let a = c
            .get(&format!("/api/v1/tasks?processInstanceId={instance}"))
            .await?;
        if !a.ok() {
            bail!("list tasks: {}", a.why());
        }
        Ok(a.body["items"][0]["id"].as_str().map(str::to_string))
    })
    .await?;
    let a = c
        .post(&format!("/api/v1/tasks/{task}/complete"), json!({}))
        .await?;
    if !a.ok() {
        bail!("complete user task {task}: {}", a.why());
    }
    let ext = poll(wait, "its external task to be fetched", || async {
        let a = c
            .post(
                "/api/v1/external-tasks/fetch-and-lock",
                json!({
                    "workerId": SMOKE_KEY,
                    "maxTasks": 100,
                    "topics": [{ "topicName": SMOKE_KEY, "lockDuration": 60_000 }],
                }),
            )
            .await?;
        if !a.ok() {
            bail!("fetch and lock: {}", a.why());
        }
        let mut mine = None;
        for t in a.body.as_array().into_iter().flatten() {
            let id = t["id"].as_str().unwrap_or_default();
            if t["processInstanceId"] == instance {
                mine = Some(id.to_string());
            } else {
                // Another run's task: give it back at once.
                let _ = c
                    .post(&format!("/api/v1/external-tasks/{id}/unlock"), json!({}))
                    .await;
            }
        }
        Ok(mine)
    })
    .await?;
    let a = c
        .post(
            &format!("/api/v1/external-tasks/{ext}/complete"),
            json!({ "workerId": SMOKE_KEY, "variables": { "probed": true } }),
        )
        .await?;
    if !a.ok() {
        bail!("complete external task {ext}: {}", a.why());
    }
    poll(wait, "the instance to complete", || async {
        let a = c
            .get(&format!("/api/v1/process-instances/{instance}"))
            .await?;
        match a.body["state"].as_str() {
            Some("completed") => Ok(Some(())),
            Some("active") => Ok(None),
            _ => bail!("instance {instance}: {}", short(&a.body.to_string())),
        }
    })
    .await?;
    let mut kinds = Vec::new();
    let n = c
        .walk(
            &format!("/api/v1/process-instances/{instance}/history"),
            "",
            |e| kinds.push(e["event"].as_str().unwrap_or_default().to_string()),
        )
        .await?;
    for want in ["instanceStarted", "instanceCompleted"] {
        if !kinds.iter().any(|k| k == want) {
            bail!("its history lacks {want}: {kinds:?}");
        }
    }
    Ok(n)
}

async fn poll<T, F, Fut>(wait: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + wait;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {} s waiting for {what}", wait.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
