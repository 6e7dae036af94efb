//! The PostgreSQL sink's schema and its versioned migrations.
//!
//! `secchan_schema` holds one row per migration applied (version, description, when). At
//! start the server reads the highest version: if it is the newest this build knows, it
//! touches nothing else (so the server's role needs no CREATE privilege once an operator ran
//! `secchan server --init-sink` with one that has it); if older, it applies the missing
//! migrations in one transaction under an advisory lock, so instances starting together
//! apply each once; if newer (a newer secchan migrated the database), it refuses to start.

use tokio_postgres::GenericClient;

/// One schema change.
pub(super) struct Migration {
    /// Its version: the schema's version once it is applied.
    pub(super) version: i32,
    /// What it does, as recorded in `secchan_schema`.
    pub(super) description: &'static str,
    /// Its SQL.
    pub(super) sql: &'static str,
}

/// Every migration, oldest first; a new one is appended with the next version, never edited
/// once released.
pub(super) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "secchan_messages: one row per message, unique on (fingerprint, stream, seq)",
    sql: include_str!("migrations/0001_messages.sql"),
}];

/// The schema version this build writes.
pub(super) fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Key of the transaction-level advisory lock migrations hold ("secchan" in ASCII).
const MIGRATION_LOCK: i64 = 0x0073_6563_6368_616e;

const CREATE_VERSIONS: &str = "CREATE TABLE IF NOT EXISTS secchan_schema (
    version     integer     PRIMARY KEY,
    description text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)";

/// What [`migrate`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The schema was already the newest.
    Current(i32),
    /// Migrations were applied: from this version to the newest.
    Migrated { from: i32, to: i32 },
}

/// Why the schema cannot be used.
#[derive(Debug, thiserror::Error)]
pub(super) enum SchemaError {
    /// The database is unreachable or refused a statement.
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    /// A newer secchan migrated this database.
    #[error("the database's secchan schema is version {found}, newer than this secchan knows ({known}): run the newer secchan, or a database of its own")]
    Newer { found: i32, known: i32 },
}

/// The highest migration recorded, 0 if `secchan_schema` does not exist.
async fn current(client: &impl GenericClient) -> Result<i32, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT to_regclass('secchan_schema') IS NOT NULL", &[])
        .await?;
    if !row.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = client
        .query_one("SELECT coalesce(max(version), 0) FROM secchan_schema", &[])
        .await?;
    Ok(row.get(0))
}

fn check(found: i32) -> Result<(), SchemaError> {
    let known = latest();
    if found > known {
        return Err(SchemaError::Newer { found, known });
    }
    Ok(())
}

/// Brings the schema to the newest version (see the module documentation).
pub(super) async fn migrate(client: &mut tokio_postgres::Client) -> Result<Outcome, SchemaError> {
    let found = current(client).await?;
    check(found)?;
    if found == latest() {
        return Ok(Outcome::Current(found));
    }
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(CREATE_VERSIONS).await?;
    // Another instance may have migrated while this one waited for the lock.
    let from = current(&tx).await?;
    check(from)?;
    for m in MIGRATIONS.iter().filter(|m| m.version > from) {
        tx.batch_execute(m.sql).await?;
        tx.execute(
            "INSERT INTO secchan_schema (version, description) VALUES ($1, $2)",
            &[&m.version, &m.description],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Outcome::Migrated { from, to: latest() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_from_one_without_gaps() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.description);
            assert!(!m.sql.trim().is_empty());
        }
        assert_eq!(latest(), MIGRATIONS.len() as i32);
    }

    #[test]
    fn a_newer_schema_is_refused_and_an_older_one_migrated() {
        assert!(matches!(
            check(latest() + 1),
            Err(SchemaError::Newer { found, known }) if found == latest() + 1 && known == latest()
        ));
        assert!(check(0).is_ok());
        assert!(check(latest()).is_ok());
    }
}
