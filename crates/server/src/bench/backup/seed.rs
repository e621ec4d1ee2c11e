//! The seed: real engine traffic that gives every table its real row shapes (instance
//! runtimes, journal images, history documents), which [`super::copies`] then multiplies.
//!
//! Two processes: the benchmark's reference order process (external tasks, a gateway, a
//! parallel fork) and a small approval process (a user task with a 72-hour boundary
//! timer), so that tasks, timers and incidents hold rows too. Instances end in the mix a
//! live engine has: most completed, some waiting, some locked by a worker, a few failed
//! with an incident, approvals open or claimed.

use std::sync::Arc;

use anyhow::Result;
use serde_json::{Value, json};
use steadyflow_engine::{Engine, ExternalFailure, StartRequest};
use steadyflow_store::{TaskFilter, TopicLock};
use tokio::task::JoinSet;

use super::rng::Rng;
use crate::bench::REFERENCE_BPMN;

const APPROVAL_BPMN: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL"
             xmlns:camunda="http://camunda.org/schema/1.0/bpmn"
             id="benchApprovalDefs" targetNamespace="https://steadyflow.dev/bench">
  <process id="benchApproval" name="Benchmark approval" isExecutable="true">
    <startEvent id="start" />
    <sequenceFlow id="a1" sourceRef="start" targetRef="approve" />
    <userTask id="approve" name="Approve order" camunda:candidateGroups="sales,managers" camunda:candidateUsers="alice,bob" />
    <boundaryEvent id="late" attachedToRef="approve" cancelActivity="true">
      <timerEventDefinition><timeDuration>PT72H</timeDuration></timerEventDefinition>
    </boundaryEvent>
    <sequenceFlow id="a2" sourceRef="approve" targetRef="done" />
    <sequenceFlow id="a3" sourceRef="late" targetRef="escalated" />
    <endEvent id="done" />
    <endEvent id="escalated" />
  </process>
</definitions>"#;

/// What the seed holds.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeedStats {
    pub orders: usize,
    pub approvals: usize,
}

/// A UUID (v4 layout) from the generator: business keys and business ids inside
/// variables, remapped per copy like the engine's own ids.
fn uuid4(rng: &mut Rng) -> String {
    let (a, b) = (rng.next(), rng.next());
    let v = (u128::from(a) << 64 | u128::from(b)) & !(0xF_u128 << 76) & !(0x3_u128 << 62)
        | (0x4_u128 << 76)
        | (0x2_u128 << 62);
    super::copies::format_uuid(v)
}

const FIRST: &[&str] = &[
    "Ada", "Bela", "Chen", "Dana", "Emil", "Fatma", "Goran", "Hana", "Ivo", "Jara", "Kofi", "Lena",
    "Mara", "Noor", "Otto", "Pia",
];
const LAST: &[&str] = &[
    "Keller", "Novak", "Okafor", "Schmidt", "Tanaka", "Varga", "Weiss", "Yilmaz", "Costa",
    "Dubois", "Larsen", "Moreau",
];
const CITIES: &[&str] = &[
    "Berlin", "Lisbon", "Vienna", "Utrecht", "Lyon", "Gdansk", "Turin", "Aarhus",
];

/// Order variables of the size and shape a shop sends: a customer, 1–5 items.
fn order_variables(rng: &mut Rng, n: usize) -> serde_json::Map<String, Value> {
    let items: Vec<Value> = (0..1 + rng.below(5))
        .map(|_| {
            json!({
                "sku": format!("SKU-{:05}", rng.below(40_000)),
                "qty": 1 + rng.below(4),
                "price": (rng.below(20_000) as f64) / 100.0,
            })
        })
        .collect();
    let amount: u64 = 10 + rng.below(5_000);
    let (first, last) = (
        FIRST[rng.below(FIRST.len() as u64) as usize],
        LAST[rng.below(LAST.len() as u64) as usize],
    );
    let channel = ["web", "app", "phone"][rng.below(3) as usize];
    let v = json!({
        "amount": amount,
        "order": n,
        "currency": "EUR",
        "channel": channel,
        "customer": {
            "id": uuid4(rng),
            "name": format!("{first} {last}"),
            "email": format!("{}.{}@example.org", first.to_lowercase(), last.to_lowercase()),
            "city": CITIES[rng.below(CITIES.len() as u64) as usize],
        },
        "items": items,
    });
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

fn vars(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// Runs the seed workload: `n` instances through `engine` (deploys both processes).
pub async fn run(engine: Arc<Engine>, n: usize) -> Result<SeedStats> {
    engine.deploy(REFERENCE_BPMN).await?;
    engine.deploy(APPROVAL_BPMN).await?;
    let mut rng = Rng::new(0x5eed);
    let mut stats = SeedStats::default();
    let mut starts = JoinSet::new();
    for i in 0..n {
        let approval = rng.below(10) == 0;
        let (key, variables) = if approval {
            stats.approvals += 1;
            ("benchApproval", order_variables(&mut rng, i))
        } else {
            stats.orders += 1;
            ("benchOrder", order_variables(&mut rng, i))
        };
        let business_key = Some(format!("order-{}", uuid4(&mut rng)));
        if starts.len() >= 64
            && let Some(done) = starts.join_next().await
        {
            done??;
        }
        let engine = engine.clone();
        starts.spawn(async move {
            engine
                .start(
                    key,
                    StartRequest {
                        variables,
                        business_key,
                    },
                )
                .await
        });
    }
    while let Some(r) = starts.join_next().await {
        r??;
    }
    work_orders(&engine, &mut rng).await?;
    work_approvals(&engine, &mut rng).await?;
    Ok(stats)
}

/// What a worker does with one task of the seed (decided per task, by chance).
enum Fate {
    Complete,
    Fail,
    Unlock,
    KeepLocked,
}

async fn apply(engine: &Arc<Engine>, jobs: Vec<(String, String, Fate, Value)>) -> Result<()> {
    let mut set = JoinSet::new();
    for (id, worker, fate, out) in jobs {
        let engine = engine.clone();
        set.spawn(async move {
            match fate {
                Fate::Complete => engine
                    .complete_external_task(&id, &worker, vars(out))
                    .await
                    .map(|_| ()),
                Fate::Fail => engine
                    .fail_external_task(
                        &id,
                        ExternalFailure {
                            worker_id: worker,
                            error_message: "stock service answered 503 Service Unavailable".into(),
                            retries: 0,
                            retry_timeout_ms: 0,
                        },
                    )
                    .await
                    .map(|_| ()),
                Fate::Unlock => engine.unlock_external_task(&id).await.map(|_| ()),
                Fate::KeepLocked => Ok(()),
            }
        });
        if set.len() >= 64
            && let Some(done) = set.join_next().await
        {
            done??;
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

fn topic(name: &str) -> TopicLock {
    TopicLock {
        topic: name.to_string(),
        lock_duration_ms: 600_000,
    }
}

/// Fetches every task of `topics` once (in batches) and decides each one's fate.
async fn fetch_all(
    engine: &Arc<Engine>,
    worker: &str,
    topics: &[TopicLock],
    mut decide: impl FnMut(&steadyflow_store::LockedTask) -> (Fate, Value),
) -> Result<()> {
    loop {
        let locked = engine.fetch_and_lock(worker, 256, topics).await?;
        if locked.is_empty() {
            return Ok(());
        }
        let jobs = locked
            .iter()
            .map(|l| {
                let (fate, out) = decide(l);
                (l.task.id.clone(), worker.to_string(), fate, out)
            })
            .collect();
        apply(engine, jobs).await?;
    }
}

async fn work_orders(engine: &Arc<Engine>, rng: &mut Rng) -> Result<()> {
    // Reserve: 80 % done, 5 % failed (incident), 5 % put back, 10 % left with a worker.
    // A task left locked or put back is not fetched again by this loop: the unlocked
    // ones are fetched by the second worker below, and completed or kept.
    let mut later = Vec::new();
    fetch_all(
        engine,
        "stock-worker-1",
        &[topic("reserve")],
        |l| match rng.below(100) {
            0..80 => (
                Fate::Complete,
                json!({"reservationId": uuid4(rng), "warehouse": CITIES[rng.below(8) as usize]}),
            ),
            80..85 => (Fate::Fail, Value::Null),
            85..90 => {
                later.push(l.task.id.clone());
                (Fate::Unlock, Value::Null)
            }
            _ => (Fate::KeepLocked, Value::Null),
        },
    )
    .await?;
    // Ship and bill (orders above 1000 only): mostly both done; some halfway.
    fetch_all(
        engine,
        "fulfilment-worker-1",
        &[topic("ship"), topic("bill")],
        |l| {
            if rng.below(100) < 92 {
                let out = if l.task.topic == "ship" {
                    json!({"trackingNumber": format!("TRK{:012}", rng.below(1_000_000_000_000)), "carrier": "DHL"})
                } else {
                    json!({"invoiceId": uuid4(rng), "paid": true})
                };
                (Fate::Complete, out)
            } else {
                (Fate::KeepLocked, Value::Null)
            }
        },
    )
    .await?;
    tracing::debug!(waiting = later.len(), "reserve tasks left waiting");
    Ok(())
}

async fn work_approvals(engine: &Arc<Engine>, rng: &mut Rng) -> Result<()> {
    let tasks = engine.tasks(&TaskFilter::default()).await?;
    let mut set = JoinSet::new();
    for t in tasks {
        let engine = engine.clone();
        let roll = rng.below(10);
        set.spawn(async move {
            match roll {
                // Approved: the instance completes (the timer goes with it).
                0..4 => {
                    engine.claim_task(&t.id, "alice").await?;
                    engine
                        .complete_task(
                            &t.id,
                            vars(json!({"approved": true, "approvedBy": "alice"})),
                        )
                        .await?;
                }
                4..7 => {
                    engine.claim_task(&t.id, "bob").await?;
                }
                _ => {}
            }
            anyhow::Ok(())
        });
        if set.len() >= 64
            && let Some(done) = set.join_next().await
        {
            done??;
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}
