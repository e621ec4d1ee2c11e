//! Cases: plain rows (users, API tokens) are written whole, read back by key and in key
//! order, and journaled with their images like every other row.

use std::sync::Arc;

use crate::users::{self, PlainWrite, Role, TokenRecord, UserRecord};
use crate::*;

use super::fixtures::*;
use super::poll::*;

fn user(id: &str, role: Role, t: i64) -> UserRecord {
    UserRecord {
        id: id.into(),
        role,
        groups: vec!["sales".into(), "emea".into()],
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
        created_at: at(t),
        updated_at: at(t),
        disabled_at: None,
    }
}

fn token(id: &str, user: &str, t: i64) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        user_id: user.into(),
        label: Some("ci".into()),
        hash: format!("{id}-hash"),
        created_at: at(t),
        expires_at: Some(at(t + 86_400_000)),
        revoked_at: None,
    }
}

pub async fn plain_rows_round_trip(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let ann = user("ann", Role::Operator, 1);
    let bob = UserRecord {
        groups: Vec::new(),
        password_hash: None,
        ..user("bob", Role::Viewer, 2)
    };
    s.plain_write(
        at(10),
        vec![
            PlainWrite::put(&bob).unwrap(),
            PlainWrite::put(&ann).unwrap(),
        ],
    )
    .await
    .expect("write users");
    let read: Option<UserRecord> = users::one(s, "ann").await.expect("read ann");
    assert_eq!(read.as_ref(), Some(&ann), "a user reads back as written");
    assert_eq!(users::one::<UserRecord>(s, "nobody").await.unwrap(), None);
    let all: Vec<UserRecord> = users::all(s).await.expect("list users");
    assert_eq!(all, vec![ann.clone(), bob.clone()], "listed in key order");

    // Replacing a row: every column follows, none keeps an old value.
    let disabled = UserRecord {
        role: Role::Admin,
        groups: vec!["ops".into()],
        password_hash: None,
        updated_at: at(20),
        disabled_at: Some(at(20)),
        ..ann.clone()
    };
    s.plain_write(at(20), vec![PlainWrite::put(&disabled).unwrap()])
        .await
        .expect("update ann");
    assert_eq!(users::one(s, "ann").await.unwrap(), Some(disabled.clone()));

    let t1 = token("tok1", "bob", 30);
    let t2 = TokenRecord {
        label: None,
        expires_at: None,
        ..token("tok2", "bob", 31)
    };
    s.plain_write(
        at(30),
        vec![PlainWrite::put(&t1).unwrap(), PlainWrite::put(&t2).unwrap()],
    )
    .await
    .expect("write tokens");
    let tokens: Vec<TokenRecord> = users::all(s).await.unwrap();
    assert_eq!(tokens, vec![t1.clone(), t2.clone()]);
    // Tokens and users are separate tables: a user key is no token.
    assert_eq!(users::one::<TokenRecord>(s, "ann").await.unwrap(), None);

    // Removing: the row goes; removing it again writes nothing.
    s.plain_write(at(40), vec![PlainWrite::delete::<TokenRecord>("tok1")])
        .await
        .expect("remove tok1");
    s.plain_write(at(41), vec![PlainWrite::delete::<TokenRecord>("tok1")])
        .await
        .expect("remove tok1 again");
    assert_eq!(users::one::<TokenRecord>(s, "tok1").await.unwrap(), None);
    assert_eq!(users::all::<TokenRecord>(s).await.unwrap(), vec![t2]);

    let rows = journal_until(s, 0, "the token removal", |rows| {
        has(rows, "apiToken", "tok1", "delete")
    })
    .await;
    let ops: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.entity.to_string(), r.entity_id.clone(), r.op.to_string()))
        .collect();
    let want = [
        ("user", "bob", "insert"),
        ("user", "ann", "insert"),
        ("user", "ann", "update"),
        ("apiToken", "tok1", "insert"),
        ("apiToken", "tok2", "insert"),
        ("apiToken", "tok1", "delete"),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(e, i, o)| (e.to_string(), i.to_string(), o.to_string()))
        .collect();
    assert_eq!(
        ops, want,
        "one journal row per write, in order; none for a no-op removal"
    );
    let update = &rows[2];
    assert_eq!(update.tx_time, at(20), "journal time is the write's time");
    assert_eq!(
        update.row,
        serde_json::to_value(&disabled).unwrap(),
        "the image is the record's JSON"
    );
    assert!(rows[5].row.is_null(), "a removal has no image");
}

/// Every store here can say when plain rows change: its watch turns live (PostgreSQL:
/// once its listener is connected), and each plain write this store commits moves the
/// epoch before the write returns, so a cache never outlives a write made through it.
pub async fn plain_watch_moves_with_every_write(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let watch = s.plain_watch().expect("the store has a plain-row watch");
    let mut before = until("the plain-row watch to be live", || async {
        watch.epoch().ok_or("not live")
    })
    .await;
    for (n, w) in [
        PlainWrite::put(&user("carl", Role::User, 1)).unwrap(),
        PlainWrite::put(&token("00000000000000c1", "carl", 2)).unwrap(),
        PlainWrite::delete::<UserRecord>("carl"),
    ]
    .into_iter()
    .enumerate()
    {
        s.plain_write(at(10 + n as i64), vec![w])
            .await
            .expect("write");
        let after = watch.epoch();
        assert!(
            after.is_some_and(|e| e != before),
            "write {n}: epoch {before} did not move (now {after:?})"
        );
        before = after.unwrap_or(before);
    }
}

/// The service mode is one plain row: set, replaced and read back whole (its optional
/// fields too), and journaled as `systemMode`.
pub async fn system_mode_round_trip(store: Arc<dyn Store>) {
    use crate::mode::{Mode, SYSTEM_MODE_KEY, SystemModeRecord};
    let s = store.as_ref();
    assert_eq!(
        users::one::<SystemModeRecord>(s, SYSTEM_MODE_KEY)
            .await
            .unwrap(),
        None,
        "a fresh database has no mode row (normal)"
    );
    let ro = SystemModeRecord::new(
        Mode::ReadOnly,
        Some("storage migration, back at 18:00".into()),
        Some(at(5_000)),
        "ann",
        at(10),
    );
    s.plain_write(at(10), vec![PlainWrite::put(&ro).unwrap()])
        .await
        .expect("set read-only");
    assert_eq!(
        users::one(s, SYSTEM_MODE_KEY).await.unwrap(),
        Some(ro.clone())
    );
    let normal = SystemModeRecord::new(Mode::Normal, None, None, "cli:root", at(20));
    s.plain_write(at(20), vec![PlainWrite::put(&normal).unwrap()])
        .await
        .expect("back to normal");
    assert_eq!(
        users::one(s, SYSTEM_MODE_KEY).await.unwrap(),
        Some(normal.clone()),
        "reason and until are cleared, not kept"
    );
    let rows = journal_until(s, 0, "the mode's second write", |rows| {
        has(rows, "systemMode", SYSTEM_MODE_KEY, "update")
    })
    .await;
    let modes: Vec<_> = rows
        .iter()
        .filter(|r| r.entity.as_str() == "systemMode")
        .map(|r| {
            (
                r.op.to_string(),
                r.row["mode"].clone(),
                r.row["setBy"].clone(),
            )
        })
        .collect();
    assert_eq!(
        modes,
        vec![
            ("insert".to_string(), "read-only".into(), "ann".into()),
            ("update".to_string(), "normal".into(), "cli:root".into()),
        ],
        "who set which mode is in the journal"
    );
}
