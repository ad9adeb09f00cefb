//! The pins of both backends' landed migrations: an edited or renumbered migration fails here.
//! The store's behaviour is tested on both backends by the shared bodies of `store/test_bodies.rs`.

use super::MIGRATOR;

/// Every landed PostgreSQL migration: (version, hex SHA-384 of its file, as sqlx records it).
const PG_MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "a6c4fd6658236b79ce09d3cc2acc76e792557dd6a23043f0ce713e9678db368ae6751a1dfd99d61c37fbd9763605b088",
    ),
    (
        2,
        "b37c6e991987c9bd3bf6c31def864e20e1cbc1b6966b0867e99f94fb941bdf02307dc37ed8b828893c894631afbc0b7f",
    ),
];

/// Every landed SQLite migration script (`store/migrations.rs`), hex SHA-256, in order.
const SQLITE_MIGRATIONS: &[&str] = &[
    "7fbe2f575bb4f56bb6d983f4008923521da98519ce45ebfe481d80570494762a",
    "9d5786826f4abddb2f4d9d635255e923d1afe6edd69ddbfeada8a3e65ca65d6f",
    "66e3b5eeb958dfc0cd40b90a15351c28b5140dd553039bc060e5fc6937faf9c0",
    "07cf389c88f9e2786ef444030904326de1c9f17813386915b4d8acac47d185fb",
    "bc3a16a9ce6cfc21c7f56cd04cadc5c0a7b1e12b569fcbe4468796642f1b74da",
    "21b62a054e1d436c8537d04264b31fd450406fddf701d34fb9871abb6e3373b5",
    "30283f11aa5244e345bf831148b3c098f241ce9fcdf53a31d7ec3c3ebcb14f98",
    "99c820ac66495c5a163e87f4ad3197ee78b5393531f00d2e874d9c21ad337a8e",
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn landed_postgres_migrations_are_never_edited() {
    let embedded: Vec<(i64, String)> = MIGRATOR
        .iter()
        .map(|m| (m.version, hex(&m.checksum)))
        .collect();
    for (i, (version, checksum)) in PG_MIGRATIONS.iter().enumerate() {
        let Some((found, sum)) = embedded.get(i) else {
            panic!("PostgreSQL migration {version} is gone; a landed migration stays forever");
        };
        assert_eq!(found, version, "PostgreSQL migrations were renumbered");
        assert_eq!(
            sum, checksum,
            "PostgreSQL migration {version} was edited after it landed; revert it and add a new \
             migration instead"
        );
    }
    assert_eq!(
        embedded.len(),
        PG_MIGRATIONS.len(),
        "a new PostgreSQL migration: add its version and checksum to PG_MIGRATIONS ({embedded:?})"
    );
}

#[test]
fn landed_sqlite_migrations_are_never_edited() {
    use sha2::Digest;
    let scripts = crate::store::sqlite::migrations::MIGRATIONS;
    for (i, pinned) in SQLITE_MIGRATIONS.iter().enumerate() {
        let Some(script) = scripts.get(i) else {
            panic!(
                "SQLite migration {} is gone; a landed migration stays forever",
                i + 1
            );
        };
        assert_eq!(
            hex(&sha2::Sha256::digest(script.as_bytes())),
            *pinned,
            "SQLite migration {} was edited after it landed; revert it and add a new migration \
             instead",
            i + 1
        );
    }
    let sums: Vec<String> = scripts
        .iter()
        .map(|s| hex(&sha2::Sha256::digest(s.as_bytes())))
        .collect();
    assert_eq!(
        scripts.len(),
        SQLITE_MIGRATIONS.len(),
        "a new SQLite migration: add its checksum to SQLITE_MIGRATIONS ({sums:?})"
    );
}
