//! Random-input smoke tests of every decoder of stored bytes: whatever the bytes, decoding
//! returns a value or an error, never panics. (Not coverage-guided; a quick net in CI.)

use crate::array::ArrayMeta;
use crate::storage::codec::{self, Compression};
use crate::storage::record::{decode_log, encode_log, Body, VersionRecord};
use crate::storage::{Key, Oid, Tid};

/// A deterministic byte generator.
struct Bytes(u64);

impl Bytes {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Mutates `seed` (flip, insert, delete, truncate) or makes random bytes.
    fn input(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        match self.next() % 5 {
            0 => v = (0..self.next() % 64).map(|_| self.next() as u8).collect(),
            1 if !v.is_empty() => v.truncate((self.next() as usize) % v.len()),
            2 => {
                let at = (self.next() as usize) % (v.len() + 1);
                v.insert(at, self.next() as u8);
            }
            _ if !v.is_empty() => {
                for _ in 0..1 + self.next() % 4 {
                    let at = (self.next() as usize) % v.len();
                    v[at] ^= 1 << (self.next() % 8);
                }
            }
            _ => {}
        }
        v
    }
}

const ROUNDS: usize = 20_000;

#[test]
fn decoders_never_panic_on_damaged_bytes() {
    let mut g = Bytes(0x1234_5678_9ABC_DEF1);
    let key = Key::Block {
        file: Oid(3),
        index: 9,
    };
    let meta = ArrayMeta::new(
        "[('a', '<i4'), ('b', '>f8')]",
        12,
        &[3, 4, 5],
        crate::array::Order::F,
        8192,
        Oid(9),
    )
    .unwrap()
    .encode();
    let record = VersionRecord {
        codec: Compression::Lz4,
        checksum: 42,
        raw_len: 9,
        body: Body::Segment {
            seg: 7,
            offset: 8192,
            stored_len: 100,
        },
    }
    .encode();
    let delta = VersionRecord {
        codec: Compression::None,
        checksum: 7,
        raw_len: 3 * 4096,
        body: Body::Delta {
            seg: 2,
            offset: 4096,
            stored_len: 3 * 4096,
            delta: crate::storage::delta::Delta {
                runs: vec![0..2, 9..10],
                depth: 2,
                chain_bytes: 5 * 4096,
                block_len: 16 * 4096,
            },
        },
    }
    .encode();
    let log = encode_log("user", "description", &[key, Key::Meta(Oid(1))]);
    let root = b"outcore-root 1\nA\t5\nB\t7\n".to_vec();
    let raw: Vec<u8> = (0..4096u32).map(|i| (i % 13) as u8).collect();
    let lz4 = codec::encode(&raw, Compression::Lz4);
    let zstd = codec::encode(&raw, Compression::Zstd);
    for _ in 0..ROUNDS {
        let _ = ArrayMeta::decode(&g.input(&meta));
        let _ = VersionRecord::decode(&g.input(&record), key, Tid(1));
        crate::fuzzing::record(&g.input(&delta));
        let _ = decode_log(&g.input(&log), Tid(1));
        let _ = Key::decode(&g.input(&key.encode()));
        let _ = crate::db::root::decode(&g.input(&root), crate::storage::Tid::ZERO);
        for e in [&lz4, &zstd] {
            let r = codec::decode(
                g.input(&e.stored),
                e.codec,
                e.raw_len,
                e.checksum,
                key,
                Tid(1),
            );
            if let Ok(bytes) = r {
                assert_eq!(bytes, raw, "a damaged payload decoded to different bytes");
            }
        }
    }
}
