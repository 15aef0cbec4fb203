//! Rebuilds the crate when a file in `migrations/` is added or changed: `sqlx::migrate!` embeds
//! that directory at build time, and stable Rust cannot tell Cargo to watch it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
