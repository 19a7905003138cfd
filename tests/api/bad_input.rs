//! The bad-input suite: hundreds of malformed or hostile requests against a
//! running server, one table row each, every one answered with the expected
//! status — never INTERNAL — and the server healthy afterwards.
//!
//! A new case is one more row in `cases()`.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use realchat_auth::proto::{
    ChangePasswordRequest, DeleteAccountRequest, GetAccountRequest, ListSessionsRequest,
    LoginRequest, LogoutRequest, LogoutScope, RefreshRequest, RegisterRequest,
    RevokeSessionRequest,
};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use unicode_normalization::UnicodeNormalization as _;

use realchat_testkit::app::TestApp;
use realchat_testkit::jwt::{b64, b64_json, parts};
use realchat_testkit::keys::write_key_file;

/// One request of the table.
#[derive(Clone)]
enum Call {
    Register(String, String),
    /// Email, password, device name.
    Login(String, String, String),
    Refresh(String),
    Logout(String),
    /// An AccountApi call with these `authorization` field values, in
    /// order (none: no such field).
    Account(Vec<Vec<u8>>, AccountCall),
    /// A raw protobuf body for the method (`Register`, `Login`, …).
    Raw(&'static str, Vec<u8>),
    /// A whole request body for the method, gRPC framing included.
    Framed(&'static str, Vec<u8>),
}

/// The AccountApi request of a [`Call::Account`].
#[derive(Clone)]
enum AccountCall {
    GetAccount,
    /// Page size, page token.
    ListSessions(i32, String),
    /// Session id.
    RevokeSession(String),
    /// Current password, new password.
    ChangePassword(String, String),
    /// Password.
    DeleteAccount(String),
}

struct Case {
    name: String,
    call: Call,
    expect: Code,
}

fn case(name: impl Into<String>, call: Call, expect: Code) -> Case {
    Case {
        name: name.into(),
        call,
        expect,
    }
}

fn register(email: impl Into<String>, password: impl Into<String>) -> Call {
    Call::Register(email.into(), password.into())
}

fn login(email: impl Into<String>, password: impl Into<String>) -> Call {
    Call::Login(email.into(), password.into(), String::new())
}

/// A Login of the suite's user with this device name.
fn login_device(device_name: impl Into<String>) -> Call {
    Call::Login(
        "newbie@example.com".into(),
        "newbie's password".into(),
        device_name.into(),
    )
}

/// `call` with `authorization: Bearer <token>`.
fn with_bearer(token: &str, call: AccountCall) -> Call {
    Call::Account(vec![format!("Bearer {token}").into_bytes()], call)
}

/// Tokens for the token rows: (name, token), all to be refused.
struct Tokens {
    /// Bad refresh tokens, for Refresh and Logout.
    bad: Vec<(String, String)>,
    /// Bad access tokens, as bearer credentials of AccountApi calls: the
    /// same variants of a real access token, plus the tokens of a revoked
    /// session and of a deleted account.
    bad_access: Vec<(String, String)>,
    /// A good access token of the suite's user, for the field rows.
    access: String,
}

/// Forged, truncated, re-signed, expired, not-yet-valid, wrong-typ,
/// wrong-aud, alg-none and unknown-kid variants of a real token of `typ`
/// (`token`; `other` is a real token of the other kind, and `other_typ` its
/// typ), signed where it matters with the server's own key.
fn bad_tokens(
    token: &str,
    typ: &str,
    other: &str,
    other_typ: &str,
    kid: &str,
    our_key: &[u8],
) -> Vec<(String, String)> {
    let refresh = token;
    let access = other;
    let claims = parts(refresh).1;
    let now = chrono::Utc::now().timestamp();
    let ours = EncodingKey::from_ed_der(our_key);
    let rng = ring::rand::SystemRandom::new();
    let theirs_der = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let theirs = EncodingKey::from_ed_der(theirs_der.as_ref());
    let sign = |alg: Algorithm,
                typ: Option<&str>,
                kid: Option<&str>,
                key: &EncodingKey,
                edit: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims.clone();
        edit(&mut c);
        let mut h = Header::new(alg);
        h.typ = typ.map(str::to_owned);
        h.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&h, &c, key).unwrap()
    };
    let rt = Some(typ);
    let k = Some(kid);
    let same = |_: &mut serde_json::Value| {};
    let mut bad = vec![
        (
            "re-signed with another key".into(),
            sign(Algorithm::EdDSA, rt, k, &theirs, &same),
        ),
        (
            "unknown kid".into(),
            sign(Algorithm::EdDSA, rt, Some("no-such-kid"), &ours, &same),
        ),
        (
            "no kid".into(),
            sign(Algorithm::EdDSA, rt, None, &ours, &same),
        ),
        (
            "typ JWT".into(),
            sign(Algorithm::EdDSA, Some("JWT"), k, &ours, &same),
        ),
        (
            format!("typ {other_typ}"),
            sign(Algorithm::EdDSA, Some(other_typ), k, &ours, &same),
        ),
        (
            "no typ".into(),
            sign(Algorithm::EdDSA, None, k, &ours, &same),
        ),
        (
            "HS256 with the kid".into(),
            sign(
                Algorithm::HS256,
                rt,
                k,
                &EncodingKey::from_secret(b"k"),
                &same,
            ),
        ),
        (
            "expired".into(),
            sign(Algorithm::EdDSA, rt, k, &ours, &|c| {
                c["iat"] = (now - 7200).into();
                c["exp"] = (now - 3600).into();
            }),
        ),
        (
            "not yet valid".into(),
            sign(Algorithm::EdDSA, rt, k, &ours, &|c| {
                c["nbf"] = (now + 3600).into()
            }),
        ),
        (
            "iat an hour ahead".into(),
            sign(Algorithm::EdDSA, rt, k, &ours, &|c| {
                c["iat"] = (now + 3600).into()
            }),
        ),
        (
            "iat negative".into(),
            sign(Algorithm::EdDSA, rt, k, &ours, &|c| c["iat"] = (-1).into()),
        ),
        (
            "iat after exp".into(),
            sign(Algorithm::EdDSA, rt, k, &ours, &|c| {
                c["iat"] = (now + 20).into();
                c["exp"] = (now + 10).into();
            }),
        ),
        (
            "wrong aud".into(),
            sign(Algorithm::EdDSA, rt, k, &ours, &|c| {
                c["aud"] = "other".into()
            }),
        ),
        (
            "aud list".into(),
            sign(Algorithm::EdDSA, rt, k, &ours, &|c| {
                c["aud"] = serde_json::json!(["realchat"])
            }),
        ),
        (
            "no aud".into(),
            sign(Algorithm::EdDSA, rt, k, &ours, &|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
        ),
        (
            "wrong iss".into(),
            sign(Algorithm::EdDSA, rt, k, &ours, &|c| {
                c["iss"] = "evil".into()
            }),
        ),
        (
            "no exp".into(),
            sign(Algorithm::EdDSA, rt, k, &ours, &|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        (
            "no sub".into(),
            sign(Algorithm::EdDSA, rt, k, &ours, &|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
        ),
        (
            "sub not a uuid".into(),
            sign(Algorithm::EdDSA, rt, k, &ours, &|c| {
                c["sub"] = "admin".into()
            }),
        ),
        (
            "exp as string".into(),
            sign(Algorithm::EdDSA, rt, k, &ours, &|c| {
                c["exp"] = "never".into()
            }),
        ),
        (
            "unknown session".into(),
            sign(Algorithm::EdDSA, rt, k, &ours, &|c| {
                c["sid"] = uuid::Uuid::new_v4().to_string().into();
            }),
        ),
        (
            "another user's sub".into(),
            sign(Algorithm::EdDSA, rt, k, &ours, &|c| {
                c["sub"] = uuid::Uuid::new_v4().to_string().into();
            }),
        ),
        (format!("{other_typ} token"), access.to_owned()),
        ("garbage".into(), "garbage".into()),
        ("three dots".into(), "...".into()),
        ("whitespace".into(), "   ".into()),
        ("NUL".into(), "\0".into()),
        ("huge".into(), "a".repeat(60_000)),
    ];
    let header = refresh.split('.').next().unwrap();
    let sig = refresh.rsplit('.').next().unwrap();
    let none_header = serde_json::json!({"alg": "none", "typ": typ});
    let none_upper = serde_json::json!({"alg": "None", "typ": typ});
    let alg_none = format!("{}.{}.", b64_json(&none_header), b64_json(&claims));
    let mut changed = claims.clone();
    changed["exp"] = (now + 10 * 365 * 86_400).into();
    bad.extend([
        ("alg none".into(), alg_none.clone()),
        (
            "alg none, no dot".into(),
            alg_none.trim_end_matches('.').to_owned(),
        ),
        (
            "alg None".into(),
            alg_none.replace(&b64_json(&none_header), &b64_json(&none_upper)),
        ),
        (
            "changed payload".into(),
            format!("{header}.{}.{sig}", b64_json(&changed)),
        ),
        (
            "no signature".into(),
            format!("{header}.{}.", refresh.split('.').nth(1).unwrap()),
        ),
        (
            "truncated by 1".into(),
            refresh[..refresh.len() - 1].to_owned(),
        ),
        ("truncated to the header".into(), header.to_owned()),
        ("extra segment".into(), format!("{refresh}.x")),
        (
            "signature flipped".into(),
            format!(
                "{}{}",
                &refresh[..refresh.len() - 2],
                if refresh.ends_with("AA") { "BB" } else { "AA" }
            ),
        ),
        ("bearer prefix".into(), format!("Bearer {refresh}")),
        ("trailing newline".into(), format!("{refresh}\n")),
        ("invalid base64".into(), format!("{header}.!!!.{sig}")),
    ]);
    bad
}

fn cases(tokens: &Tokens) -> Vec<Case> {
    use Code::*;
    let mut rows = Vec::new();
    // Control characters, in every string field of Register and Login.
    let controls = [
        '\0', '\u{1}', '\u{7}', '\u{8}', '\t', '\n', '\u{b}', '\u{c}', '\r', '\u{1b}', '\u{1f}',
        '\u{7f}', '\u{80}', '\u{85}', '\u{9f}',
    ];
    for c in controls {
        let n = c as u32;
        rows.push(case(
            format!("register email U+{n:04X}"),
            register(format!("a{c}b@example.com"), "a good password"),
            InvalidArgument,
        ));
        rows.push(case(
            format!("register password U+{n:04X}"),
            register("ok@example.com", format!("good{c}password")),
            InvalidArgument,
        ));
        rows.push(case(
            format!("login email U+{n:04X}"),
            login(format!("a{c}b@example.com"), "a good password"),
            InvalidArgument,
        ));
        rows.push(case(
            format!("login password U+{n:04X}"),
            login("ok@example.com", format!("good{c}password")),
            InvalidArgument,
        ));
    }
    // Invisible format characters in emails.
    for c in [
        '\u{200b}', '\u{200c}', '\u{200d}', '\u{ad}', '\u{feff}', '\u{202e}', '\u{2066}',
    ] {
        rows.push(case(
            format!("register email format U+{:04X}", c as u32),
            register(format!("in{c}visible@example.com"), "a good password"),
            InvalidArgument,
        ));
    }
    // Invisible characters outside Cf and separators in emails (issue 12):
    // Hangul fillers, a variation selector, the combining grapheme joiner,
    // Khmer U+17B4, blank Braille, line and paragraph separators, and a
    // no-break space, inside or at the end (the password is good, so only
    // `email` can be refused).
    for c in [
        '\u{3164}', '\u{ffa0}', '\u{115f}', '\u{fe0f}', '\u{34f}', '\u{17b4}', '\u{2800}',
        '\u{2028}', '\u{2029}', '\u{a0}',
    ] {
        let n = c as u32;
        rows.push(case(
            format!("register email invisible U+{n:04X}"),
            register(format!("in{c}visible@example.com"), "a good password"),
            InvalidArgument,
        ));
        rows.push(case(
            format!("register email invisible U+{n:04X} at the end"),
            register(format!("invisible@example.com{c}"), "a good password"),
            InvalidArgument,
        ));
    }
    // No domain literals, numeric top-level labels or mixed scripts (issue 12).
    for email in [
        "ned@127.0.0.1",
        "t@127.0.0.1",
        "ned@[IPv6:::1]",
        "pаypal@example.com",
        "paypal@exаmple.com",
        "😀@example.com",
        "bob@xn--abc.example",
    ] {
        rows.push(case(
            format!("register email {email:?}"),
            register(email, "a good password"),
            InvalidArgument,
        ));
    }
    // Empty, whitespace-only and malformed emails.
    for email in [
        "",
        " ",
        "\u{a0}",
        "\u{3000}",
        "\u{2003}",
        "@",
        "a@",
        "@b.c",
        "a@b",
        "a b@c.d",
        "a@b..c",
        "a@-b.c",
        ".a@b.c",
        "a.@b.c",
        "a..b@c.d",
        "<a@b.c>",
        "a@b.c>",
        "Eve <e@b.c>",
        "\"q\"@b.c",
        "a@[1.2.3.4]",
        "a@localhost",
        "a@b@c.d",
        "a(comment)@b.c",
    ] {
        rows.push(case(
            format!("register email {email:?}"),
            register(email, "a good password"),
            InvalidArgument,
        ));
    }
    // Empty, whitespace-only, short, common and overlong passwords.
    for (name, password) in [
        ("empty", String::new()),
        ("7 chars", "seven77".into()),
        ("7 multibyte chars", "ééééééé".into()),
        (
            "a letter and 8 combining marks",
            "a\u{301}\u{302}\u{303}\u{304}\u{306}\u{307}\u{308}\u{30a}".into(),
        ),
        ("common", "password".into()),
        ("common, other case", "PassWord1".into()),
        ("the email", "newbie@example.com".into()),
        ("the email's local part", "NEWBIE".into()),
        ("73 ASCII bytes", "A".repeat(73)),
        ("73 bytes, 2-byte chars", format!("{}x", "é".repeat(36))),
        ("73 bytes, 3-byte chars", format!("{}x", "€".repeat(24))),
        ("74 bytes, 3-byte chars", format!("{}xx", "€".repeat(24))),
        ("whitespace only", " ".repeat(8)),
        (
            "Hangul fillers only",
            "\u{3164}\u{ffa0}\u{1160}\u{115f}".repeat(2),
        ),
        ("blank Braille only", "\u{2800}".repeat(8)),
        (
            "whitespace and invisible only",
            " \u{200b} \u{3000} \u{2060}    ".into(),
        ),
        ("73 bytes, 4-byte chars", format!("{}x", "😀".repeat(18))),
        ("75 bytes of euro", "€".repeat(25)),
        // Eight characters as typed; NFKC expands each to 18 (33 bytes).
        ("73 bytes after NFKC", "\u{fdfa}".repeat(8)),
        // One character as typed, however many NFKC makes of it.
        ("one character NFKC expands to 18", "\u{fdfa}".into()),
        ("2 KiB", "p".repeat(2048)),
        ("60 KiB", "p".repeat(60_000)),
    ] {
        rows.push(case(
            format!("register password {name}"),
            register("newbie@example.com", password),
            InvalidArgument,
        ));
    }
    // Oversized messages.
    rows.push(case(
        "register 70 KiB email",
        register("e".repeat(70_000), "a good password"),
        OutOfRange,
    ));
    rows.push(case(
        "login 1 MiB password",
        login("a@example.com", "p".repeat(1 << 20)),
        OutOfRange,
    ));
    rows.push(case(
        "refresh 100 KiB token",
        Call::Refresh("t".repeat(100_000)),
        OutOfRange,
    ));
    // Passwords at the limit: 71 and 72 bytes accepted, in 1- to 4-byte characters.
    for (name, password) in [
        ("71 ASCII", "A".repeat(71)),
        ("72 ASCII", "B".repeat(72)),
        ("72 bytes of 2-byte", "é".repeat(36)),
        ("71 bytes mixed", format!("{}x", "é".repeat(35))),
        ("72 bytes of 3-byte", "€".repeat(24)),
        (
            "71 bytes of 3-byte and ASCII",
            format!("{}xx", "€".repeat(23)),
        ),
        ("72 bytes of 4-byte", "😀".repeat(18)),
        (
            "71 bytes of 4-byte and ASCII",
            format!("{}xxx", "😀".repeat(17)),
        ),
    ] {
        let email = format!("limit-{}@example.com", name.replace(' ', "-"));
        rows.push(case(
            format!("register password {name}"),
            register(&email, password.clone()),
            Ok,
        ));
        rows.push(case(
            format!("login password {name}"),
            login(email, password),
            Ok,
        ));
    }
    // One address in every Unicode normalisation form and case: one account.
    // One script per dot-separated part: "Ωmega" would mix Greek and Latin.
    let base = "Ａmélie.Ωμέγα@Exämple.com";
    for (i, (form, email)) in [
        ("as typed", base.to_owned()),
        ("NFC", base.nfc().collect::<String>()),
        ("NFD", base.nfd().collect()),
        ("NFKC", base.nfkc().collect()),
        ("NFKD", base.nfkd().collect()),
        ("upper", base.to_uppercase()),
        ("lower NFD", base.to_lowercase().nfd().collect()),
        // ASCII spaces only: a no-break space is refused even at the ends.
        ("padded", format!("  {base}  ")),
        // The domain's A-label (IDNA) spelling.
        ("A-label", "Amélie.ωμέγα@xn--exmple-cua.com".to_owned()),
    ]
    .into_iter()
    .enumerate()
    {
        let expect = if i == 0 { Ok } else { AlreadyExists };
        rows.push(case(
            format!("register {form} form"),
            register(email.clone(), "a unicode password"),
            expect,
        ));
        rows.push(case(
            format!("login {form} form"),
            login(email, "a unicode password"),
            Ok,
        ));
    }
    // Wrong credentials and impossible emails: one answer.
    for email in [
        "nobody@example.com",
        "not an email",
        "",
        "a@localhost",
        &"x".repeat(300),
    ] {
        rows.push(case(
            format!("login unknown {:.20?}", email),
            login(email, "whatever it is"),
            Unauthenticated,
        ));
    }
    rows.push(case(
        "login wrong password",
        login("newbie@example.com", "wrong password"),
        Unauthenticated,
    ));
    rows.push(case(
        "login empty password",
        login("newbie@example.com", ""),
        Unauthenticated,
    ));
    // Every bad token, on Refresh and on Logout.
    for (name, token) in &tokens.bad {
        rows.push(case(
            format!("refresh {name}"),
            Call::Refresh(token.clone()),
            Unauthenticated,
        ));
        // Logout is idempotent: an authentic token (only we can sign one)
        // for a session that is not there has nothing left to end.
        let logout = if name == "unknown session" || name == "another user's sub" {
            Ok
        } else {
            Unauthenticated
        };
        rows.push(case(
            format!("logout {name}"),
            Call::Logout(token.clone()),
            logout,
        ));
    }
    account_rows(&mut rows, tokens);
    rows.push(case(
        "refresh empty",
        Call::Refresh(String::new()),
        InvalidArgument,
    ));
    rows.push(case(
        "logout empty",
        Call::Logout(String::new()),
        InvalidArgument,
    ));
    // Raw frames: invalid UTF-8, truncation, wrong wire types, bad tags.
    // AccountApi decodes the body before it reads the credentials, so none
    // are needed for these answers.
    for method in [
        "Register",
        "Login",
        "Refresh",
        "Logout",
        // Their field 1 is a string, as the rows assume.
        "AccountApi/RevokeSession",
        "AccountApi/ChangePassword",
        "AccountApi/DeleteAccount",
    ] {
        for (name, body) in [
            ("invalid UTF-8 in field 1", vec![0x0a, 0x02, 0xff, 0xfe]),
            (
                "lone surrogate in field 1",
                vec![0x0a, 0x03, 0xed, 0xa0, 0x80],
            ),
            ("overlong encoding in field 1", vec![0x0a, 0x02, 0xc0, 0xaf]),
            ("truncated length", vec![0x0a, 0x0a, b'a']),
            ("varint for a string", vec![0x08, 0x01]),
            ("field number 0", vec![0x02, 0x00]),
            ("unterminated varint", vec![0x0a, 0xff, 0xff, 0xff]),
            ("group wire type", vec![0x0b]),
        ] {
            rows.push(case(
                format!("raw {method} {name}"),
                Call::Raw(method, body),
                InvalidArgument,
            ));
        }
        // Broken gRPC framing: refused before decoding, never INTERNAL.
        for (name, body) in crate::wire::broken_framing() {
            rows.push(case(
                format!("framing {method} {name}"),
                Call::Framed(method, body),
                InvalidArgument,
            ));
        }
    }
    rows
}

/// The AccountApi rows: every bad credential on every call, then bad
/// fields under good credentials; and Login's device names.
fn account_rows(rows: &mut Vec<Case>, tokens: &Tokens) {
    use Code::*;
    let calls = [
        ("GetAccount", AccountCall::GetAccount),
        ("ListSessions", AccountCall::ListSessions(0, String::new())),
        (
            "RevokeSession",
            AccountCall::RevokeSession(uuid::Uuid::now_v7().to_string()),
        ),
        (
            "ChangePassword",
            AccountCall::ChangePassword("newbie's password".into(), "a new password".into()),
        ),
        (
            "DeleteAccount",
            AccountCall::DeleteAccount("newbie's password".into()),
        ),
    ];
    let good = format!("Bearer {}", tokens.access).into_bytes();
    let mut credentials: Vec<(String, Vec<Vec<u8>>)> = vec![
        ("missing".into(), vec![]),
        ("empty".into(), vec![Vec::new()]),
        ("Bearer alone".into(), vec![b"Bearer".to_vec()]),
        ("Bearer and a space".into(), vec![b"Bearer ".to_vec()]),
        ("Basic".into(), vec![b"Basic bmV3YmllOnB3".to_vec()]),
        ("no scheme".into(), vec![tokens.access.clone().into_bytes()]),
        (
            "tab after Bearer".into(),
            vec![format!("Bearer\t{}", tokens.access).into_bytes()],
        ),
        (
            "trailing space".into(),
            vec![format!("Bearer {} ", tokens.access).into_bytes()],
        ),
        (
            "two tokens".into(),
            vec![format!("Bearer {} {}", tokens.access, tokens.access).into_bytes()],
        ),
        ("twice, both good".into(), vec![good.clone(), good.clone()]),
        (
            "non-ASCII".into(),
            vec![format!("Bearer {}é", tokens.access).into_bytes()],
        ),
        ("obs-text byte".into(), vec![b"Bearer a\xffb".to_vec()]),
        (
            "8 KiB".into(),
            vec![format!("Bearer {}", "a".repeat(8192)).into_bytes()],
        ),
    ];
    credentials.extend(
        (tokens.bad_access.iter())
            .map(|(name, token)| (name.clone(), vec![format!("Bearer {token}").into_bytes()])),
    );
    // Only what a client can send: a header value has no control bytes
    // (NUL, newline), so such tokens cannot reach the server as one.
    credentials
        .retain(|(_, values)| (values.iter()).all(|v| http::HeaderValue::from_bytes(v).is_ok()));
    for (call_name, call) in &calls {
        for (name, values) in &credentials {
            // 60 KB of metadata is over AUTH_GRPC_MAX_HEADER_BYTES (16
            // KiB): the HTTP/2 layer answers 431 before gRPC runs, which
            // clients see as UNKNOWN (gRPC's mapping of an HTTP status it
            // does not list). Not INTERNAL, and no handler ran.
            let expect = if name == "huge" {
                Unknown
            } else {
                Unauthenticated
            };
            rows.push(case(
                format!("{call_name} credentials {name}"),
                Call::Account(values.clone(), call.clone()),
                expect,
            ));
        }
    }

    let access = tokens.access.as_str();
    let call = |c: AccountCall| with_bearer(access, c);
    // Good credentials, bad fields.
    rows.push(case(
        "GetAccount with good credentials",
        call(AccountCall::GetAccount),
        Ok,
    ));
    for (name, size, token, expect) in [
        ("page_size -1", -1, String::new(), InvalidArgument),
        ("page_size MIN", i32::MIN, String::new(), InvalidArgument),
        ("page_size MAX", i32::MAX, String::new(), Ok),
        ("page_size 0", 0, String::new(), Ok),
        ("page_token garbage", 0, "garbage!".into(), InvalidArgument),
        ("page_token padded", 0, "AAAA====".into(), InvalidArgument),
        ("page_token short", 0, "AAAA".into(), InvalidArgument),
        ("page_token NUL", 0, "\0".into(), InvalidArgument),
        ("page_token U+0085", 0, "\u{85}".into(), InvalidArgument),
        ("page_token RLO", 0, "\u{202e}AAAA".into(), InvalidArgument),
        ("page_token 34 x", 0, "x".repeat(34), InvalidArgument),
        // Well formed, but a time PostgreSQL cannot hold (year -5000).
        (
            "page_token year -5000",
            0,
            "AfzyZyplagAA_____________________w".into(),
            InvalidArgument,
        ),
        ("page_token 60 KiB", 0, "A".repeat(60_000), InvalidArgument),
        ("page_token 70 KiB", 0, "A".repeat(70_000), OutOfRange),
        (
            "page_token of another version",
            0,
            b64(&[2u8; 25]),
            InvalidArgument,
        ),
    ] {
        rows.push(case(
            format!("ListSessions {name}"),
            call(AccountCall::ListSessions(size, token)),
            expect,
        ));
    }
    for (name, id, expect) in [
        ("empty", String::new(), InvalidArgument),
        ("not a uuid", "not-a-uuid".into(), InvalidArgument),
        ("NUL", "\0".into(), InvalidArgument),
        (
            "control",
            format!("{}\n", uuid::Uuid::now_v7()),
            InvalidArgument,
        ),
        (
            "padded",
            format!(" {}", uuid::Uuid::now_v7()),
            InvalidArgument,
        ),
        ("60 KiB", "a".repeat(60_000), InvalidArgument),
        ("70 KiB", "a".repeat(70_000), OutOfRange),
        ("unknown", uuid::Uuid::now_v7().to_string(), NotFound),
        ("nil", uuid::Uuid::nil().to_string(), NotFound),
    ] {
        rows.push(case(
            format!("RevokeSession session_id {name}"),
            call(AccountCall::RevokeSession(id)),
            expect,
        ));
    }
    let change = |current: &str, new: String| AccountCall::ChangePassword(current.into(), new);
    let right = "newbie's password";
    let long = "p".repeat(60_000);
    for (name, current, new, expect) in [
        ("new common", right, "password".to_owned(), InvalidArgument),
        ("new short", right, "short".into(), InvalidArgument),
        (
            "new the email",
            right,
            "newbie@example.com".into(),
            InvalidArgument,
        ),
        ("new same as current", right, right.into(), InvalidArgument),
        ("new NUL", right, "good\0password".into(), InvalidArgument),
        (
            "new U+009F",
            right,
            "good\u{9f}password".into(),
            InvalidArgument,
        ),
        ("new 73 bytes", right, "A".repeat(73), InvalidArgument),
        ("new 60 KiB", right, "p".repeat(60_000), InvalidArgument),
        ("new blank", right, " ".repeat(9), InvalidArgument),
        (
            "current NUL",
            "a\0b",
            "a new password".into(),
            InvalidArgument,
        ),
        (
            "current ESC",
            "a\u{1b}b",
            "a new password".into(),
            InvalidArgument,
        ),
        ("both bad", "\0", "\0".into(), InvalidArgument),
        (
            "current wrong",
            "wrong password",
            "a new password".into(),
            Unauthenticated,
        ),
        (
            "current empty",
            "",
            "a new password".into(),
            Unauthenticated,
        ),
        (
            "current 60 KiB",
            long.as_str(),
            "a new password".into(),
            Unauthenticated,
        ),
        ("70 KiB", right, "p".repeat(70_000), OutOfRange),
    ] {
        rows.push(case(
            format!("ChangePassword {name}"),
            call(change(current, new)),
            expect,
        ));
    }
    for (name, password, expect) in [
        ("NUL", "a\0b".to_owned(), InvalidArgument),
        ("DEL", "a\u{7f}b".into(), InvalidArgument),
        ("wrong", "wrong password".into(), Unauthenticated),
        ("empty", String::new(), Unauthenticated),
        ("60 KiB", "p".repeat(60_000), Unauthenticated),
        ("70 KiB", "p".repeat(70_000), OutOfRange),
    ] {
        rows.push(case(
            format!("DeleteAccount password {name}"),
            call(AccountCall::DeleteAccount(password)),
            expect,
        ));
    }

    // Login's device name: at most 64 characters, no control, invisible or
    // separator characters but the ASCII space; empty is none.
    for (name, device, expect) in [
        ("empty", String::new(), Ok),
        ("spaces only", "   ".into(), Ok),
        ("padded", "  phone  ".into(), Ok),
        ("64 chars", "d".repeat(64), Ok),
        ("64 flags", "🇫🇷".repeat(64), Ok),
        ("64 accented", "e\u{301}".repeat(64), Ok),
        ("65 chars", "d".repeat(65), InvalidArgument),
        ("65 flags", "🇫🇷".repeat(65), InvalidArgument),
        ("2 KiB", "d".repeat(2048), InvalidArgument),
        ("60 KiB", "d".repeat(60_000), InvalidArgument),
        ("70 KiB", "d".repeat(70_000), OutOfRange),
    ] {
        rows.push(case(
            format!("login device_name {name}"),
            login_device(device),
            expect,
        ));
    }
    for c in [
        '\0', '\u{1}', '\t', '\n', '\r', '\u{1b}', '\u{7f}', '\u{85}', '\u{9f}', '\u{200b}',
        '\u{200d}', '\u{202e}', '\u{2066}', '\u{feff}', '\u{a0}', '\u{3000}', '\u{2028}',
        '\u{2029}', '\u{3164}', '\u{2800}', '\u{fe0f}',
    ] {
        let n = c as u32;
        rows.push(case(
            format!("login device_name U+{n:04X}"),
            login_device(format!("my{c}phone")),
            InvalidArgument,
        ));
        rows.push(case(
            format!("login device_name U+{n:04X} at the end"),
            login_device(format!("my phone{c}")),
            InvalidArgument,
        ));
    }
}

#[tokio::test]
async fn hundreds_of_hostile_requests_get_their_status_and_never_internal() {
    let (key_file, der) = write_key_file();
    let app = TestApp::spawn_with(|c| {
        c.tokens.signing_key_file = Some(key_file.clone());
        c.throttle.login_max_failures_per_client = 100_000;
        c.throttle.login_max_failures_per_account = 100_000;
    })
    .await;
    app.register("newbie@example.com", "newbie's password")
        .await;
    let tokens = app.login("newbie@example.com", "newbie's password").await;
    let kid = parts(&tokens.refresh_token).0["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    // Credentials that were good once: a session logged out, an account
    // deleted.
    let revoked = app.login("newbie@example.com", "newbie's password").await;
    app.client
        .clone()
        .logout(LogoutRequest {
            refresh_token: revoked.refresh_token.clone(),
            scope: LogoutScope::Session as i32,
        })
        .await
        .unwrap();
    app.register("gone@example.com", "gone's password").await;
    let gone = app.login("gone@example.com", "gone's password").await;
    app.account
        .clone()
        .delete_account(realchat_testkit::app::bearer(
            DeleteAccountRequest {
                password: "gone's password".into(),
            },
            &gone.access_token,
        ))
        .await
        .unwrap();
    let mut bad_access = bad_tokens(
        &tokens.access_token,
        "at+jwt",
        &tokens.refresh_token,
        "rt+jwt",
        &kid,
        &der,
    );
    bad_access.extend([
        ("revoked session".into(), revoked.access_token.clone()),
        ("deleted account".into(), gone.access_token.clone()),
    ]);
    let bad = Tokens {
        bad: bad_tokens(
            &tokens.refresh_token,
            "rt+jwt",
            &tokens.access_token,
            "at+jwt",
            &kid,
            &der,
        ),
        bad_access,
        access: tokens.access_token.clone(),
    };
    let cases = cases(&bad);
    assert!(cases.len() >= 200, "only {} cases", cases.len());
    eprintln!("{} bad-input cases", cases.len());

    let mut client = app.client.clone();
    let mut failures = Vec::new();
    for case in &cases {
        let result = match case.call.clone() {
            Call::Register(email, password) => client
                .register(RegisterRequest { email, password })
                .await
                .map(|_| ()),
            Call::Login(email, password, device_name) => client
                .login(LoginRequest {
                    email,
                    password,
                    device_name,
                })
                .await
                .map(|_| ()),
            Call::Account(values, call) => account_call(&app, values, call).await,
            Call::Refresh(refresh_token) => client
                .refresh(RefreshRequest { refresh_token })
                .await
                .map(|_| ()),
            Call::Logout(refresh_token) => client
                .logout(LogoutRequest {
                    refresh_token,
                    scope: 0,
                })
                .await
                .map(|_| ()),
            Call::Raw(method, body) => crate::wire::send_raw(&app, method, body).await,
            Call::Framed(method, body) => crate::wire::send_framed(&app, method, body).await,
        };
        let code = result.as_ref().err().map_or(Code::Ok, tonic::Status::code);
        if code != case.expect {
            failures.push(format!(
                "{}: expected {:?}, got {:?}",
                case.name,
                case.expect,
                result.as_ref().err()
            ));
        }
        if let Err(status) = &result {
            assert_ne!(status.code(), Code::Internal, "{}: INTERNAL", case.name);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Healthy afterwards: SERVING, and the real session still works.
    app.account
        .clone()
        .get_account(realchat_testkit::app::bearer(
            GetAccountRequest {},
            &tokens.access_token,
        ))
        .await
        .expect("the real access token still works");
    let status = HealthClient::new(app.channel().await)
        .check(HealthCheckRequest {
            service: "realchat.auth.v1.AuthApi".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, tonic_health::ServingStatus::Serving as i32);
    client
        .refresh(RefreshRequest {
            refresh_token: tokens.refresh_token.clone(),
        })
        .await
        .expect("the real refresh token still works");
    app.stop().await;
    std::fs::remove_file(key_file).unwrap();
}

/// Sends one AccountApi call with `authorization` set to `values`, each its
/// own field.
async fn account_call(
    app: &TestApp,
    values: Vec<Vec<u8>>,
    call: AccountCall,
) -> Result<(), tonic::Status> {
    fn request<T>(message: T, values: &[Vec<u8>]) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        for value in values {
            request.metadata_mut().append(
                "authorization",
                tonic::metadata::MetadataValue::try_from(value.as_slice()).unwrap(),
            );
        }
        request
    }
    let mut client = app.account.clone();
    let values = values.as_slice();
    match call {
        AccountCall::GetAccount => client
            .get_account(request(GetAccountRequest {}, values))
            .await
            .map(|_| ()),
        AccountCall::ListSessions(page_size, page_token) => client
            .list_sessions(request(
                ListSessionsRequest {
                    page_size,
                    page_token,
                },
                values,
            ))
            .await
            .map(|_| ()),
        AccountCall::RevokeSession(session_id) => client
            .revoke_session(request(RevokeSessionRequest { session_id }, values))
            .await
            .map(|_| ()),
        AccountCall::ChangePassword(current_password, new_password) => client
            .change_password(request(
                ChangePasswordRequest {
                    current_password,
                    new_password,
                },
                values,
            ))
            .await
            .map(|_| ()),
        AccountCall::DeleteAccount(password) => client
            .delete_account(request(DeleteAccountRequest { password }, values))
            .await
            .map(|_| ()),
    }
}
