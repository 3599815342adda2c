//! `example-backend-swap <journal> write <day> <text> | list | export <file> | import <file>`
//!
//! The passphrase comes from `JOURNAL_PASSPHRASE`; `JOURNAL_STORAGE` and `JOURNAL_CIPHER` name the
//! backends (optional). Build it with other backends by feature, e.g.
//! `cargo run -p example-backend-swap --no-default-features --features sqlite,sodium -- j.db list`.

use std::path::PathBuf;
use std::process::ExitCode;

use example_backend_swap::{Backend, Journal};
use hearth::{Error, KdfCost};

async fn run(args: &[String]) -> hearth::Result<()> {
    let usage = || {
        Error::invalid(
            "usage: example-backend-swap <journal> write <day> <text> | list | export <file> | import <file>",
        )
    };
    let path = PathBuf::from(args.first().ok_or_else(usage)?);
    let passphrase = std::env::var("JOURNAL_PASSPHRASE")
        .map_err(|_| Error::invalid("set JOURNAL_PASSPHRASE"))?;
    let backend = Backend::from_env();
    let journal = match args.get(1).map(String::as_str) {
        Some("import") => {
            let file = PathBuf::from(args.get(2).ok_or_else(usage)?);
            Journal::import_from(&file, &path, &passphrase, &backend).await?
        }
        _ => Journal::open(&path, &passphrase, &backend, KdfCost::DEFAULT).await?,
    };
    let (storage, cipher) = journal.backend();
    println!("backend: storage={storage} cipher={cipher}");
    match (args.get(1).map(String::as_str), args.get(2), args.get(3)) {
        (Some("write"), Some(day), Some(text)) => journal.write(day, text).await?,
        (Some("list"), None, None) | (Some("import"), Some(_), None) => {
            for (day, text) in journal.entries().await? {
                println!("{day}: {text}");
            }
        }
        (Some("export"), Some(file), None) => {
            let rows = journal.export_to(&PathBuf::from(file)).await?;
            println!("exported {rows} entries");
        }
        _ => return Err(usage()),
    }
    journal.close().await
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
