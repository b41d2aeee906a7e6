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
    assert!(text.contains("flipped.pt") && text.contains("`evomerge_tiny/data/0`"), "{text}");
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
    for rec in ["evomerge_tiny/data/5", "evomerge_tiny/data/6", "evomerge_tiny/data/7"] {
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
    assert!(text.contains("offset.gguf") && text.contains("beyond the end of the file"), "{text}");
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
    let e = crate::data::Tokenizer::from_file(&p).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json") && e.contains("not valid JSON"), "{e}");
}
