//! Interop with an independent implementation: the official `@wecom/crypto` npm package, driven
//! through `node interop/wecom_jobs.js`. Over 600 random messages, keys and receive_ids: it
//! encrypts and we decrypt, we encrypt and it decrypts, byte-identical ciphertexts for the same
//! random prefix, and equal signatures.
//!
//! Skipped (with a message) when `interop/node_modules` is missing, unless `WECHAT_KF_CI=1`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use wechat_kf::crypto::{CallbackCrypto, signature};

const MESSAGES: usize = 600;

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop")
}

/// Returns false (after saying why) when the test must be skipped.
fn node_available() -> bool {
    wechat_kf_test_support::require_command("node")
        && wechat_kf_test_support::require_path(
            &interop_dir().join("node_modules/@wecom/crypto"),
            "run `npm ci --prefix interop`",
        )
}

/// Sends every job to node and returns the answers, in order.
fn run_node(jobs: &[Value]) -> Vec<Value> {
    let mut child = Command::new("node")
        .arg("wecom_jobs.js")
        .current_dir(interop_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let input: String = jobs.iter().map(|j| format!("{j}\n")).collect();
    // Write from another thread: node answers while we are still sending.
    let writer = std::thread::spawn(move || {
        stdin.write_all(input.as_bytes()).expect("write jobs");
    });
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let answers: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(&line.expect("read answer")).expect("json answer"))
        .collect();
    writer.join().expect("writer");
    assert!(child.wait().expect("node exits").success());
    assert_eq!(answers.len(), jobs.len(), "one answer per job");
    answers
}

fn random_message(rng: &mut StdRng) -> String {
    let target = rng.random_range(0..=600usize);
    let mut s = String::new();
    while s.len() < target {
        let c = match rng.random_range(0..10) {
            0..=4 => char::from(rng.random_range(0x20u8..0x7f)),
            5 => ['<', '>', '&', '\n', '"', ']'][rng.random_range(0..6)],
            6..=7 => char::from_u32(rng.random_range(0x4e00..0x9fa5)).unwrap_or('中'),
            8 => char::from_u32(rng.random_range(0x1f600..0x1f64f)).unwrap_or('😀'),
            _ => char::from_u32(rng.random_range(0xa0..0x7ff)).unwrap_or('é'),
        };
        s.push(c);
    }
    s
}

fn random_ascii(rng: &mut StdRng, alphabet: &[u8], len: std::ops::RangeInclusive<usize>) -> String {
    let n = rng.random_range(len);
    (0..n)
        .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
        .collect()
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

struct Case {
    key: String,
    receive_id: String,
    token: String,
    timestamp: String,
    nonce: String,
    message: String,
    random: [u8; 16],
}

fn cases() -> Vec<Case> {
    let mut rng = StdRng::seed_from_u64(0x5745_4b46);
    (0..MESSAGES)
        .map(|i| {
            // Half the keys are 43 random base64 characters, so their trailing bits are random.
            let key = if i % 2 == 0 {
                random_ascii(&mut rng, B64, 43..=43)
            } else {
                let bytes: [u8; 32] = rng.random();
                let mut k = base64::engine::general_purpose::STANDARD.encode(bytes);
                k.pop();
                k
            };
            Case {
                key,
                receive_id: random_ascii(&mut rng, ALNUM, 0..=24),
                token: random_ascii(&mut rng, ALNUM, 1..=32),
                timestamp: rng
                    .random_range(1_000_000_000u64..2_000_000_000)
                    .to_string(),
                nonce: random_ascii(&mut rng, ALNUM, 1..=16),
                message: random_message(&mut rng),
                random: rng.random(),
            }
        })
        .collect()
}

#[test]
fn agrees_with_the_official_npm_package_in_both_directions() {
    if !node_available() {
        return;
    }
    let cases = cases();
    let mut jobs = Vec::with_capacity(cases.len() * 3);
    let mut ours = Vec::with_capacity(cases.len());
    for c in &cases {
        let crypto = CallbackCrypto::new(&c.token, &c.key, &c.receive_id).expect("valid key");
        let encrypt = crypto
            .encrypt_field(&c.message, &c.random)
            .expect("encrypts");
        jobs.push(
            json!({"op": "encrypt", "key": c.key, "message": c.message, "id": c.receive_id,
                         "random_hex": hex::encode(c.random)}),
        );
        jobs.push(json!({"op": "decrypt", "key": c.key, "encrypt": encrypt}));
        jobs.push(
            json!({"op": "sign", "token": c.token, "timestamp": c.timestamp,
                         "nonce": c.nonce, "encrypt": encrypt}),
        );
        ours.push((crypto, encrypt));
    }
    let answers = run_node(&jobs);
    for (i, (c, (crypto, our_encrypt))) in cases.iter().zip(&ours).enumerate() {
        let [theirs_enc, theirs_dec, theirs_sig] = &answers[3 * i..3 * i + 3] else {
            unreachable!()
        };
        for a in [theirs_enc, theirs_dec, theirs_sig] {
            assert_eq!(a["ok"], true, "case {i}: {a}");
        }
        // It encrypts, we decrypt; and the same random gives the same bytes.
        let their_encrypt = theirs_enc["encrypt"].as_str().expect("encrypt");
        assert_eq!(their_encrypt, our_encrypt, "case {i}: ciphertexts differ");
        assert_eq!(
            crypto.decrypt_field(their_encrypt).unwrap(),
            c.message,
            "case {i}"
        );
        // We encrypt, it decrypts.
        assert_eq!(theirs_dec["message"], c.message.as_str(), "case {i}");
        assert_eq!(theirs_dec["id"], c.receive_id.as_str(), "case {i}");
        assert_eq!(theirs_dec["random_hex"], hex::encode(c.random), "case {i}");
        // Signatures agree, and ours verifies theirs.
        let their_sig = theirs_sig["signature"].as_str().expect("signature");
        assert_eq!(
            their_sig,
            signature(&c.token, &c.timestamp, &c.nonce, our_encrypt),
            "case {i}"
        );
        crypto
            .verify_signature(their_sig, &c.timestamp, &c.nonce, our_encrypt)
            .unwrap();
    }
}
