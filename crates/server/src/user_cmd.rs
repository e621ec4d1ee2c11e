//! `steadyflow user …`: users, roles, groups and API tokens, written straight into the
//! configured database (journaled, so backups carry them). On SQLite the server must be
//! stopped (it holds the database); on PostgreSQL this works beside running nodes, and
//! a change takes effect at their next request. A running server offers the same through
//! `/api/v1/users` (admin token).

use std::io::Read;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use steadyflow_api::accounts::{Accounts, UserChange, parse_ttl};
use steadyflow_engine::SystemClock;
use steadyflow_store::users::Role;

use crate::config::{self, DbArgs};

#[derive(Debug, clap::Args)]
pub struct UserArgs {
    #[command(subcommand)]
    pub command: UserCommand,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub redis: crate::config::RedisArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Add a user: `user add NAME --role admin|operator|user|viewer [--group G]... [--password-stdin]`.
    Add {
        name: String,
        /// admin: everything; operator: deploy, instances, incidents, external tasks;
        /// user: start instances, work on their tasks; viewer: read only.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// A group (candidate groups of user tasks); repeat for several.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Read a password from standard input (first line), for `POST /api/v1/auth/token`.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Issue a token for a user and print it (it is shown only this once).
    Token {
        name: String,
        /// Lifetime: 30d, 12h, 90m, 3600s (at most 3650d: every token expires).
        #[arg(long, default_value = "30d")]
        ttl: String,
        /// What the token is for (shown in listings).
        #[arg(long = "name")]
        label: Option<String>,
    },
    /// List users, or one user's tokens with `--tokens NAME`.
    List {
        #[arg(long = "tokens", value_name = "NAME")]
        tokens_of: Option<String>,
    },
    /// Disable a user: every token and the password are refused at once.
    Disable { name: String },
    /// Enable a disabled user.
    Enable { name: String },
    /// Remove a user and all their tokens.
    Remove { name: String },
    /// Revoke one token by its id (as `user list --tokens NAME` shows it).
    Revoke { token_id: String },
    /// Change a user's role or groups.
    Set {
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Option<Role>,
        /// Replaces the user's groups; repeat for several.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Removes every group.
        #[arg(long, conflicts_with = "groups")]
        no_groups: bool,
        /// Read a new password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("`{s}` is not a role: admin, operator, user or viewer"))
}

fn read_password() -> Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("cannot read the password from standard input")?;
    let line = text.lines().next().unwrap_or_default().to_string();
    if line.is_empty() {
        bail!("no password on standard input");
    }
    Ok(line)
}

pub async fn run(args: UserArgs, config_file: Option<&std::path::Path>) -> Result<()> {
    let cfg = config::load(config_file, &args.db, None)?;
    let store = crate::stores::open_configured(&cfg).await.with_context(|| {
        "cannot open the database (on SQLite, stop the server first, or use /api/v1/users with an admin token)"
    })?;
    // With a Redis cache, changes are announced there too (cached rows are dropped).
    let (store, cache) = crate::redis_cache::wrap(store, &args.redis)?;
    if let Some(c) = &cache {
        c.probe().await;
        if !c.is_up() {
            eprintln!(
                "warning: the Redis cache does not answer; nodes may use cached users and tokens for up to {} s",
                crate::redis_cache::ROW_TTL
            );
        }
    }
    let accounts = Accounts::new(store, Arc::new(SystemClock));
    match args.command {
        UserCommand::Add {
            name,
            role,
            groups,
            password_stdin,
        } => {
            let password = password_stdin.then(read_password).transpose()?;
            let user = accounts.add_user(&name, role, groups, password).await?;
            eprintln!(
                "added user {} ({}{})",
                user.id,
                user.role,
                if user.groups.is_empty() {
                    String::new()
                } else {
                    format!("; groups {}", user.groups.join(", "))
                }
            );
        }
        UserCommand::Token { name, ttl, label } => {
            let issued = accounts.issue_token(&name, parse_ttl(&ttl)?, label).await?;
            let until = issued
                .record
                .expires_at
                .map_or("-".to_string(), |t| t.to_rfc3339());
            eprintln!(
                "token {} for {name}, expires {until}; it is shown only now:",
                issued.record.id
            );
            println!("{}", issued.text);
        }
        UserCommand::List { tokens_of: None } => {
            println!(
                "{:<24} {:<9} {:<9} {:<8} GROUPS",
                "NAME", "ROLE", "STATE", "PASSWORD"
            );
            for u in accounts.users().await? {
                println!(
                    "{:<24} {:<9} {:<9} {:<8} {}",
                    u.id,
                    u.role,
                    if u.disabled_at.is_some() {
                        "disabled"
                    } else {
                        "enabled"
                    },
                    if u.password_hash.is_some() {
                        "yes"
                    } else {
                        "no"
                    },
                    u.groups.join(",")
                );
            }
        }
        UserCommand::List {
            tokens_of: Some(name),
        } => {
            accounts.user(&name).await?;
            println!(
                "{:<18} {:<26} {:<26} {:<9} LABEL",
                "ID", "CREATED", "EXPIRES", "STATE"
            );
            let now = chrono::Utc::now();
            for t in accounts.tokens(Some(&name)).await? {
                let state = if t.revoked_at.is_some() {
                    "revoked"
                } else if t.usable(now) {
                    "valid"
                } else {
                    "expired"
                };
                println!(
                    "{:<18} {:<26} {:<26} {:<9} {}",
                    t.id,
                    t.created_at.to_rfc3339(),
                    t.expires_at.map_or("never".into(), |e| e.to_rfc3339()),
                    state,
                    t.label.unwrap_or_default()
                );
            }
        }
        UserCommand::Disable { name } => {
            let change = UserChange {
                disabled: Some(true),
                ..UserChange::default()
            };
            accounts.change_user(&name, change).await?;
            eprintln!("disabled user {name}: their tokens and password are refused from now on");
        }
        UserCommand::Enable { name } => {
            let change = UserChange {
                disabled: Some(false),
                ..UserChange::default()
            };
            accounts.change_user(&name, change).await?;
            eprintln!("enabled user {name}");
        }
        UserCommand::Remove { name } => {
            accounts.remove_user(&name).await?;
            eprintln!("removed user {name} and their tokens");
        }
        UserCommand::Revoke { token_id } => {
            let t = accounts.revoke(&token_id).await?;
            eprintln!("revoked token {} of {}", t.id, t.user_id);
        }
        UserCommand::Set {
            name,
            role,
            groups,
            no_groups,
            password_stdin,
        } => {
            let change = UserChange {
                role,
                groups: if no_groups {
                    Some(Vec::new())
                } else if groups.is_empty() {
                    None
                } else {
                    Some(groups)
                },
                password: password_stdin.then(read_password).transpose()?.map(Some),
                disabled: None,
            };
            let u = accounts.change_user(&name, change).await?;
            eprintln!(
                "user {}: role {}, groups {}",
                u.id,
                u.role,
                u.groups.join(",")
            );
        }
    }
    Ok(())
}
