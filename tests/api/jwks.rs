//! Keys for downstream services: the JWKS endpoint, the verifier library,
//! and key rotation with verification-only keys.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use realchat_auth::proto::RefreshRequest;
use realchat_auth_verifier::Verifier;

use realchat_testkit::app::TestApp;
use realchat_testkit::http::http_get_with_headers;
use realchat_testkit::jwt::parts;
use realchat_testkit::keys::write_key_file;

#[tokio::test]
async fn downstream_services_verify_access_tokens_with_the_jwks() {
    let (active, _) = write_key_file();
    let (previous, previous_der) = write_key_file();
    let app = TestApp::spawn_with(|c| {
        c.tokens.signing_key_file = Some(active.clone());
        // Spaces and empty entries in the list are ignored.
        c.tokens.verification_key_files = Some(format!(" {}, ,", previous.display()));
    })
    .await;
    let user_id = app.register("dana@example.com", "dana's password").await;
    let login = app.login("dana@example.com", "dana's password").await;

    let (status, headers, jwks) =
        http_get_with_headers(&app.http_addr.to_string(), "/.well-known/jwks.json").await;
    assert_eq!(status, 200);
    assert_eq!(headers["cache-control"], "public, max-age=300");
    assert_eq!(headers["content-type"], "application/jwk-set+json");
    let set: serde_json::Value = serde_json::from_str(&jwks).unwrap();
    let keys = set["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "the signing key and the previous one");
    for key in keys {
        assert_eq!(
            (key["kty"].as_str(), key["crv"].as_str()),
            (Some("OKP"), Some("Ed25519"))
        );
        assert!(key.get("d").is_none(), "public keys only");
    }
    let (header, _) = parts(&login.access_token);
    assert_eq!(keys[0]["kid"], header["kid"], "the signing key comes first");

    let verifier = Verifier::from_jwks(&jwks, "realchat-auth", "realchat").unwrap();
    let claims = verifier.verify(&login.access_token).unwrap();
    assert_eq!(claims.sub.to_string(), user_id.to_string());
    assert!(
        verifier.verify(&login.refresh_token).is_err(),
        "a refresh token is no access token"
    );
    let other_audience = Verifier::from_jwks(&jwks, "realchat-auth", "billing").unwrap();
    assert!(other_audience.verify(&login.access_token).is_err());
    let mut forged = login.access_token.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    assert!(verifier.verify(&forged).is_err());

    // Rotation: tokens signed by the previous key still work, on the server
    // and downstream, and new tokens come from the active key.
    let previous_kid = keys[1]["kid"].as_str().unwrap().to_owned();
    let sign_with_previous = |typ: &str, claims: &serde_json::Value| {
        let mut h = Header::new(Algorithm::EdDSA);
        h.typ = Some(typ.into());
        h.kid = Some(previous_kid.clone());
        jsonwebtoken::encode(&h, claims, &EncodingKey::from_ed_der(&previous_der)).unwrap()
    };
    let old_access = sign_with_previous("at+jwt", &parts(&login.access_token).1);
    assert_eq!(
        verifier.verify(&old_access).unwrap().sub.to_string(),
        user_id.to_string()
    );
    let old_refresh = sign_with_previous("rt+jwt", &parts(&login.refresh_token).1);
    let rotated = app
        .client
        .clone()
        .refresh(RefreshRequest {
            refresh_token: old_refresh,
        })
        .await
        .expect("a refresh token signed by the previous key is honoured")
        .into_inner();
    assert_eq!(parts(&rotated.refresh_token).0["kid"], header["kid"]);

    app.stop().await;
    for file in [active, previous] {
        std::fs::remove_file(file).unwrap();
    }
}

#[tokio::test]
async fn an_es256_key_signs_and_verifies_under_its_own_algorithm_only() {
    let rng = ring::rand::SystemRandom::new();
    let der = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .unwrap();
    let key_file = std::env::temp_dir().join(format!("rc-test-p256-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(
        &key_file,
        pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref().to_vec())),
    )
    .unwrap();
    let app = TestApp::spawn_with(|c| c.tokens.signing_key_file = Some(key_file.clone())).await;
    let user_id = app.register("eve@example.com", "eve's password").await;
    let login = app.login("eve@example.com", "eve's password").await;
    let (header, _) = parts(&login.access_token);
    assert_eq!(header["alg"], "ES256");

    let (_, _, jwks) =
        http_get_with_headers(&app.http_addr.to_string(), "/.well-known/jwks.json").await;
    let set: serde_json::Value = serde_json::from_str(&jwks).unwrap();
    let key = &set["keys"][0];
    assert_eq!(
        (
            key["kty"].as_str(),
            key["crv"].as_str(),
            key["alg"].as_str()
        ),
        (Some("EC"), Some("P-256"), Some("ES256"))
    );
    let verifier = Verifier::from_jwks(&jwks, "realchat-auth", "realchat").unwrap();
    assert_eq!(
        verifier
            .verify(&login.access_token)
            .unwrap()
            .sub
            .to_string(),
        user_id.to_string()
    );

    let rotated = app
        .client
        .clone()
        .refresh(RefreshRequest {
            refresh_token: login.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(parts(&rotated.refresh_token).0["alg"], "ES256");

    // Another algorithm under this key's kid is refused, by both.
    let ed = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let mut h = Header::new(Algorithm::EdDSA);
    h.typ = Some("rt+jwt".into());
    h.kid = header["kid"].as_str().map(str::to_owned);
    let claims = parts(&rotated.refresh_token).1;
    let wrong_alg =
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ed_der(ed.as_ref())).unwrap();
    let status = app
        .client
        .clone()
        .refresh(RefreshRequest {
            refresh_token: wrong_alg.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    h.typ = Some("at+jwt".into());
    let wrong_alg_access = jsonwebtoken::encode(
        &h,
        &parts(&login.access_token).1,
        &EncodingKey::from_ed_der(ed.as_ref()),
    )
    .unwrap();
    assert!(verifier.verify(&wrong_alg_access).is_err());

    app.stop().await;
    std::fs::remove_file(key_file).unwrap();
}
