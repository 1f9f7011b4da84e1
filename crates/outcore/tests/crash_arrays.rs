//! Crash consistency of the whole stack: a writer process does random array writes, appends
//! and resizes, committing each (small writes store page deltas, format 2), and now and then
//! packs the store (folding deltas into whole versions); it is SIGKILLed at random moments (often inside a commit). After
//! each kill the store must hold exactly the last acknowledged commit — or the one that was
//! being committed, if the kill came after its commit but before the acknowledgement — and pass
//! `verify`. 100 trials in CI, 1000 with `OUTCORE_LONG_TESTS`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outcore::array::Order;
use outcore::db::{BigArray, Database};

const BLK: usize = 64 << 10;
const WIDTH: u64 = 512; // u32 columns: one row is 2 KiB

/// Shape and content digest of the array (deterministic across processes).
fn digest(a: &BigArray) -> (u64, u64) {
    let v = a.view::<u32>().unwrap();
    let mut h = DefaultHasher::new();
    v.shape().hash(&mut h);
    for x in v.iter() {
        x.hash(&mut h);
    }
    (v.shape()[0] as u64, h.finish())
}

#[test]
fn child_entry() {
    let Ok(dir) = std::env::var("OUTCORE_CRASH_DIR") else {
        return;
    };
    let db = Database::open(&dir).unwrap();
    let conn = db.connect().unwrap();
    let mut a = match conn.array("a") {
        Ok(a) => a,
        Err(_) => {
            let a = conn
                .create_raw("a", "<u4", 4, &[0, WIDTH], Order::C, BLK)
                .unwrap();
            conn.commit().unwrap();
            a
        }
    };
    let mut rng = Instant::now().elapsed().as_nanos() as u64 ^ u64::from(std::process::id());
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n.max(1)
    };
    for n in 1u32.. {
        let rows = a.len().unwrap();
        if next(8) == 0 {
            // Compaction: pack folds the newest versions' deltas; a kill may land inside.
            db.storage().pack(outcore::storage::Tid::MAX).unwrap();
        }
        match next(4) {
            0 if rows > 0 => {
                // Overwrite a random run of rows.
                let start = next(rows);
                let end = (start + 1 + next(64)).min(rows);
                let mut v = a.view_mut::<u32>().unwrap();
                for r in start..end {
                    for c in 0..WIDTH {
                        v[[r as usize, c as usize]] = n ^ (r as u32 * 31 + c as u32);
                    }
                }
            }
            1 if rows > 8 => a.resize(&[rows - 1 - next(rows / 2), WIDTH]).unwrap(),
            _ => {
                let k = 1 + next(100);
                let data =
                    ndarray::Array2::from_shape_fn((k as usize, WIDTH as usize), |(r, c)| {
                        n.wrapping_mul(7) ^ (r * 13 + c) as u32
                    });
                a.append(data.view().into_dyn()).unwrap();
            }
        }
        let (shape, sum) = digest(&a);
        println!("\n@pending {shape} {sum}");
        conn.commit().unwrap();
        println!("\n@acked {shape} {sum}");
        a = conn.array("a").unwrap();
    }
}

#[test]
fn killed_array_writer_leaves_the_last_acknowledged_state() {
    let trials = if std::env::var_os("OUTCORE_LONG_TESTS").is_some() {
        1000
    } else {
        100
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let mut acked: Option<(u64, u64)> = None;
    let mut after_commit = 0;
    let mut seed = 0x9E37_79B9u64;
    for trial in 0..trials {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
            .env("OUTCORE_CRASH_DIR", &dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| l.split_once('@').map(|(_, r)| r.to_string()))
                .collect::<Vec<String>>()
        });
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(10 + (seed >> 33) % 60));
        // SAFETY: SIGKILL to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let parse = |l: &str| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[1].parse::<u64>().unwrap(), f[2].parse::<u64>().unwrap())
        };
        let mut pending = None;
        for l in &lines {
            if l.starts_with("pending") {
                pending = Some(parse(l));
            } else if l.starts_with("acked") {
                acked = Some(parse(l));
                pending = None;
            }
        }
        let db = Database::open(dir.to_str().unwrap()).unwrap();
        let conn = db.connect().unwrap();
        let Ok(a) = conn.array("a") else {
            assert!(acked.is_none(), "trial {trial}: the array vanished");
            continue;
        };
        let now = digest(&a);
        if Some(now) == pending {
            // Killed after the commit, before its acknowledgement: fine, and now the truth.
            after_commit += 1;
            acked = Some(now);
        } else if let Some(expected) = acked {
            assert_eq!(
                now, expected,
                "trial {trial}: not the last acknowledged state"
            );
        }
        let report = db.storage().verify().unwrap();
        assert!(
            report.problems.is_empty(),
            "trial {trial}: {:?}",
            report.problems
        );
    }
    eprintln!(
        "{trials} kills; final {acked:?}; {after_commit} kills landed between commit and \
         acknowledgement"
    );
    assert!(
        acked.is_some(),
        "the writer never got a commit acknowledged"
    );
}
