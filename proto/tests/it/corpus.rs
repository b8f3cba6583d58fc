//! The fuzz body on stable: `fuzzing::decode_bytes` over the saved seed
//! corpus (`tests/corpus/`, inputs the fuzzer found interesting) and over
//! every golden vector, so a regression the fuzzer once caught fails plain
//! `cargo test`.

use crate::cases::{from_hex, tests_dir};
use skelpi_proto::fuzzing::decode_bytes;

/// Corpus files stay small so the repository does too.
const MAX_CORPUS_FILE: usize = 4096;

#[test]
fn the_fuzz_body_survives_the_saved_corpus() {
    let mut seen = 0;
    for entry in std::fs::read_dir(tests_dir("corpus")).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        assert!(
            data.len() <= MAX_CORPUS_FILE,
            "{} is larger than {MAX_CORPUS_FILE} bytes",
            path.display()
        );
        decode_bytes(&data);
        seen += 1;
    }
    assert!(seen > 0, "the seed corpus is empty");
}

#[test]
fn the_fuzz_body_survives_the_golden_vectors_and_their_prefixes() {
    for entry in std::fs::read_dir(tests_dir("golden")).unwrap() {
        let path = entry.unwrap().path();
        let data = from_hex(&std::fs::read_to_string(&path).unwrap());
        for cut in 0..=data.len() {
            decode_bytes(&data[..cut]);
        }
    }
}
