//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds the files of
//! `migrations/` but tells Cargo only about the files it saw, so a new one was left out of
//! an incremental build (sqlx's documented remedy).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
