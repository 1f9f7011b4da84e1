//! The `outcore` command as a user runs it: the built binary, real files, real stores.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_outcore");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the outcore binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command that must succeed quietly; returns its stdout.
fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "outcore {args:?} failed: {}",
        text(&out.stderr)
    );
    // No progress bars or warnings when stderr is not a terminal.
    assert_eq!(text(&out.stderr), "", "outcore {args:?} wrote to stderr");
    text(&out.stdout)
}

/// Runs a command that must fail with `code` and a one-line error; returns that line.
fn fails(args: &[&str], code: i32) -> String {
    let out = run(args);
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "outcore {args:?}: stdout {:?} stderr {err:?}",
        text(&out.stdout)
    );
    assert!(
        !err.contains("panicked"),
        "outcore {args:?} panicked: {err}"
    );
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("outcore: error: "), "{err:?}");
    err.trim_end().to_string()
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&ok(args)).expect("valid JSON")
}

/// A `.npy` file as `numpy.save` writes it (an independent implementation of the header).
fn npy(descr: &str, fortran: bool, shape: &[u64], data: &[u8]) -> Vec<u8> {
    let shape_repr = match shape {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!(
        "{{'descr': {descr}, 'fortran_order': {}, 'shape': {shape_repr}, }}",
        if fortran { "True" } else { "False" }
    );
    if let Some(&growth) = if fortran { shape.last() } else { shape.first() } {
        dict.push_str(&" ".repeat(21 - growth.to_string().len()));
    }
    let hlen = dict.len() + 1;
    let pad = 64 - (10 + hlen) % 64;
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&((hlen + pad) as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', pad));
    out.push(b'\n');
    out.extend_from_slice(data);
    out
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Fixture {
            root: dir.path().to_path_buf(),
            _dir: dir,
        }
    }

    fn path(&self, name: &str) -> String {
        self.root.join(name).display().to_string()
    }

    fn write(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.path(name);
        std::fs::write(&p, bytes).expect("write file");
        p
    }

    fn store(&self) -> String {
        self.path("store")
    }
}

/// A C-order (3, 4) float64 array 0..12.
fn c_f8() -> Vec<u8> {
    let data: Vec<u8> = (0..12).flat_map(|i| f64::from(i).to_le_bytes()).collect();
    npy("'<f8'", false, &[3, 4], &data)
}

/// An F-order (2, 3, 4) big-endian int32 array whose element (i, j, k) is 12i + 4j + k.
fn f_i4() -> Vec<u8> {
    let mut data = Vec::new();
    for k in 0..4i32 {
        for j in 0..3 {
            for i in 0..2 {
                data.extend_from_slice(&(12 * i + 4 * j + k).to_be_bytes());
            }
        }
    }
    npy("'>i4'", true, &[2, 3, 4], &data)
}

/// A structured array of 3 records (a: int32, b: 2 × float64).
fn structured() -> Vec<u8> {
    let mut data = Vec::new();
    for r in 0..3i32 {
        data.extend_from_slice(&r.to_le_bytes());
        data.extend_from_slice(&(f64::from(r) + 0.5).to_le_bytes());
        data.extend_from_slice(&(-f64::from(r)).to_le_bytes());
    }
    npy("[('a', '<i4'), ('b', '<f8', (2,))]", false, &[3], &data)
}

#[test]
fn import_inspect_export_roundtrip() {
    let fx = Fixture::new();
    let store = fx.store();
    let files = [("c", c_f8()), ("f", f_i4()), ("s", structured())];
    for (name, bytes) in &files {
        let input = fx.write(&format!("{name}.npy"), bytes);
        let msg = ok(&["import", &store, name, &input, "--blksize", "4096"]);
        assert!(msg.starts_with(&format!("imported {name}: ")), "{msg}");
    }

    let table = ok(&["ls", &store]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("STORED"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("c ") && lines[1].contains("(3, 4)"),
        "{table}"
    );
    assert!(
        lines[2].contains("(2, 3, 4)") && lines[2].contains(">i4"),
        "{table}"
    );
    assert!(
        lines[3].contains("[('a', '<i4'), ('b', '<f8', (2,))]"),
        "{table}"
    );
    let ls = json(&["ls", "--json", &store]);
    let arrays = ls.as_array().unwrap();
    assert_eq!(arrays.len(), 3);
    assert_eq!(arrays[1]["name"], "f");
    assert_eq!(arrays[1]["order"], "F");
    assert_eq!(arrays[1]["nbytes"], 96);
    assert_eq!(arrays[1]["stored_bytes"], 4096);
    assert_eq!(arrays[2]["itemsize"], 20);

    let info = json(&["info", "--json", &store, "c"]);
    assert_eq!(info["dtype"], "<f8");
    assert_eq!(info["shape"], serde_json::json!([3, 4]));
    assert_eq!(info["blksize"], 4096);
    assert_eq!(info["blocks"], 1);
    assert_eq!(info["holes"], 0);
    assert_eq!(info["stored_bytes"], 4096);
    assert_eq!(info["compression"], "none");
    assert!((info["ratio"].as_f64().unwrap() - 4096.0 / 96.0).abs() < 1e-9);
    let text_info = ok(&["info", &store, "c"]);
    assert!(
        text_info.contains("blocks        1 (0 holes, 1 stored)"),
        "{text_info}"
    );

    let log = json(&["log", "--json", &store]);
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0]["description"], "import s"); // newest first
    assert_eq!(log[0]["arrays"], serde_json::json!(["s"]));
    assert_eq!(log[0]["root_changed"], true);
    assert_eq!(log[2]["description"], "import c");
    assert_eq!(info["last_change"]["tid"], log[2]["tid"]);
    assert!(log[0]["time"].as_str().unwrap().ends_with('Z'));
    let limited = json(&["log", "--json", "--limit", "1", &store]);
    assert_eq!(limited.as_array().unwrap().len(), 1);
    let log_table = ok(&["log", &store]);
    assert!(
        log_table.lines().nth(1).unwrap().contains("import s"),
        "{log_table}"
    );

    for (name, bytes) in &files {
        let out = fx.path(&format!("out-{name}.npy"));
        let msg = ok(&["export", &store, name, &out]);
        assert!(msg.starts_with(&format!("exported {name}: ")), "{msg}");
        assert_eq!(&std::fs::read(&out).unwrap(), bytes, "{name} round trip");
    }
    // No temporary files are left next to the exports.
    let leftovers: Vec<_> = std::fs::read_dir(&fx.root)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("outcore-export"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn large_import_is_streamed_in_parts() {
    let fx = Fixture::new();
    let store = fx.store();
    // 72 MiB of uint16: two parts of at most 64 MiB.
    let n: u64 = 36 << 20;
    let data: Vec<u8> = (0..n)
        .flat_map(|i| ((i % 65_521) as u16).to_le_bytes())
        .collect();
    let input = fx.write("big.npy", &npy("'<u2'", false, &[n], &data));
    drop(data);
    let msg = ok(&["import", &store, "big", &input]);
    assert!(msg.contains("in 2 transactions"), "{msg}");
    let log = json(&["log", "--json", &store]);
    assert_eq!(log[0]["description"], "import big (part 2/2)");
    assert_eq!(log[1]["description"], "import big (part 1/2)");
    // Elements on both sides of the part boundary (64 MiB = element 32 Mi).
    let b = 32u64 << 20;
    let expected: Vec<String> = [b - 1, b, b + 1]
        .iter()
        .map(|i| (i % 65_521).to_string())
        .collect();
    let got = ok(&["cat", &store, &format!("big[{}:{}]", b - 1, b + 2)]);
    assert_eq!(got, format!("[{}]\n", expected.join(" ")));
    let out = fx.path("big-out.npy");
    ok(&["export", &store, "big", &out]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&input).unwrap());
    let info = json(&["info", "--json", &store, "big"]);
    assert_eq!(info["blocks"], 36);
    assert_eq!(info["holes"], 0);
}

#[test]
fn compressed_store_roundtrip() {
    let fx = Fixture::new();
    let store = fx.store();
    let n: u64 = 300_000; // two 2 MiB blocks, compressible
    let data: Vec<u8> = (0..n)
        .flat_map(|i| ((i % 7) as f64).to_le_bytes())
        .collect();
    let bytes = npy("'<f8'", false, &[n], &data);
    let input = fx.write("z.npy", &bytes);
    ok(&["import", "--compression", "zstd", &store, "z", &input]);
    let ls = json(&["ls", "--json", &store]);
    // Compressed blocks are measured as stored: far less than the 2.4 MB of f8.
    let stored = ls[0]["stored_bytes"].as_u64().unwrap();
    assert!(stored > 0 && stored < n * 8 / 10, "{stored}");
    let table = ok(&["ls", &store]);
    assert!(table.contains("RATIO") && !table.contains('?'), "{table}");
    let info = json(&["info", "--json", &store, "z"]);
    assert_eq!(info["compression"], "zstd");
    assert_eq!(info["stored_bytes"], stored);
    let ratio = info["ratio"].as_f64().unwrap();
    assert!(
        (ratio - stored as f64 / (n * 8) as f64).abs() < 1e-9,
        "{ratio}"
    );
    assert!(ok(&["info", &store, "z"]).contains("(stored / logical)"));
    let out = fx.path("z-out.npy");
    ok(&["export", &store, "z", &out]);
    assert!(std::fs::read(&out).unwrap() == bytes);
    assert_eq!(ok(&["cat", &store, "z[-2:]"]), "[6.0 0.0]\n");
    assert!(ok(&["verify", &store]).contains("no damage found"));
}

#[test]
fn cat_prints_numpy_slices() {
    let fx = Fixture::new();
    let store = fx.store();
    ok(&["import", &store, "c", &fx.write("c.npy", &c_f8())]);
    ok(&["import", &store, "f", &fx.write("f.npy", &f_i4())]);
    let bools = npy("'|b1'", false, &[3], &[1, 0, 1]);
    ok(&["import", &store, "b", &fx.write("b.npy", &bools)]);
    let scalar = npy("'<f4'", false, &[], &0.1f32.to_le_bytes());
    ok(&["import", &store, "x", &fx.write("x.npy", &scalar)]);

    let cat = |target: &str| ok(&["cat", &store, target]);
    assert_eq!(
        cat("c"),
        "[[0.0 1.0 2.0 3.0]\n [4.0 5.0 6.0 7.0]\n [8.0 9.0 10.0 11.0]]\n"
    );
    assert_eq!(cat("c[...]"), cat("c"));
    assert_eq!(cat("c[1]"), "[4.0 5.0 6.0 7.0]\n");
    assert_eq!(cat("c[-1]"), "[8.0 9.0 10.0 11.0]\n");
    assert_eq!(cat("c[2:10, ::2]"), "[[8.0 10.0]]\n");
    assert_eq!(cat("c[::-2, -1]"), "[11.0 3.0]\n");
    assert_eq!(cat("c[..., 1]"), "[1.0 5.0 9.0]\n");
    assert_eq!(cat("c[1, 2]"), "6.0\n");
    assert_eq!(cat("c[5:]"), "[]\n");
    // F order prints in logical (NumPy) order.
    assert_eq!(
        cat("f"),
        "[[[0 1 2 3]\n  [4 5 6 7]\n  [8 9 10 11]]\n\n [[12 13 14 15]\n  [16 17 18 19]\n  [20 21 22 23]]]\n"
    );
    assert_eq!(cat("f[1, :, -1]"), "[15 19 23]\n");
    assert_eq!(
        cat("f[:, 1:, ::3]"),
        "[[[4 7]\n  [8 11]]\n\n [[16 19]\n  [20 23]]]\n"
    );
    assert_eq!(cat("b"), "[True False True]\n");
    assert_eq!(cat("x"), "0.1\n");
    assert_eq!(
        ok(&["cat", "--json", &store, "f[0]"]),
        "[[0,1,2,3],[4,5,6,7],[8,9,10,11]]\n"
    );
    assert_eq!(ok(&["cat", "--json", &store, "b"]), "[true,false,true]\n");
}

#[test]
fn verify_finds_a_flipped_byte() {
    let fx = Fixture::new();
    let store = fx.store();
    ok(&["import", &store, "c", &fx.write("c.npy", &c_f8())]);
    let clean = ok(&["verify", &store]);
    assert!(clean.contains("no damage found"), "{clean}");
    let report = json(&["verify", "--json", &store]);
    assert_eq!(report["ok"], true);
    assert!(report["versions_checked"].as_u64().unwrap() >= 3);

    let segments: Vec<PathBuf> = std::fs::read_dir(Path::new(&store).join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert_eq!(segments.len(), 1);
    let mut bytes = std::fs::read(&segments[0]).unwrap();
    bytes[8 * 5] ^= 0x40; // inside element 5 of the only block
    std::fs::write(&segments[0], &bytes).unwrap();

    let err = fails(&["verify", &store], 3);
    assert!(err.contains("1 damaged version"), "{err}");
    let out = run(&["verify", &store]);
    assert!(text(&out.stdout).contains("damaged: corrupt data for block 0"));
    let out = run(&["verify", "--json", &store]);
    assert_eq!(out.status.code(), Some(3));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["problems"].as_array().unwrap().len(), 1);
}

#[test]
fn pack_keeps_recent_history() {
    let fx = Fixture::new();
    let store = fx.store();
    let input = fx.write("c.npy", &c_f8());
    ok(&["import", &store, "c", &input]);
    let first = json(&["log", "--json", &store])[0]["tid"]
        .as_str()
        .unwrap()
        .to_string();
    fails(&["import", &store, "c", &input], 1);
    ok(&["import", "--force", &store, "c", &input]);
    let kept = ok(&["pack", &store, "--keep", "7d"]);
    assert!(kept.contains("versions: 0 removed"), "{kept}");
    assert_eq!(
        json(&["log", "--json", "--limit", "0", &store])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let stats = json(&["pack", "--json", &store, "--before", &first]);
    assert_eq!(stats["horizon"], first.as_str());
    let all = ok(&["pack", &store, "--keep", "0s"]);
    assert!(all.starts_with("packed "), "{all}");
    assert!(!all.contains("held back"), "{all}");
    // A reader in this process pins its snapshot: pack says so and names the process.
    let db = outcore::db::Database::open(&store).unwrap();
    let reader = db.connect().unwrap();
    ok(&["import", "--force", &store, "c", &input]);
    let held = ok(&["pack", &store, "--keep", "0s"]);
    let pid = std::process::id();
    assert!(
        held.contains(&format!(
            "held back: readers in process {pid} still use the snapshot"
        )),
        "{held}"
    );
    let stats = json(&["pack", "--json", &store, "--keep", "0s"]);
    assert_eq!(stats["held_back"], true);
    assert_eq!(stats["lease_pids"], serde_json::json!([pid]));
    assert_ne!(stats["requested"], stats["horizon"]);
    drop(reader);
    db.close();
    let stats = json(&["pack", "--json", &store, "--keep", "0s"]);
    assert_eq!(stats["held_back"], false);
    assert!(json(&["verify", "--json", &store])["ok"] == true);
    assert_eq!(
        ok(&["cat", &store, "c[0]"]),
        "[0.0 1.0 2.0 3.0]\n",
        "data survives pack"
    );
}

#[test]
fn demo_gen_and_read() {
    let fx = Fixture::new();
    let store = fx.store();
    let gen = ok(&["demo", "gen", &store, "--worksize", "4"]);
    let lines: Vec<&str> = gen.lines().collect();
    assert_eq!(lines.len(), 2, "{gen}");
    assert!(
        lines[0].starts_with("gen: 524288 float64 (4 MiB) in "),
        "{gen}"
    );
    assert!(lines[0].ends_with(" s"));
    assert!(
        lines[1].starts_with("gen: VIRT ") && lines[1].contains("peak"),
        "{gen}"
    );
    let read = ok(&["demo", "read", &store]);
    let lines: Vec<&str> = read.lines().collect();
    assert_eq!(lines.len(), 2, "{read}");
    let words: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(&words[..2], &["read:", "mean"]);
    assert_eq!(words[3], "sum");
    for number in [words[2], words[4]] {
        let (mantissa, exp) = number.split_once('e').expect("exponent");
        assert_eq!(mantissa.trim_start_matches('-').len(), 8, "{number}");
        assert!(exp.starts_with(['+', '-']) && exp.len() == 3, "{number}");
    }
    assert!(lines[1].starts_with("read: VIRT "), "{read}");
    assert_eq!(
        ok(&["cat", &store, "signalv[1]"]),
        format!("{:?}\n", 15.0 * (0.2f64).sin())
    );
    let log = json(&["log", "--json", &store]);
    assert_eq!(log[0]["description"], "signal 0..524288");
    fails(&["demo", "read", &fx.path("nothing-here")], 1);
    ok(&["demo", "gen", "mem:", "--worksize", "1"]);
}

#[test]
fn bench_runs_and_cleans_up() {
    let fx = Fixture::new();
    let dir = fx.path("bench");
    std::fs::create_dir(&dir).unwrap();
    let out = ok(&["bench", "--dir", &dir, "--mib", "4", "--rounds", "1"]);
    assert!(out.contains("scan, warm mapping"), "{out}");
    assert!(out.contains("first write fault"), "{out}");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "temp files left"
    );
}

#[test]
fn bad_input_is_one_line_with_exit_code() {
    let fx = Fixture::new();
    let store = fx.store();
    ok(&["import", &store, "c", &fx.write("c.npy", &c_f8())]);
    ok(&["import", &store, "s", &fx.write("s.npy", &structured())]);
    let missing = fx.path("no-store");

    // Usage errors: exit 2.
    fails(&["frobnicate"], 2);
    fails(&["ls"], 2);
    fails(&["cat", &store, "c[1:2:3:4]"], 2);
    fails(&["cat", &store, "c[x]"], 2);
    fails(&["cat", &store, "c[::0]"], 2);
    fails(&["cat", &store, "c[1"], 2);
    fails(&["pack", &store], 2);
    fails(&["pack", &store, "--keep", "5y"], 2);
    fails(&["pack", &store, "--keep", "1d", "--before", "ff"], 2);
    fails(&["pack", &store, "--before", "not-hex"], 2);
    fails(&["import", &store, "x", "c.npy", "--blksize", "1000"], 2);
    fails(&["demo", "dance", &store], 2);
    let err = fails(&["cat", &store, "c[x]"], 2);
    assert!(err.ends_with("(see 'outcore cat --help')"), "{err}");

    // Runtime errors: exit 1.
    let err = fails(&["info", &store, "nope"], 1);
    assert!(err.contains("no array named \"nope\""), "{err}");
    fails(&["cat", &store, "nope"], 1);
    fails(&["export", &store, "nope", &fx.path("x.npy")], 1);
    let err = fails(&["cat", &store, "c[3]"], 1);
    assert!(
        err.contains("index 3 is out of bounds for axis 0 with size 3"),
        "{err}"
    );
    fails(&["cat", &store, "c[0, -5]"], 1);
    fails(&["cat", &store, "c[0, 0, 0]"], 1);
    let err = fails(&["cat", &store, "s"], 1);
    assert!(err.contains("numeric arrays only"), "{err}");
    let err = fails(&["ls", &missing], 1);
    assert!(err.contains("no outcore store"), "{err}");
    assert!(!Path::new(&missing).exists(), "ls must not create a store");
    fails(&["verify", &missing], 1);
    fails(&["pack", &missing, "--keep", "1d"], 1);
    let not_npy = fx.write("not.npy", b"PK\x03\x04 this is a zip file");
    let err = fails(&["import", &store, "x", &not_npy], 1);
    assert!(err.contains("not a .npy file"), "{err}");
    let mut truncated = c_f8();
    truncated.truncate(truncated.len() - 8);
    let err = fails(&["import", &store, "x", &fx.write("t.npy", &truncated)], 1);
    assert!(err.contains("truncated"), "{err}");
    let objects = npy("'|O'", false, &[1], &[0; 8]);
    let err = fails(&["import", &store, "x", &fx.write("o.npy", &objects)], 1);
    assert!(
        err.contains("object array") && err.contains("cannot be stored"),
        "{err}"
    );
    let in_struct = npy("[('a', '<f8'), ('b', '|O')]", false, &[1], &[0; 16]);
    let err = fails(&["import", &store, "x", &fx.write("so.npy", &in_struct)], 1);
    assert!(err.contains("Python objects"), "{err}");
    let file = fx.write("file.txt", b"not a store");
    let err = fails(&["ls", &file], 1);
    assert!(err.contains("is a file, not an outcore store"), "{err}");
    fails(&["import", &store, "x", &fx.path("absent.npy")], 1);
    let err = fails(&["import", &store, "c", &fx.path("c.npy")], 1);
    assert!(err.contains("--force"), "{err}");
    let err = fails(&["ls", "ftp://example/store"], 1);
    assert!(err.contains("cannot open"), "{err}");
    // Nothing of the failed imports reached the store.
    let names: Vec<String> = json(&["ls", "--json", &store])
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["c", "s"]);
}

/// The parts of zarr and HDF5 import and export that need no Python: options that do not fit
/// the file's format, and an interpreter that cannot be run (tests/test_cli_zarr_hdf5.py
/// drives the conversions themselves).
#[test]
fn zarr_and_hdf5_without_python() {
    let fx = Fixture::new();
    let store = fx.store();
    ok(&["import", &store, "c", &fx.write("c.npy", &c_f8())]);
    let npy_path = fx.path("x.npy");
    let err = fails(&["export", &store, "c", &npy_path, "--dataset", "d"], 2);
    assert!(err.contains("--dataset applies to HDF5 files"), "{err}");
    let err = fails(&["export", &store, "c", &npy_path, "--zarr-format", "2"], 2);
    assert!(
        err.contains("--zarr-format applies to .zarr targets"),
        "{err}"
    );
    fails(
        &[
            "export",
            &store,
            "c",
            &fx.path("x.h5"),
            "--zarr-format",
            "2",
        ],
        2,
    );
    fails(
        &[
            "export",
            &store,
            "c",
            &fx.path("x.zarr"),
            "--zarr-format",
            "4",
        ],
        2,
    );
    let err = fails(
        &["import", &store, "x", &fx.path("c.npy"), "--dataset", "d"],
        2,
    );
    assert!(err.contains("--dataset applies to HDF5 files"), "{err}");
    for target in ["x.zarr", "x.h5", "x.hdf5:/g/d"] {
        let out = Command::new(BIN)
            .args(["export", &store, "c", &fx.path(target)])
            .env("OUTCORE_PYTHON", fx.path("no-such-python"))
            .stdin(Stdio::null())
            .output()
            .expect("the outcore binary runs");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("cannot run the Python interpreter")
                && err.contains("no-such-python")
                && err.contains("OUTCORE_PYTHON"),
            "{err}"
        );
        assert!(!Path::new(&fx.path(target)).exists());
    }
}

#[test]
fn help_everywhere_and_mem_stores() {
    let top = ok(&["--help"]);
    assert!(top.contains("Exit codes: 0 ok"), "{top}");
    for sub in [
        "ls", "info", "log", "import", "export", "cat", "verify", "pack", "demo", "bench",
    ] {
        let help = ok(&[sub, "--help"]);
        assert!(help.contains(&format!("Usage: outcore {sub}")), "{help}");
    }
    assert!(ok(&["--version"]).starts_with("outcore "));
    let bare = run(&[]);
    assert_eq!(bare.status.code(), Some(2));
    assert!(text(&bare.stderr).contains("Usage: outcore"));
    assert_eq!(ok(&["ls", "mem:"]).lines().count(), 1);
    assert_eq!(ok(&["log", "--json", "mem:"]), "[]\n");
}

#[test]
fn closed_stdout_is_not_an_error() {
    let fx = Fixture::new();
    let store = fx.store();
    let n = 1u64 << 20;
    let data: Vec<u8> = (0..n).flat_map(|i| (i as f64).to_le_bytes()).collect();
    ok(&[
        "import",
        &store,
        "a",
        &fx.write("a.npy", &npy("'<f8'", false, &[n], &data)),
    ]);
    let mut child = Command::new(BIN)
        .args(["cat", &store, "a"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap(); // then closed
    let out = child.wait_with_output().unwrap();
    assert_eq!(&head[..5], b"[0.0 ");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stderr), "");
}

/// The same commands on the PostgreSQL store, in a schema of its own. Needs `OUTCORE_TEST_PG`
/// (scripts/test.sh starts a private server); skipped without it.
#[test]
fn postgres_store() {
    let Ok(base) = std::env::var("OUTCORE_TEST_PG") else {
        let why = "OUTCORE_TEST_PG is not set (scripts/test.sh starts a server)";
        // The test command promises a server: a broken set-up must not pass as green.
        assert!(std::env::var_os("OUTCORE_REQUIRE_PG").is_none(), "{why}");
        eprintln!("SKIPPED: {why}");
        return;
    };
    let schema = format!(
        "cli_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let sep = if base.contains('?') { '&' } else { '?' };
    let store = format!("{base}{sep}outcore_schema={schema}");
    let fx = Fixture::new();
    for (name, bytes) in [("c", c_f8()), ("f", f_i4()), ("s", structured())] {
        ok(&[
            "import",
            &store,
            name,
            &fx.write(&format!("{name}.npy"), &bytes),
        ]);
        let out = fx.path(&format!("out-{name}.npy"));
        ok(&["export", &store, name, &out]);
        assert!(std::fs::read(&out).unwrap() == bytes, "{name} round trip");
    }
    let ls = json(&["ls", "--json", &store]);
    assert_eq!(ls.as_array().unwrap().len(), 3);
    // Remote blocks are measured as stored (uncompressed here: the data, up to its block).
    let c = json(&["info", "--json", &store, "c"]);
    assert_eq!(c["compression"], "none");
    let stored = c["stored_bytes"].as_u64().unwrap();
    assert!(
        (96..=c["blksize"].as_u64().unwrap()).contains(&stored),
        "{c}"
    );
    assert!((c["ratio"].as_f64().unwrap() - stored as f64 / 96.0).abs() < 1e-9);
    assert_eq!(ok(&["cat", &store, "f[1, :, -1]"]), "[15 19 23]\n");
    assert_eq!(
        json(&["log", "--json", &store])[0]["arrays"],
        serde_json::json!(["s"])
    );
    assert!(json(&["verify", "--json", &store])["ok"] == true);
    ok(&["pack", &store, "--keep", "0s"]);
    fails(&["cat", &store, "c[7]"], 1);
}

/// `import --blobs` creates a store whose block bodies are objects in the test S3 server;
/// every later command finds them from the store's path alone. Needs `OUTCORE_TEST_S3_URL`
/// (scripts/test.sh starts a private server); skipped without it.
#[test]
fn object_storage() {
    let Ok(base) = std::env::var("OUTCORE_TEST_S3_URL") else {
        let why = "OUTCORE_TEST_S3_URL is not set (scripts/test.sh starts an S3 server)";
        assert!(std::env::var_os("OUTCORE_REQUIRE_S3").is_none(), "{why}");
        eprintln!("SKIPPED: {why}");
        return;
    };
    let blobs = format!("{base}/cli-{}", std::process::id());
    let fx = Fixture::new();
    let store = fx.store();
    let bytes = c_f8();
    let input = fx.write("c.npy", &bytes);
    ok(&["import", &store, "c", &input, "--blobs", &blobs]);
    let out = fx.path("out.npy");
    ok(&["export", &store, "c", &out]);
    assert!(std::fs::read(&out).unwrap() == bytes, "round trip");
    assert!(json(&["verify", "--json", &store])["ok"] == true);
    // Asking for another object store later is refused.
    let err = fails(
        &[
            "import",
            &store,
            "d",
            &input,
            "--blobs",
            &format!("{blobs}x"),
        ],
        1,
    );
    assert!(err.contains(&blobs), "{err}");
}

/// A read-only bind mount, unmounted when dropped (also when the test fails).
struct ReadOnlyMount(PathBuf);

impl ReadOnlyMount {
    /// Mounts `source` read-only at `target`, or `None` if mounting is impossible.
    fn new(source: &Path, target: &Path) -> Option<Self> {
        let mount = |args: &[&str], path: &Path| {
            Command::new("mount")
                .args(args)
                .arg(path)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !mount(&["--bind", source.to_str()?], target) {
            return None;
        }
        let guard = ReadOnlyMount(target.to_path_buf());
        assert!(
            mount(&["-o", "remount,bind,ro"], target),
            "remount read-only"
        );
        Some(guard)
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let done = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !done {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

#[test]
fn read_commands_work_on_a_readonly_mount() {
    let fx = Fixture::new();
    let store = fx.store();
    let input = fx.write("c.npy", &c_f8());
    ok(&["import", &store, "c", &input]);
    let ro = fx.path("ro");
    std::fs::create_dir(&ro).unwrap();
    let Some(_mount) = ReadOnlyMount::new(Path::new(&store), Path::new(&ro)) else {
        eprintln!("SKIPPED: cannot bind-mount (needs root)");
        return;
    };
    assert!(ok(&["ls", &ro]).contains("(3, 4)"));
    assert_eq!(ok(&["cat", &ro, "c[0]"]), "[0.0 1.0 2.0 3.0]\n");
    assert_eq!(json(&["log", "--json", &ro]).as_array().unwrap().len(), 1);
    assert!(json(&["verify", "--json", &ro])["ok"] == true);
    let out = fx.path("out.npy");
    ok(&["export", &ro, "c", &out]);
    assert_eq!(std::fs::read(&out).unwrap(), c_f8());
    let err = fails(&["pack", &ro, "--keep", "0s"], 1);
    assert!(err.contains("read-only"), "{err}");
}
