//! Writes the seed corpora of the fuzz targets (`fuzz/seeds/<target>/<name>`): valid
//! encodings of every decoder's input. Checked in; regenerate with
//! `cargo run -p outcore-cli --example fuzz_seeds -- fuzz/seeds`.

use outcore_cli::dtype::Dtype;
use outcore_cli::npy::header_bytes;

fn main() -> std::io::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or("fuzz/seeds".into()));
    let mut seeds = outcore::fuzzing::seeds();
    for (i, (descr, fortran, shape)) in [
        ("<f8", false, &[3u64, 4][..]),
        ("|u1", true, &[7][..]),
        ("[('a', '<i4'), ('b', '>f8', (2, 3))]", false, &[][..]),
        ("[('\u{e9}t\u{e9}', '<c16')]", true, &[0, 5, 1 << 40][..]),
        ("[('\u{1f600}', '<i2')]", false, &[2][..]),
    ]
    .into_iter()
    .enumerate()
    {
        let dtype = Dtype::parse(descr).expect("valid dtype");
        seeds.push((
            "npy",
            format!("npy{i}"),
            header_bytes(&dtype, fortran, shape),
        ));
    }
    for (target, name, bytes) in seeds {
        std::fs::create_dir_all(dir.join(target))?;
        std::fs::write(dir.join(target).join(name), bytes)?;
    }
    Ok(())
}
