//! The conformance driver over HTTP, against a started `steadyflow serve`.

use serde_json::{Value, json};
use steadyflow_store::Vars;

use super::driver::{Driver, ExtView, R, TaskView, WORKER};
use super::server::ServerProcess;

pub struct HttpDriver {
    pub server: ServerProcess,
    _dir: tempfile::TempDir,
}

impl HttpDriver {
    pub fn start() -> HttpDriver {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(dir.path(), None, &[]);
        HttpDriver { server, _dir: dir }
    }

    /// Every item of a list endpoint: walks its pages (`items`, `nextCursor` → `after`).
    fn all(&self, path: &str) -> R<Vec<Value>> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let url = match &after {
                Some(c) => format!("{path}{sep}after={c}"),
                None => path.to_string(),
            };
            let page = self.ok("GET", &url, None)?;
            let Some(list) = page["items"].as_array() else {
                return Err(format!("GET {url}: not a page: {page}"));
            };
            items.extend(list.iter().cloned());
            match page["nextCursor"].as_str() {
                Some(c) => after = Some(c.to_string()),
                None => return Ok(items),
            }
        }
    }

    fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> R<Value> {
        let (status, v) = self.server.call(method, path, body);
        if (200..300).contains(&status) {
            Ok(v)
        } else {
            Err(format!(
                "HTTP {status}: {}",
                v["error"]["message"].as_str().unwrap_or(&v.to_string())
            ))
        }
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn ext(v: &Value) -> ExtView {
    ExtView {
        id: v["id"].as_str().unwrap_or_default().into(),
        topic: v["topicName"].as_str().unwrap_or_default().into(),
        activity_id: v["activityId"].as_str().unwrap_or_default().into(),
    }
}

impl Driver for HttpDriver {
    fn deploy(&mut self, xml: &str) -> R<()> {
        let (status, v) = self.server.deploy(xml);
        match status {
            200 | 201 => Ok(()),
            _ => Err(format!(
                "HTTP {status}: {}",
                v["error"]["message"].as_str().unwrap_or_default()
            )),
        }
    }

    fn definition_count(&mut self) -> R<usize> {
        Ok(self.all("/api/v1/process-definitions")?.len())
    }

    fn start(&mut self, key: &str, vars: Vars) -> R<String> {
        let v = self.ok(
            "POST",
            &format!("/api/v1/process-definitions/key/{key}/start"),
            Some(&json!({ "variables": vars })),
        )?;
        Ok(v["id"].as_str().unwrap_or_default().to_string())
    }

    fn state(&mut self, instance: &str) -> R<String> {
        let v = self.ok(
            "GET",
            &format!("/api/v1/process-instances/{instance}"),
            None,
        )?;
        Ok(v["state"].as_str().unwrap_or_default().to_string())
    }

    fn incident_messages(&mut self, instance: &str) -> R<Vec<String>> {
        let v = self.all(&format!(
            "/api/v1/incidents?processInstanceId={instance}&open=true"
        ))?;
        Ok(v.iter()
            .filter_map(|i| i["message"].as_str().map(str::to_string))
            .collect())
    }

    fn tasks(&mut self, instance: &str) -> R<Vec<TaskView>> {
        let v = self.all(&format!("/api/v1/tasks?processInstanceId={instance}"))?;
        Ok(v.iter()
            .map(|t| TaskView {
                id: t["id"].as_str().unwrap_or_default().into(),
                name: t["name"].as_str().map(str::to_string),
                key: t["taskDefinitionKey"].as_str().unwrap_or_default().into(),
                assignee: t["assignee"].as_str().map(str::to_string),
                users: strings(&t["candidateUsers"]),
                groups: strings(&t["candidateGroups"]),
            })
            .collect())
    }

    fn complete_task(&mut self, task_id: &str, vars: Vars) -> R<()> {
        self.ok(
            "POST",
            &format!("/api/v1/tasks/{task_id}/complete"),
            Some(&json!({ "variables": vars })),
        )
        .map(|_| ())
    }

    fn external_tasks(&mut self, instance: &str) -> R<Vec<ExtView>> {
        let v = self.all(&format!(
            "/api/v1/external-tasks?processInstanceId={instance}"
        ))?;
        Ok(v.iter().map(ext).collect())
    }

    fn fetch_and_lock(&mut self, topic: &str, max: usize) -> R<Vec<ExtView>> {
        let body = json!({ "workerId": WORKER, "maxTasks": max, "topics": [{ "topicName": topic, "lockDuration": 600000 }] });
        let v = self.ok("POST", "/api/v1/external-tasks/fetch-and-lock", Some(&body))?;
        Ok(v.as_array().into_iter().flatten().map(ext).collect())
    }

    fn complete_external(&mut self, id: &str, vars: Vars) -> R<()> {
        let body = json!({ "workerId": WORKER, "variables": vars });
        self.ok(
            "POST",
            &format!("/api/v1/external-tasks/{id}/complete"),
            Some(&body),
        )
        .map(|_| ())
    }

    fn unlock_external(&mut self, id: &str) -> R<()> {
        self.ok("POST", &format!("/api/v1/external-tasks/{id}/unlock"), None)
            .map(|_| ())
    }

    fn pending_timers(&mut self, _instance: &str) -> R<usize> {
        Err("timers are not observable over HTTP; clock scenarios run in process".into())
    }

    fn advance_clock(&mut self, _by: chrono::Duration) -> R<()> {
        Err("the clock of a started server cannot be moved".into())
    }

    fn now(&mut self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }
}
