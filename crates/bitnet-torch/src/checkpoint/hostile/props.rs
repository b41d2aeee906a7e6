//! One property per parser, through the entry the pipeline uses
//! ([`load_checkpoint`], [`Config::from_json_file`], [`Tokenizer::from_file`]):
//! every generated input gives `Ok` or an error naming the file, under
//! `catch_unwind`. Case counts are sized so all of them together take well under
//! 60 s in a debug `cargo test` on 2 busy cores (measured in docs/perf.md).

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use tch::Tensor;

use super::gen::{self, Pk};
use super::harness::{check, ok_or_names_file};
use crate::bitnet::Config;
use crate::checkpoint::gguf::file as gguf_file;
use crate::checkpoint::pickle;
use crate::checkpoint::{load_checkpoint, LoadOptions};
use crate::data::Tokenizer;

pub(crate) fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("writing a case into the test's temp dir");
    p
}

fn same_tensors(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|((n, x), (m, y))| n == m && x.equal(y))
}

/// A mutated `.pt` either fails naming the file or loads exactly the original
/// tensors: with the CRC-32 check, changed weight bytes can no longer load.
#[test]
fn hostile_pt_mutations_never_load_changed_weights() {
    let base = std::fs::read(fixture("evomerge_tiny.pt")).unwrap();
    let want = crate::checkpoint::torch_pt::read_pt(&fixture("evomerge_tiny.pt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    check("pt_mutations", 120, gen::mutations(), |muts| {
        let p = write(dir.path(), "mutated.pt", &gen::apply(&base, &muts));
        match crate::checkpoint::torch_pt::read_pt(&p) {
            Ok(got) if !same_tensors(&got.tensors, &want.tensors) => {
                Err("a mutated .pt loaded with different tensors".into())
            }
            r => ok_or_names_file(r, "mutated.pt"),
        }
    });
}

/// Generated torch archives: nested state dicts, hostile globals, bad views,
/// byte orders, records that lie about their size or checksum, deflated records.
#[test]
fn hostile_pt_generated_archives() {
    let dir = tempfile::tempdir().unwrap();
    check("pt_archives", 150, gen::pt_archive(), |(zip, lie, _)| {
        let mut zip = zip;
        gen::tell_lie(&mut zip, &lie);
        let p = write(dir.path(), "generated.pt", &zip);
        ok_or_names_file(load_checkpoint(&p, &LoadOptions::default()), "generated.pt")
    });
}

fn disallowed(pk: &Pk) -> bool {
    match pk {
        Pk::Call(m, n, args) => {
            let allowed = matches!(
                (m.as_str(), n.as_str()),
                ("collections", "OrderedDict")
                    | ("torch._utils", "_rebuild_parameter")
                    | ("_codecs", "encode")
                    | ("numpy", "dtype")
            ) || (m == "torch" && n.ends_with("Storage"));
            !allowed || args.iter().any(disallowed)
        }
        Pk::List(v) | Pk::Tuple(v) => v.iter().any(disallowed),
        Pk::Dict(v) => v.iter().any(|(k, x)| disallowed(k) || disallowed(x)),
        Pk::Memo(v, _) => disallowed(v),
        _ => false,
    }
}

/// Pickle programs: any nesting of values, tensors, calls, depth bombs and memo
/// amplification; a program naming a disallowed global anywhere is never `Ok`.
#[test]
fn hostile_pickle_streams() {
    let strategy = (gen::pickle_value(), prop::option::of(gen::mutations()));
    check("pickle", 300, strategy, |(pk, muts)| {
        let bytes = gen::pickle_bytes(&pk);
        match muts {
            None => match pickle::load(&bytes) {
                Ok(_) if disallowed(&pk) => {
                    Err("a pickle naming a disallowed global loaded".into())
                }
                _ => Ok(()),
            },
            Some(m) => {
                let _ = pickle::load(&gen::apply(&bytes, &m));
                Ok(())
            }
        }
    });
}

/// Safetensors headers: bad dtypes, shapes, overlapping or out-of-range offsets,
/// header lengths up to 2^64-1, then byte mutations.
#[test]
fn hostile_safetensors_headers() {
    let dir = tempfile::tempdir().unwrap();
    check("safetensors", 200, gen::safetensors_file(), |(bytes, _)| {
        let p = write(dir.path(), "case.safetensors", &bytes);
        ok_or_names_file(
            load_checkpoint(&p, &LoadOptions::default()),
            "case.safetensors",
        )
    });
}

/// A real safetensors file, mutated byte-wise.
#[test]
fn hostile_safetensors_mutations() {
    let base = std::fs::read(fixture("hf_tiny/model.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    check("safetensors_mutations", 100, gen::mutations(), |muts| {
        let p = write(dir.path(), "mutated.safetensors", &gen::apply(&base, &muts));
        ok_or_names_file(
            load_checkpoint(&p, &LoadOptions::default()),
            "mutated.safetensors",
        )
    });
}

/// GGUF: a tiny llama file with keys dropped or retyped, bogus counts, dims,
/// offsets and types, then byte mutations; the container parser alone too.
#[test]
fn hostile_gguf_files() {
    let dir = tempfile::tempdir().unwrap();
    let strategy = (
        prop::collection::vec(gen::gguf_edit(), 0..4),
        prop::option::of(gen::mutations()),
    );
    check("gguf", 200, strategy, |(edits, muts)| {
        let mut bytes = gen::edited_gguf(&edits);
        if let Some(m) = muts {
            bytes = gen::apply(&bytes, &m);
        }
        let _ = gguf_file::parse(&bytes);
        let p = write(dir.path(), "case.gguf", &bytes);
        ok_or_names_file(load_checkpoint(&p, &LoadOptions::default()), "case.gguf")
    });
}

/// `config.json` with keys deleted, retyped, extreme or contradictory (heads that
/// do not divide, kv heads above heads), alone and as part of an HF folder.
#[test]
fn hostile_config_json() {
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("hf_tiny/config.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("hf_case");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(
        fixture("hf_tiny/model.safetensors"),
        folder.join("model.safetensors"),
    )
    .unwrap();
    let strategy = (gen::json_edits(), prop::option::of(gen::mutations()));
    check("config_json", 150, strategy, |(edits, muts)| {
        let mut doc = base.clone();
        for e in &edits {
            gen::apply_json(&mut doc, e);
        }
        let mut text = doc.to_string().into_bytes();
        if let Some(m) = muts {
            text = gen::apply(&text, &m);
        }
        let p = write(&folder, "config.json", &text);
        ok_or_names_file(Config::from_json_file(&p), "config.json")?;
        ok_or_names_file(load_checkpoint(&folder, &LoadOptions::default()), "hf_case")
    });
}

/// `tokenizer.json` with missing, retyped or contradictory fields (ids that
/// collide, merges of unknown tokens, added tokens past the vocabulary); a loaded
/// tokenizer then encodes and decodes a fixed text.
#[test]
fn hostile_tokenizer_json() {
    let dir = tempfile::tempdir().unwrap();
    let strategy = (gen::json_edits(), prop::option::of(gen::mutations()));
    check("tokenizer_json", 150, strategy, |(edits, muts)| {
        let mut doc = gen::tokenizer_doc();
        for e in &edits {
            gen::apply_json(&mut doc, e);
        }
        let mut text = doc.to_string().into_bytes();
        if let Some(m) = muts {
            text = gen::apply(&text, &m);
        }
        let p = write(dir.path(), "tokenizer.json", &text);
        match Tokenizer::from_file(&p) {
            Err(e) => ok_or_names_file(Err::<(), _>(e), "tokenizer.json"),
            Ok(t) => {
                // Errors here are typed (`DataError`); only a panic fails the property.
                if let Ok(ids) = t.encode("abc ab <s> ca") {
                    let _ = t.decode(&ids);
                }
                let _ = t.decode(&[0, 3, 4, 5, 1 << 40]);
                Ok(())
            }
        }
    });
}
