//! Who may call which `/api/v1` route: one rule per (method, route template), in one
//! table. A route missing from the table is refused (403) and fails the authorization
//! matrix test, which walks every operation of the OpenAPI document.
//!
//! | role | may |
//! |---|---|
//! | `admin` | everything: users and tokens too, the service mode, starting backups (restores once they have routes) |
//! | `operator` | read everything (the backups too); deploy; start, cancel and change instances; retry incidents; work external tasks; work any user task |
//! | `user` | read everything but the backups; start instances; see, claim and complete the user tasks they may (assigned to them, or to one of their groups or to them as a candidate) |
//! | `viewer` | read everything but the backups |
//!
//! Every role reads `GET /api/v1/auth/me`; `POST /api/v1/auth/token` (logging in) and
//! `GET /api/v1/openapi.json` (what `/api/docs` shows) are public.

use axum::http::Method;
use steadyflow_store::users::Role;

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// No token needed (logging in).
    Public,
    /// One of these roles.
    Roles(&'static [Role]),
}

impl Rule {
    pub fn allows(self, role: Role) -> bool {
        match self {
            Rule::Public => true,
            Rule::Roles(roles) => roles.contains(&role),
        }
    }
}

const ALL: Rule = Rule::Roles(&[Role::Admin, Role::Operator, Role::User, Role::Viewer]);
const WORK: Rule = Rule::Roles(&[Role::Admin, Role::Operator, Role::User]);
const OPERATE: Rule = Rule::Roles(&[Role::Admin, Role::Operator]);
const ADMIN: Rule = Rule::Roles(&[Role::Admin]);

/// `(method, route template, rule)`.
pub const RULES: &[(&str, &str, Rule)] = &[
    // The API's description is public: `/api/docs` (open, like `/health`) loads it.
    ("GET", "/api/v1/openapi.json", Rule::Public),
    // Accounts.
    ("POST", "/api/v1/auth/token", Rule::Public),
    ("GET", "/api/v1/auth/me", ALL),
    ("GET", "/api/v1/users", ADMIN),
    ("POST", "/api/v1/users", ADMIN),
    ("GET", "/api/v1/users/{id}", ADMIN),
    ("PATCH", "/api/v1/users/{id}", ADMIN),
    ("DELETE", "/api/v1/users/{id}", ADMIN),
    ("GET", "/api/v1/users/{id}/tokens", ADMIN),
    ("POST", "/api/v1/users/{id}/tokens", ADMIN),
    ("DELETE", "/api/v1/tokens/{id}", ADMIN),
    // The service mode.
    ("GET", "/api/v1/system/mode", ADMIN),
    ("PUT", "/api/v1/system/mode", ADMIN),
    // Backups: an administrator starts one; operators see them.
    ("GET", "/api/v1/backups", OPERATE),
    ("POST", "/api/v1/backups", ADMIN),
    ("GET", "/api/v1/backups/{id}", OPERATE),
    // A spooled request's outcome: its id (128 random bits) is the capability.
    ("GET", "/api/v1/spool/{id}", Rule::Public),
    // Definitions.
    ("GET", "/api/v1/process-definitions", ALL),
    ("POST", "/api/v1/process-definitions", OPERATE),
    ("GET", "/api/v1/process-definitions/{id}", ALL),
    ("GET", "/api/v1/process-definitions/{id}/xml", ALL),
    ("POST", "/api/v1/process-definitions/key/{key}/start", WORK),
    ("POST", "/api/v1/process-definitions/{id}/start", WORK),
    // Instances.
    ("GET", "/api/v1/process-instances", ALL),
    ("GET", "/api/v1/process-instances/{id}", ALL),
    ("DELETE", "/api/v1/process-instances/{id}", OPERATE),
    ("GET", "/api/v1/process-instances/{id}/history", ALL),
    ("GET", "/api/v1/process-instances/{id}/variables", ALL),
    ("PUT", "/api/v1/process-instances/{id}/variables", OPERATE),
    ("POST", "/api/v1/process-instances/{id}/variables", OPERATE),
    ("PATCH", "/api/v1/process-instances/{id}/variables", OPERATE),
    // User tasks (a `user` only ever sees their own: see the tasks routes).
    ("GET", "/api/v1/tasks", ALL),
    ("GET", "/api/v1/tasks/{id}", ALL),
    ("POST", "/api/v1/tasks/{id}/claim", WORK),
    ("POST", "/api/v1/tasks/{id}/complete", WORK),
    // Incidents.
    ("GET", "/api/v1/incidents", ALL),
    ("POST", "/api/v1/incidents/{id}/retry", OPERATE),
    // External tasks (workers hold operator tokens).
    ("GET", "/api/v1/external-tasks", ALL),
    ("GET", "/api/v1/external-tasks/{id}", ALL),
    ("POST", "/api/v1/external-tasks/fetch-and-lock", OPERATE),
    ("POST", "/api/v1/external-tasks/{id}/complete", OPERATE),
    ("POST", "/api/v1/external-tasks/{id}/failure", OPERATE),
    ("PUT", "/api/v1/external-tasks/{id}/retries", OPERATE),
    ("POST", "/api/v1/external-tasks/{id}/retries", OPERATE),
    ("POST", "/api/v1/external-tasks/{id}/unlock", OPERATE),
    ("POST", "/api/v1/external-tasks/{id}/bpmnError", OPERATE),
];

/// The rule of `method` on the route template `route`; `None`: the table lacks it.
pub fn rule(method: &Method, route: &str) -> Option<Rule> {
    RULES
        .iter()
        .find(|(m, r, _)| *r == route && *m == method.as_str())
        .map(|(_, _, rule)| *rule)
}
