//! Rebuilds when an embedded PostgreSQL migration changes (`sqlx::migrate!` reads the folder at
//! compile time, and cargo does not watch it by itself).

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
