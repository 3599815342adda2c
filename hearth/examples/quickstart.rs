//! The quick start: open an encrypted store on a SQLite file, write and read records, and look
//! at what actually reached the disk.
//!
//! `cargo run --release -p hearth --example quickstart [STORE_PATH]`

use hearth::{ErrorKind, Store, WriteBatch};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().join("quickstart.db"));
    let passphrase = "correct horse battery staple";

    println!(
        "1. Create a store at {} (Argon2id t=3, m=64 MiB)",
        path.display()
    );
    let store = Store::builder()
        .path(&path)
        .passphrase(passphrase)
        .storage("sqlite")
        .cipher("orion")
        .open()
        .await?;
    let info = store.info().await?;
    println!(
        "   device {}  space {}  storage {}  cipher {}",
        info.device, info.space, info.storage, info.cipher
    );

    println!("2. Write three notes in one atomic batch, then delete one");
    let mut batch = WriteBatch::new();
    batch.put(
        "notes",
        "2026-11-25/groceries",
        &json!({"title": "Groceries", "body": "oat milk, lentils"}),
    )?;
    batch.put(
        "notes",
        "2026-11-25/garden",
        &json!({"title": "Garden", "body": "plant garlic before frost"}),
    )?;
    batch.put(
        "notes",
        "2026-11-26/call",
        &json!({"title": "Call", "body": "dentist at 9"}),
    )?;
    store.write(batch).await?;
    store.delete("notes", "2026-11-26/call").await?;

    println!("3. What the SQLite file holds for one note (blind id, sealed envelope):");
    let id = store.record_id("notes", "2026-11-25/garden")?;
    if let Some(row) = store.storage().get(&id).await? {
        let hex: String = row
            .envelope
            .iter()
            .take(24)
            .map(|b| format!("{b:02x}"))
            .collect();
        println!(
            "   id {}…  envelope {} bytes: {hex}…",
            id,
            row.envelope.len()
        );
    }

    println!("4. Read back through the store (decrypted on read):");
    for (key, value) in store.scan("notes", Some("2026-11-25/"), 10).await? {
        println!("   {key}: {}", value["title"]);
    }
    let info = store.info().await?;
    println!(
        "   {} writes logged for sync, {} pending",
        info.last_seq, info.pending
    );
    store.close().await?;

    println!("5. Reopen with a wrong passphrase:");
    match Store::builder()
        .path(&path)
        .passphrase("wrong")
        .open()
        .await
    {
        Err(e) if e.kind() == ErrorKind::WrongPassphrase => println!("   refused: {e}"),
        Err(e) => return Err(e.into()),
        Ok(_) => return Err("a wrong passphrase opened the store".into()),
    }
    let store = Store::builder()
        .path(&path)
        .passphrase(passphrase)
        .open()
        .await?;
    let garden = store.get("notes", "2026-11-25/garden").await?;
    println!(
        "   the right one still reads: {}",
        garden.map(|v| v["body"].to_string()).unwrap_or_default()
    );
    store.close().await?;
    println!("ok");
    Ok(())
}
