//! The rules of the migration runners: plain SQL files applied in version order, each
//! recorded in `schema_version`, and a database written by a newer binary refused.

/// One schema change of a backend, embedded in the binary.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// The database's schema is newer than this binary: its tables may mean something this
/// binary does not know, so it does not touch them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the database schema is at version {found}, newer than this binary knows (version {known}): \
     run the Steadyflow release that wrote it, or restore a backup made with this one"
)]
pub struct SchemaTooNew {
    pub found: i32,
    pub known: i32,
}

impl From<SchemaTooNew> for crate::StoreError {
    fn from(e: SchemaTooNew) -> Self {
        crate::StoreError::Unavailable(e.to_string())
    }
}

/// The version the last of `all` brings the schema to (0 for none).
pub fn latest(all: &[Migration]) -> i32 {
    all.last().map_or(0, |m| m.version)
}

/// The migrations to apply to a database at version `current`, in order. `all` is in
/// ascending version order.
pub fn pending(current: i32, all: &[Migration]) -> Result<&[Migration], SchemaTooNew> {
    debug_assert!(
        all.windows(2).all(|w| w[0].version < w[1].version),
        "migrations must be listed in ascending version order"
    );
    let known = latest(all);
    if current > known {
        return Err(SchemaTooNew {
            found: current,
            known,
        });
    }
    Ok(&all[all.partition_point(|m| m.version <= current)..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[Migration] = &[
        Migration {
            version: 1,
            name: "init",
            sql: "",
        },
        Migration {
            version: 2,
            name: "more",
            sql: "",
        },
    ];

    #[test]
    fn pending_in_order_and_newer_refused() {
        let versions =
            |c| -> Vec<i32> { pending(c, ALL).unwrap().iter().map(|m| m.version).collect() };
        assert_eq!(versions(0), [1, 2]);
        assert_eq!(versions(1), [2]);
        assert!(versions(2).is_empty());
        let err = pending(3, ALL).unwrap_err();
        assert_eq!(err, SchemaTooNew { found: 3, known: 2 });
        assert!(err.to_string().contains("newer than this binary"), "{err}");
        assert!(matches!(
            crate::StoreError::from(err),
            crate::StoreError::Unavailable(_)
        ));
    }
}
