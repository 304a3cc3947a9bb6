//! Fuzzing on stable Rust with a fixed budget: every parser that reads untrusted input —
//! creds, JWTs, authorization requests (sealed and plain), enrolment and rotation requests,
//! peel ids, the configuration, secret envelopes — gets random and mutated inputs, and must
//! answer with an error, never a panic; a mutated JWT is never accepted. Deterministic seeds, so
//! a failure repeats. Longer runs: `scripts/fuzz` (cargo fuzz targets in fuzz/).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use nkeys::{KeyPair, XKey};
use zester::appliance::callout::protocol::{self, Channel};
use zester::authority::Authority;
use zester::home::config::Config;
use zester::identity::claims::{AuthRequestNats, Claims, ServerIdentity, UserNats};
use zester::identity::creds::Creds;
use zester::identity::jwt;
use zester::identity::peel_id::PeelId;

const NOW: i64 = 1_800_000_000;
/// Iterations per target (debug builds verify slowly; this keeps the suite quick).
const ROUNDS: usize = 2_000;

/// A random mutation of `input`: flip, insert, delete, truncate or duplicate a slice.
fn mutate(rng: &mut StdRng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    if out.is_empty() {
        return vec![rng.gen()];
    }
    for _ in 0..rng.gen_range(1..4) {
        let at = rng.gen_range(0..out.len().max(1));
        match rng.gen_range(0..5) {
            0 => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << rng.gen_range(0..8);
            }
            1 => out.insert(at, rng.gen()),
            2 if out.len() > 1 => {
                out.remove(at.min(out.len() - 1));
            }
            3 => out.truncate(at),
            _ => {
                let end = (at + rng.gen_range(1..16)).min(out.len());
                let slice = out[at..end].to_vec();
                out.splice(at..at, slice);
            }
        }
        if out.is_empty() {
            out.push(b'x');
        }
    }
    out
}

fn random_bytes(rng: &mut StdRng) -> Vec<u8> {
    let len = rng.gen_range(0..512);
    (0..len).map(|_| rng.gen()).collect()
}

fn world() -> (Authority, Creds) {
    let (authority, _) = Authority::generate(NOW).unwrap();
    let creds = authority
        .issue_peel(&PeelId::parse("web-01").unwrap(), NOW, 3600)
        .unwrap();
    (authority, creds)
}

#[test]
fn creds_and_jwts_survive_garbage_and_mutations() {
    let mut rng = StdRng::seed_from_u64(1);
    let (_, creds) = world();
    let text = creds.to_text();
    let token = creds.jwt().token().to_string();
    for _ in 0..ROUNDS {
        let garbage = random_bytes(&mut rng);
        let _ = Creds::parse(&String::from_utf8_lossy(&garbage));
        let _ = jwt::decode_any(&String::from_utf8_lossy(&garbage));

        let mutated = String::from_utf8_lossy(&mutate(&mut rng, text.as_bytes())).into_owned();
        if let Ok(parsed) = Creds::parse(&mutated) {
            // Mutating the decoration or trailing text may keep the creds intact: then the JWT
            // and the key must be exactly the original ones.
            assert_eq!(parsed.jwt().token(), token);
            assert_eq!(parsed.key().public_key(), creds.key().public_key());
        }
        let mutated = mutate(&mut rng, token.as_bytes());
        if mutated != token.as_bytes() {
            let mutated = String::from_utf8_lossy(&mutated);
            assert!(
                jwt::decode::<UserNats>(&mutated, NOW).is_err(),
                "a mutated JWT was accepted: {mutated}"
            );
        }
    }
}

fn request_token(server: &KeyPair, account: &str) -> String {
    let claims = Claims {
        sub: account.to_string(),
        aud: protocol::REQUEST_AUDIENCE.to_string(),
        iat: NOW,
        exp: NOW + 2,
        nats: AuthRequestNats {
            server: ServerIdentity {
                id: server.public_key(),
                ..ServerIdentity::default()
            },
            user_nkey: KeyPair::new_user().public_key(),
            ..AuthRequestNats::default()
        },
        ..Claims::default()
    };
    jwt::encode(claims, server).unwrap().token().to_string()
}

#[test]
fn authorization_requests_survive_garbage_and_mutations() {
    let mut rng = StdRng::seed_from_u64(2);
    let server = KeyPair::new_server();
    let account = KeyPair::new_account().public_key();
    let callout = XKey::new();
    let server_x = XKey::new();
    let channel = Channel::new(&callout, &server_x.public_key()).unwrap();
    let token = request_token(&server, &account);
    let sealed = server_x
        .seal(
            token.as_bytes(),
            &XKey::from_public_key(&callout.public_key()).unwrap(),
        )
        .unwrap();
    assert!(protocol::open_request(&sealed, Some(&channel), &account, NOW).is_ok());
    for _ in 0..ROUNDS {
        let garbage = random_bytes(&mut rng);
        let _ = protocol::open_request(&garbage, None, &account, NOW);
        let _ = protocol::open_request(&garbage, Some(&channel), &account, NOW);
        let mutated = mutate(&mut rng, &sealed);
        if mutated != sealed {
            assert!(
                protocol::open_request(&mutated, Some(&channel), &account, NOW).is_err(),
                "a mutated sealed request was opened"
            );
        }
        let mutated = mutate(&mut rng, token.as_bytes());
        if mutated != token.as_bytes() {
            assert!(protocol::open_request(&mutated, None, &account, NOW).is_err());
        }
    }
}

#[test]
fn enrolment_and_rotation_requests_survive_garbage() {
    let mut rng = StdRng::seed_from_u64(3);
    let key = KeyPair::new_user();
    let request = zester::wire::enrol::EnrolRequest {
        op: zester::wire::enrol::Op::Enrol,
        id: "web-01".into(),
        nkey: key.public_key(),
        xkey: Some(XKey::new().public_key()),
        hostname: "h".into(),
        at: NOW,
        token: None,
    };
    let signed =
        serde_json::to_vec(&zester::wire::enrol::sign_request(&key, &request).unwrap()).unwrap();
    for _ in 0..ROUNDS {
        let garbage = random_bytes(&mut rng);
        let _ = zester::wire::enrol::verify_request(&garbage, &key.public_key(), NOW);
        let _ = zester::wire::rotate::verify_rotation(&garbage, "web-01", true, NOW);
        let mutated = mutate(&mut rng, &signed);
        if let Ok(accepted) = zester::wire::enrol::verify_request(&mutated, &key.public_key(), NOW)
        {
            assert_eq!(
                accepted, request,
                "a mutated enrolment request changed meaning"
            );
        }
    }
}

#[test]
fn peel_ids_and_config_survive_garbage() {
    let mut rng = StdRng::seed_from_u64(4);
    let config = zester::home::config::DEFAULT_CONFIG_TOML.as_bytes();
    for _ in 0..ROUNDS * 5 {
        let garbage = String::from_utf8_lossy(&random_bytes(&mut rng)).into_owned();
        if let Ok(id) = PeelId::parse(&garbage) {
            assert!(id
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
            assert!(!id.as_str().contains(['.', '*', '>', ' ']));
        }
        let _ = Config::parse(&garbage);
        let _ = Config::parse(&String::from_utf8_lossy(&mutate(&mut rng, config)));
    }
}

#[test]
fn secret_envelopes_have_one_text() {
    let mut rng = StdRng::seed_from_u64(5);
    let master = XKey::new();
    let peel = XKey::new();
    let sealed = zester::secrets::seal(b"db password", &master, &peel.public_key()).unwrap();
    let payload = zester::secrets::parse(&sealed).unwrap().payload;
    // Found by the envelope_open cargo fuzz target: data_encoding decodes concatenated padded
    // blocks, so the same payload had other texts (`…ylw=068=` for `…ylzTrw==`).
    let body = format!(
        "{}{}",
        data_encoding::BASE64.encode(&payload[..1]),
        data_encoding::BASE64.encode(&payload[1..])
    );
    assert_eq!(
        data_encoding::BASE64.decode(body.as_bytes()).unwrap(),
        payload
    );
    let split = format!("ENC[{},{body}]", peel.public_key());
    assert_eq!(
        zester::secrets::parse(&split),
        Err(zester::secrets::SecretError::BadBase64)
    );
    assert!(zester::secrets::open(&split, &peel, &master.public_key()).is_err());
    for _ in 0..ROUNDS {
        let garbage = String::from_utf8_lossy(&random_bytes(&mut rng)).into_owned();
        let _ = zester::secrets::open(&garbage, &peel, &master.public_key());
        let mutated = String::from_utf8_lossy(&mutate(&mut rng, sealed.as_bytes())).into_owned();
        if let Ok(envelope) = zester::secrets::parse(&mutated) {
            assert_eq!(
                envelope.to_text(),
                mutated.trim(),
                "two texts for one envelope"
            );
        }
        if zester::secrets::open(&mutated, &peel, &master.public_key()).is_ok() {
            assert_eq!(mutated.trim(), sealed, "a mutated envelope opened");
        }
    }
}
