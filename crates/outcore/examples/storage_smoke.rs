//! Storage smoke run: writes 64 MiB of blocks into a local store, reads them back at two
//! snapshots, packs, verifies. `cargo run --release --example storage_smoke -- <dir>`

use std::time::Instant;

use outcore::storage::{CommitRequest, Key, LocalStorage, Oid, Storage, TxnMeta, Write};

fn main() -> outcore::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "demo-data".into());
    let store = LocalStorage::open(&dir)?;
    let file = Oid(store.new_oids(1)?.start);
    let block = 2 << 20;
    let t0 = Instant::now();
    let mut first = None;
    for round in 0..2u8 {
        let writes = (0..16u64)
            .map(|i| {
                let key = Key::Block { file, index: i };
                (key, Write::Store(vec![round + 1; block]))
            })
            .collect();
        let tid = store.commit(CommitRequest {
            base: store.head()?,
            writes,
            meta: TxnMeta::new("demo", format!("round {round}")),
        })?;
        first.get_or_insert(tid);
        println!("committed 16 blocks of 2 MiB at {tid}");
    }
    let first = first.expect("two rounds ran");
    let head = store.head()?;
    for (at, want) in [(first, 1u8), (head, 2u8)] {
        let v = store
            .load(Key::Block { file, index: 3 }, at)?
            .expect("written");
        assert!(v.data.iter().all(|&b| b == want));
        println!("block 3 at {at} holds {want}s, as committed");
    }
    let stats = store.pack(head)?;
    println!(
        "pack: removed {} old versions, bodies {} -> {} bytes",
        stats.versions_removed, stats.body_bytes_before, stats.body_bytes_after
    );
    let report = store.verify()?;
    println!(
        "verify: {} versions, {} bytes, {} problems; {:.2}s in all; store in {dir}",
        report.versions_checked,
        report.bytes_checked,
        report.problems.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
