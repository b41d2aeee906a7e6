//! Every hostile input that once got through or crashed, as a named test (issue #16).
//! Inputs are built by code here (inline bytes or an edit of a committed fixture),
//! so the corpus is small and readable.

use std::io::Read;

use super::gen;
use super::props::fixture;
use crate::checkpoint::{load_checkpoint, CheckpointError, LoadOptions};

/// Offset of the first payload byte of zip record `name` in `bytes`.
fn payload_offset(bytes: &[u8], name: &str) -> usize {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let f = z.by_name(name).unwrap();
    f.data_start() as usize
}

/// Issue #16's one probe that got through: a `.pt` with flipped bits in a weight
/// storage loaded without error (torch.load accepts it too). Now every record's
/// CRC-32 is checked and the error names the file and the record.
#[test]
fn bit_flipped_pt_storage_is_refused_naming_the_record() {
    let src = fixture("evomerge_tiny.pt");
    let mut bytes = std::fs::read(&src).unwrap();
    let at = payload_offset(&bytes, "evomerge_tiny/data/0") + 1000;
    bytes[at] ^= 0x10;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("flipped.pt");
    std::fs::write(&p, &bytes).unwrap();
    let e = load_checkpoint(&p, &LoadOptions::default()).unwrap_err();
    match &e {
        CheckpointError::Checksum { path, record, .. } => {
            assert_eq!(path, &p);
            assert_eq!(record, "evomerge_tiny/data/0");
        }
        other => panic!("expected a checksum error, got {other}"),
    }
    let text = e.to_string();
    assert!(
        text.contains("flipped.pt") && text.contains("`evomerge_tiny/data/0`"),
        "{text}"
    );
    assert!(text.contains("download or copy it again"), "{text}");
}

/// The same for the pickle record and for the demo checkpoint with 200 bytes
/// flipped across its records, as in the probe.
#[test]
fn bit_flipped_pickle_and_many_flips_are_refused() {
    let src = fixture("evomerge_tiny.pt");
    let mut bytes = std::fs::read(&src).unwrap();
    let at = payload_offset(&bytes, "evomerge_tiny/data.pkl") + 100;
    bytes[at] ^= 0x01;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pkl.pt");
    std::fs::write(&p, &bytes).unwrap();
    let e = load_checkpoint(&p, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&e, CheckpointError::Checksum { record, .. } if record == "evomerge_tiny/data.pkl"),
        "{e}"
    );

    // 200 flips spread over the storages (every 8th byte of data/5..data/7).
    let mut bytes = std::fs::read(&src).unwrap();
    for rec in [
        "evomerge_tiny/data/5",
        "evomerge_tiny/data/6",
        "evomerge_tiny/data/7",
    ] {
        let start = payload_offset(&bytes, rec);
        for k in 0..67 {
            bytes[start + 8 * k] ^= 0xff;
        }
    }
    std::fs::write(&p, &bytes).unwrap();
    let e = load_checkpoint(&p, &LoadOptions::default()).unwrap_err();
    assert!(matches!(&e, CheckpointError::Checksum { .. }), "{e}");
}

/// An untouched file still loads, and the checked bytes are the stored ones.
#[test]
fn crc_check_accepts_the_intact_fixture() {
    let src = fixture("evomerge_tiny.pt");
    let ck = load_checkpoint(&src, &LoadOptions::default()).unwrap();
    assert_eq!(ck.tensors.len(), 21);
    let mut z = zip::ZipArchive::new(std::fs::File::open(&src).unwrap()).unwrap();
    let mut f = z.by_name("evomerge_tiny/data/0").unwrap();
    let mut b = Vec::new();
    f.read_to_end(&mut b).unwrap();
    assert_eq!(crc32fast::hash(&b), f.crc32());
}

/// A record whose central-directory sizes lie (smaller than its storage needs,
/// larger than the file) is refused with the file named, with no over-read and no
/// allocation of the claimed size. The one lie that may load is a stored record's
/// *compressed* size set too large: the reader then still reads exactly the declared
/// uncompressed bytes from the right offset, and their CRC-32 proves them intact.
#[test]
fn zip_records_lying_about_their_size_are_refused() {
    let base = std::fs::read(fixture("evomerge_tiny.pt")).unwrap();
    let want = crate::checkpoint::torch_pt::read_pt(&fixture("evomerge_tiny.pt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (i, v) in [(4usize, 8u32), (4, u32::MAX), (0, 0x7fff_ffff), (0, 3)] {
        for compressed in [true, false] {
            let mut b = base.clone();
            gen::tell_lie(&mut b, &gen::ZipLie::CentralSize(i, compressed, v));
            let p = dir.path().join("lying.pt");
            std::fs::write(&p, &b).unwrap();
            match crate::checkpoint::torch_pt::read_pt(&p) {
                Err(e) => assert!(e.to_string().contains("lying.pt"), "{e}"),
                Ok(got) => {
                    assert!(compressed && v > 8192, "record {i} with size {v} loaded");
                    assert_eq!(got.tensors.len(), want.tensors.len());
                    for ((n, a), (m, b)) in got.tensors.iter().zip(&want.tensors) {
                        assert!(n == m && a.equal(b), "`{n}` differs");
                    }
                }
            }
        }
    }
}

/// A GGUF tensor offset near 2^64 overflowed while the error message was being
/// written (a panic, found by `hostile_gguf_files`).
#[test]
fn gguf_offset_near_u64_max_is_an_error_not_a_panic() {
    let mut tensors = gen::llama_tensors();
    tensors[0].offset = u64::MAX - 31;
    let bytes = gen::gguf_bytes(&gen::llama_meta(), &tensors);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("offset.gguf");
    std::fs::write(&p, &bytes).unwrap();
    let e = load_checkpoint(&p, &LoadOptions::default()).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("offset.gguf") && text.contains("beyond the end of the file"),
        "{text}"
    );
}

/// A truncated `tokenizer.json` made the `tokenizers` crate panic (`expect("Helper")`
/// in its decoder deserialiser); now it is a located JSON error naming the file.
#[test]
fn truncated_tokenizer_json_is_an_error_not_a_panic() {
    let text = gen::tokenizer_doc().to_string();
    let at = text.find("\"decoder\"").unwrap() + 30;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    std::fs::write(&p, &text[..at]).unwrap();
    let e = crate::data::Tokenizer::from_file(&p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("not valid JSON"),
        "{e}"
    );
}

fn gguf_error(meta: Vec<(String, gen::GMeta)>, tensors: Vec<gen::GTensor>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("heads.gguf");
    std::fs::write(&p, gen::gguf_bytes(&meta, &tensors)).unwrap();
    load_checkpoint(&p, &LoadOptions::default())
        .unwrap_err()
        .to_string()
}

/// Found by the soak (`scripts/soak-parsers.sh`): `llama.attention.head_count` = 0
/// divided by zero while the config was derived, and a Q weight with a zero
/// dimension divided by zero in the row un-permutation.
#[test]
fn gguf_zero_heads_and_empty_q_weight_are_errors_not_panics() {
    let mut meta = gen::llama_meta();
    for (k, v) in &mut meta {
        if k == "llama.attention.head_count" {
            *v = gen::GMeta::U32(0);
        }
    }
    let e = gguf_error(meta, gen::llama_tensors());
    assert!(
        e.contains("heads.gguf") && e.contains("head_count` = 0"),
        "{e}"
    );

    let mut tensors = gen::llama_tensors();
    tensors[1].dims = vec![0, 8]; // blk.0.attn_q.weight with rows of 0 values
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty_q.gguf");
    std::fs::write(&p, gen::gguf_bytes(&gen::llama_meta(), &tensors)).unwrap();
    // Whatever the verdict on such a file, it is not a panic.
    let r = std::panic::catch_unwind(|| load_checkpoint(&p, &LoadOptions::default()).map(|_| ()));
    assert!(r.is_ok(), "loading a GGUF with an empty Q weight panicked");
}

/// Found by the soak: a `tokenizer.json` nested ~100 levels deep (valid JSON, under
/// serde_json's limit of 128) made the `tokenizers` crate hit that limit inside its
/// untagged-enum buffering and panic. Deep nesting is now refused up front.
#[test]
fn deeply_nested_tokenizer_json_is_an_error_not_a_panic() {
    let mut doc = gen::tokenizer_doc();
    let mut deep = serde_json::json!(1);
    for _ in 0..100 {
        deep = serde_json::json!([deep]);
    }
    doc["decoder"]["add_prefix_space"] = deep;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    std::fs::write(&p, doc.to_string()).unwrap();
    let e = crate::data::Tokenizer::from_file(&p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("tokenizer.json") && e.contains("nested"), "{e}");
}

/// Found by the soak: a `continuing_subword_prefix` longer than a merge's second
/// token made the `tokenizers` crate panic slicing it (`start byte index ... out of
/// bounds`), and an added token of 100 000 bytes took 42 s to load. Both are now
/// refused, naming the file and the field.
#[test]
fn contradictory_or_giant_tokenizer_fields_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    let mut doc = gen::tokenizer_doc();
    doc["model"]["continuing_subword_prefix"] = "##".into();
    std::fs::write(&p, doc.to_string()).unwrap();
    let e = crate::data::Tokenizer::from_file(&p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("continuing_subword_prefix"),
        "{e}"
    );

    let mut doc = gen::tokenizer_doc();
    doc["added_tokens"][0]["content"] = "x".repeat(100_000).into();
    std::fs::write(&p, doc.to_string()).unwrap();
    let e = crate::data::Tokenizer::from_file(&p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("added_tokens`[0]"),
        "{e}"
    );
}
