//! Entry points for the coverage-guided fuzz targets (`fuzz/` at the repository root, run by
//! `scripts/fuzz.sh`): one function per decoder of stored bytes, each taking arbitrary bytes.
//! Whatever the bytes, a decoder must return a value or an error, never panic, abort or
//! allocate absurd amounts; what decodes must also re-encode to the same value. Not part of
//! the supported API.

use crate::array::ArrayMeta;
use crate::storage::codec::{self, Compression, MAX_PAYLOAD};
use crate::storage::record::{decode_log, encode_log, Body, VersionRecord};
use crate::storage::{Key, Oid, Tid};

const KEY: Key = Key::Block {
    file: Oid(3),
    index: 9,
};

/// Array metadata records ([`ArrayMeta::decode`]).
pub fn meta(data: &[u8]) {
    if let Ok(m) = ArrayMeta::decode(data) {
        let again = ArrayMeta::decode(&m.encode()).expect("re-encoded metadata decodes");
        assert_eq!(again, m, "metadata changed in a round trip");
        // The geometry of anything that validated must be computable.
        let _ = (m.nbytes(), m.nblocks(), m.strides_bytes());
    }
}

/// Index records of one version (header, body, and for inline bodies the payload's
/// decompression and checksum), and encoded keys.
pub fn record(data: &[u8]) {
    let _ = Key::decode(data);
    if let Ok(r) = VersionRecord::decode(data, KEY, Tid(1)) {
        assert_eq!(
            VersionRecord::decode(&r.encode(), KEY, Tid(1)).expect("re-encoded record decodes"),
            r
        );
        if let Body::Inline(stored) = &r.body {
            let _ = codec::decode(stored.clone(), r.codec, r.raw_len, r.checksum, KEY, Tid(1));
        }
        if let Some(d) = r.delta() {
            // What a reader does with a decoded delta: compose it over a block and work out
            // its pieces. Bounds were checked by the decoder (at most 1 GiB); keep runs fast.
            if d.block_len <= 1 << 24 {
                let payload = vec![1u8; d.payload_len().min(1 << 24) as usize];
                let mut out = vec![0u8; d.block_len as usize];
                let _ = crate::storage::delta::apply(d, &payload, &mut out, KEY, Tid(1));
                if let Ok(null) = std::fs::File::open("/dev/null") {
                    let file = std::sync::Arc::new(null);
                    let _ = crate::storage::delta::pieces(None, &[(file, 0, d)], d.block_len);
                }
            }
        }
        let _ = r.segment_bytes();
    }
}

/// Commit-log entries (`decode_log`).
pub fn log(data: &[u8]) {
    if let Ok(info) = decode_log(data, Tid(1)) {
        let again = decode_log(
            &encode_log(&info.user, &info.description, &info.keys),
            Tid(1),
        )
        .expect("re-encoded log entry decodes");
        assert_eq!(again, info, "log entry changed in a round trip");
    }
}

/// Payload decompression: byte 0 picks the codec, bytes 1..4 the announced raw length
/// (up to 16 MiB, so runs stay fast), the rest is the stored payload, checked against both a
/// wrong checksum and the right one for its own bytes. Then the rest is compressed and must
/// decompress to itself.
pub fn payload(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let codec = [Compression::None, Compression::Lz4, Compression::Zstd][head as usize % 3];
    let (len, stored) = rest.split_at(rest.len().min(3));
    let mut len4 = [0u8; 4];
    len4[..len.len()].copy_from_slice(len);
    let raw_len = u64::from(u32::from_le_bytes(len4)).min(MAX_PAYLOAD);
    if let Ok(raw) = codec::decode(stored.to_vec(), codec, raw_len, 0, KEY, Tid(1)) {
        assert_eq!(raw.len() as u64, raw_len);
    }
    let e = codec::encode(stored, codec);
    let back = codec::decode(
        e.stored.to_vec(),
        e.codec,
        e.raw_len,
        e.checksum,
        KEY,
        Tid(1),
    )
    .expect("a fresh encoding decodes");
    assert_eq!(back, stored, "compression round trip changed the bytes");
}

/// The root record (array names to metadata oids).
pub fn root(data: &[u8]) {
    if let Ok(names) = crate::db::root::decode(data, Tid::ZERO) {
        let again = crate::db::root::decode(&crate::db::root::encode(&names), Tid::ZERO);
        // Names holding a tab or line break cannot round-trip; the writer refuses them.
        if names.keys().all(|n| crate::db::root::check_name(n).is_ok()) {
            assert_eq!(again.expect("re-encoded root decodes"), names);
        }
    }
}

/// Valid encodings to start the fuzzers from: `(target, name, bytes)`.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let metas = [
        ArrayMeta::new(
            "[('a', '<i4'), ('b', '>f8')]",
            12,
            &[3, 4, 5],
            crate::array::Order::F,
            8192,
            Oid(9),
        ),
        ArrayMeta::new(
            "<f8",
            8,
            &[1000, 1000],
            crate::array::Order::C,
            1 << 21,
            Oid(1),
        ),
        ArrayMeta::new("<u1", 1, &[], crate::array::Order::C, 4096, Oid(2)),
    ];
    for (i, m) in metas.into_iter().enumerate() {
        out.push(("meta", format!("meta{i}"), m.expect("valid").encode()));
    }
    let raw: Vec<u8> = (0..4096u32).map(|i| (i % 13) as u8).collect();
    for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let e = codec::encode(&raw[..300], codec);
        let inline = VersionRecord {
            codec: e.codec,
            checksum: e.checksum,
            raw_len: e.raw_len,
            body: Body::Inline(e.stored.to_vec()),
        };
        out.push(("record", format!("inline-{codec}"), inline.encode()));
        let e = codec::encode(&raw, codec);
        let mut p = vec![codec.code()];
        p.extend_from_slice(&(raw.len() as u32).to_le_bytes()[..3]);
        p.extend_from_slice(&e.stored);
        out.push(("payload", format!("payload-{codec}"), p));
    }
    let seg = VersionRecord {
        codec: Compression::Lz4,
        checksum: 42,
        raw_len: 9,
        body: Body::Segment {
            seg: 7,
            offset: 8192,
            stored_len: 100,
        },
    };
    out.push(("record", "segment".into(), seg.encode()));
    out.push((
        "record",
        "tombstone".into(),
        VersionRecord::tombstone().encode(),
    ));
    out.push(("record", "key".into(), KEY.encode().to_vec()));
    out.push((
        "log",
        "log".into(),
        encode_log("user", "description", &[KEY, Key::Meta(Oid(1))]),
    ));
    out.push(("log", "log-empty".into(), encode_log("", "", &[])));
    let mut names = std::collections::BTreeMap::new();
    names.insert("a".to_string(), Oid(5));
    names.insert("temperature 2".to_string(), Oid(7));
    out.push(("root", "root".into(), crate::db::root::encode(&names)));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_pass_their_targets() {
        for (target, _, bytes) in super::seeds() {
            match target {
                "meta" => super::meta(&bytes),
                "record" => super::record(&bytes),
                "log" => super::log(&bytes),
                "payload" => super::payload(&bytes),
                "root" => super::root(&bytes),
                _ => unreachable!(),
            }
        }
    }
}
