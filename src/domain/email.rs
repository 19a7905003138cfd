use std::fmt;

use icu_properties::CodePointSetData;
use icu_properties::props::SoftDotted;
use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
use unicode_normalization::UnicodeNormalization as _;
use unicode_normalization::char::canonical_combining_class;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
use unicode_security::{
    GeneralSecurityProfile as _, RestrictionLevel, RestrictionLevelDetection as _,
};

use super::{MAX_RAW_FIELD_BYTES, has_control_char, invisible_or_separator, nfkc};

/// Longest accepted email address, in UTF-8 bytes (RFC 5321 §4.5.3.1.3 path
/// limit less the angle brackets).
pub const MAX_EMAIL_BYTES: usize = 254;

/// An email address in its normalised form: trimmed, NFKC, lower-cased, the
/// domain mapped by IDNA (UTS #46) and kept in its Unicode form, at most
/// [`MAX_EMAIL_BYTES`] bytes, and a bare mailbox as the `email_address`
/// crate parses it (RFC 5322 addr-spec, with RFC 6531 non-ASCII), less the
/// forms no user needs: display names, quoted local parts, domain literals,
/// single-label domains and all-numeric top-level labels. Two inputs that
/// differ only in case, surrounding spaces, Unicode normalisation form or
/// the A-label/U-label spelling of the domain parse to equal values, which
/// is what the `users.email` unique index compares; look-alikes are caught
/// by [`Email::lookalike_key`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

/// Why a string is not an [`Email`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    /// Nothing left after trimming.
    #[error("email must not be empty")]
    Empty,
    /// NUL or another control character (Cc), anywhere.
    #[error("email must not contain NUL or control characters")]
    ControlCharacter,
    /// An invisible format character (Cf), anywhere.
    #[error("email must not contain invisible formatting characters")]
    FormatCharacter,
    /// Another character that prints as nothing or as blank space, anywhere:
    /// a Default_Ignorable_Code_Point (UAX #44), a separator other than the
    /// ASCII space (Zs, Zl, Zp), or the blank Braille pattern.
    #[error("email must not contain invisible or separator characters")]
    InvisibleOrSeparator,
    /// Over [`MAX_EMAIL_BYTES`] after normalisation, or over
    /// [`MAX_RAW_FIELD_BYTES`] before it.
    #[error("email must be at most {MAX_EMAIL_BYTES} bytes")]
    TooLong,
    /// Not a bare mailbox address, or a domain that IDNA (UTS #46) refuses,
    /// that has no top-level label or whose top-level label is all digits.
    #[error("email is not a valid address")]
    Invalid,
    /// A dot-separated part of the local part or of the domain holds a
    /// character outside UTS #39's identifier profile (§3.1): emoji,
    /// symbols, letters of scripts not in common use.
    #[error("email must not contain emoji, symbols or letters of scripts not in common use")]
    RestrictedCharacter,
    /// A dot-separated part of the local part or of the domain mixes scripts
    /// beyond UTS #39's Highly Restrictive level (§5.2), e.g. a Cyrillic `а`
    /// among Latin letters.
    #[error("email must not mix scripts, such as Latin and Cyrillic, within one part")]
    MixedScripts,
}

impl Email {
    /// Normalises and validates `raw`.
    ///
    /// # Errors
    /// [`EmailError`] naming the first rule `raw` breaks. Characters that
    /// would let a look-alike address register as a separate account are
    /// refused anywhere, even in leading or trailing whitespace: control
    /// characters (Cc), format characters (Cf: zero-width space, soft hyphen,
    /// BOM, bidirectional overrides), every other Default_Ignorable_Code_Point
    /// (UAX #44: Hangul fillers, variation selectors, the combining grapheme
    /// joiner) and every separator but the ASCII space (Zs, Zl, Zp). The
    /// domain's ideographic and fullwidth full stops are read as '.', as
    /// UTS #46 maps them, before any check; the domain goes through UTS #46
    /// ToASCII (STD3 rules, hyphen checks, DNS lengths) and is kept as
    /// ToUnicode of the result; RFC 3696 §2 rules out an all-numeric
    /// top-level label, so `ned@127.0.0.1` is refused. Each
    /// dot-separated part of the local part and of the domain must be at most
    /// Highly Restrictive (UTS #39 §5.2): one script, or Latin with Han and
    /// Japanese kana, Han and Bopomofo, or Han and Hangul; and, ASCII aside,
    /// hold only characters of UTS #39's identifier profile (§3.1).
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        if raw.len() > MAX_RAW_FIELD_BYTES {
            return Err(EmailError::TooLong);
        }
        if has_control_char(raw) {
            return Err(EmailError::ControlCharacter);
        }
        if raw
            .chars()
            .any(|c| c.general_category() == GeneralCategory::Format)
        {
            return Err(EmailError::FormatCharacter);
        }
        // Checked on the raw input: trimming would hide a trailing U+2028,
        // and NFKC turns a no-break space into a plain one.
        if raw.chars().any(invisible_or_separator) {
            return Err(EmailError::InvisibleOrSeparator);
        }
        // Lower-casing can leave a string that is not NFKC (e.g. U+0130), so
        // normalise on both sides to reach a fixed point.
        let normalised = map_label_separators(nfkc(&nfkc(raw.trim()).to_lowercase()));
        if normalised.is_empty() {
            return Err(EmailError::Empty);
        }
        if normalised.len() > MAX_EMAIL_BYTES {
            return Err(EmailError::TooLong);
        }
        // A bare mailbox only: no display name ("Eve <bob@…>"), no quoted
        // local part, no domain literal ("bob@[127.0.0.1]"), and a domain
        // with a top-level label — forms that would let one mailbox hold
        // several accounts or be no public address at all.
        let options = email_address::Options::default()
            .without_display_text()
            .without_domain_literal()
            .with_required_tld();
        if has_control_char(&normalised)
            || normalised.contains('"')
            || email_address::EmailAddress::parse_with_options(&normalised, options).is_err()
        {
            return Err(EmailError::Invalid);
        }
        // Without quoted local parts the last '@' is the separator.
        let (local, domain) = normalised.rsplit_once('@').ok_or(EmailError::Invalid)?;
        let domain = map_domain(domain)?;
        let address = format!("{local}@{domain}");
        if address.len() > MAX_EMAIL_BYTES {
            return Err(EmailError::TooLong);
        }
        for part in local.split('.').chain(domain.split('.')) {
            check_scripts(part)?;
        }
        Ok(Self(address))
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address as it looks, for the `users.email_key` unique index, so
    /// that a look-alike of a registered address (an all-Cyrillic `аррӏе`
    /// for `apple`) is not a second account: every non-ASCII character is
    /// replaced by its UTS #39 confusable prototype (the §4 skeleton, taken
    /// one character at a time after NFD), and the result is NFC.
    ///
    /// ASCII characters are kept as they are, a deliberate deviation from
    /// the full skeleton, which would also map `1` and `l`, or `rn` and `m`,
    /// to one prototype: mail providers treat those ASCII addresses as
    /// different mailboxes with different owners, so `john1@…` and
    /// `johnl@…` stay two accounts. A non-ASCII stand-in still maps to the
    /// ASCII letter it imitates (the Cyrillic `аррӏе1` gets the key of
    /// `apple1`), and an all-ASCII address is its own key.
    ///
    /// A U+0307 COMBINING DOT ABOVE that prints where the soft dot of an
    /// `i` or `j` was is dropped (Unicode's After_Soft_Dotted), so `KİM`, lower-cased
    /// to `i` + U+0307, has the key of `kim`.
    pub fn lookalike_key(&self) -> String {
        let mut key = String::with_capacity(self.0.len());
        let mut soft_dot = SoftDot::default();
        let mut buf = [0; 4];
        for c in self.0.nfd() {
            if c.is_ascii() {
                soft_dot.push(&mut key, c);
            } else {
                for p in unicode_security::skeleton(c.encode_utf8(&mut buf)) {
                    soft_dot.push(&mut key, p);
                }
            }
        }
        // Prototypes may put combining marks next to each other out of
        // canonical order; NFC reorders them (so equal keys mean canonically
        // equivalent strings) and keeps the stored key readable.
        key.nfc().collect()
    }
}

/// Drops a U+0307 COMBINING DOT ABOVE that prints where a soft dot was, as
/// the prototypes of an address are pushed onto its look-alike key.
///
/// Soft_Dotted characters (PropList.txt: `i`, `j`, Cyrillic `і`, …) are
/// those whose "dot disappears when a diacritic is placed above" (Unicode
/// §7.1); a dot above then stands in for the soft dot, and `i` + U+0307
/// looks like `i`. The test is Unicode's After_Soft_Dotted casing context
/// (§3.13, Table 3-17), under which SpecialCasing.txt drops that same
/// U+0307: a Soft_Dotted character before it, with no character of
/// combining class 0 or 230 (Above) in between. So marks below may
/// intervene (`i` + U+0323 + U+0307), a second dot above still shows, and
/// a dot on `z` or `e` is a letter of its own. It is taken on prototypes,
/// so the dotless `ı` (prototype `i`) with a dot above keys as `i`.
#[derive(Default)]
struct SoftDot {
    /// Whether the key so far ends in the After_Soft_Dotted context.
    after: bool,
}

impl SoftDot {
    fn push(&mut self, key: &mut String, c: char) {
        if CodePointSetData::new::<SoftDotted>().contains(c) {
            self.after = true;
        } else if matches!(canonical_combining_class(c), 0 | 230) {
            let hidden = self.after && c == '\u{307}';
            self.after = false;
            if hidden {
                return;
            }
        }
        key.push(c);
    }
}

/// The full stops other than '.' that separate domain labels (RFC 3490
/// §3.1), which UTS #46's mapping table maps to '.': U+3002 IDEOGRAPHIC FULL
/// STOP, U+FF0E FULLWIDTH FULL STOP and U+FF61 HALFWIDTH IDEOGRAPHIC FULL
/// STOP.
const LABEL_SEPARATORS: [char; 3] = ['\u{3002}', '\u{ff0e}', '\u{ff61}'];

/// `address` with the [`LABEL_SEPARATORS`] after its last '@' mapped to '.',
/// ahead of the syntax check: that check refuses a domain that has no ASCII
/// dot (`example。com`) but passes one that has another (`mail。example.com`)
/// on to IDNA, which maps the stop. Mapped first, both are one domain to both
/// checks. The local part keeps its stops: they are not separators there.
/// (NFKC has already made U+FF0E a '.' and U+FF61 a U+3002; all three are
/// named as UTS #46 names them.)
fn map_label_separators(address: String) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) if domain.contains(LABEL_SEPARATORS) => {
            format!("{local}@{}", domain.replace(LABEL_SEPARATORS, "."))
        }
        _ => address,
    }
}

/// The domain mapped by UTS #46: ToASCII with the strict options (STD3 ASCII
/// rules, CheckHyphens, VerifyDnsLength), then ToUnicode of that A-label
/// form, so `BÜCHER.example`, `bücher.example` and `xn--bcher-kva.example`
/// are one domain. RFC 3696 §2: a top-level label is never all digits, so a
/// dotted IPv4 address is no domain.
fn map_domain(domain: &str) -> Result<String, EmailError> {
    let uts46 = Uts46::new();
    let ascii = uts46
        .to_ascii(
            domain.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::Check,
            DnsLength::Verify,
        )
        .map_err(|_| EmailError::Invalid)?;
    match ascii.rsplit_once('.') {
        Some((_, tld)) if !tld.bytes().all(|b| b.is_ascii_digit()) => {}
        _ => return Err(EmailError::Invalid),
    }
    let (unicode, result) = uts46.to_unicode(ascii.as_bytes(), AsciiDenyList::STD3, Hyphens::Check);
    // ToUnicode of a ToASCII result does not fail; if it ever did, its output
    // holds U+FFFD and must not be stored.
    result.map_err(|_| EmailError::Invalid)?;
    Ok(unicode.into_owned())
}

/// Refuses a part of an address (between dots) above UTS #39's Highly
/// Restrictive level (§5.2): with a non-ASCII character outside the
/// identifier profile, or with letters of scripts that do not go together.
fn check_scripts(part: &str) -> Result<(), EmailError> {
    // An ASCII part is ASCII-only, the lowest level. Asking the crate would
    // put `bob+news` at Unrestricted: the ASCII punctuation the address
    // syntax allows ('+', '!', '#', …) is outside the identifier profile.
    if part.is_ascii() {
        return Ok(());
    }
    if part
        .chars()
        .any(|c| !c.is_ascii() && !c.identifier_allowed())
    {
        return Err(EmailError::RestrictedCharacter);
    }
    // That punctuation belongs to no script, so dropping it leaves the
    // level to the letters and digits.
    let letters: String = part.chars().filter(|c| c.identifier_allowed()).collect();
    if letters.as_str().detect_restriction_level() > RestrictionLevel::HighlyRestrictive {
        return Err(EmailError::MixedScripts);
    }
    Ok(())
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_whitespace_and_compatibility_forms_normalise_to_one_address() {
        let plain = Email::parse("alice@example.com").unwrap();
        assert_eq!(Email::parse("  ALICE@Example.COM ").unwrap(), plain);
        // Fullwidth letters (compatibility characters) fold under NFKC.
        assert_eq!(Email::parse("ａｌｉｃｅ@example.com").unwrap(), plain);
    }

    #[test]
    fn refuses_empty_control_long_and_malformed() {
        assert_eq!(Email::parse("   "), Err(EmailError::Empty));
        assert_eq!(
            Email::parse("a\0@example.com"),
            Err(EmailError::ControlCharacter)
        );
        assert_eq!(
            Email::parse("a@example.com\n"),
            Err(EmailError::ControlCharacter)
        );
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(Email::parse(&long), Err(EmailError::TooLong));
        assert_eq!(Email::parse(&"a".repeat(1 << 20)), Err(EmailError::TooLong));
        for invisible in ["\u{200b}", "\u{ad}", "\u{feff}", "\u{202e}"] {
            assert_eq!(
                Email::parse(&format!("ali{invisible}ce@example.com")),
                Err(EmailError::FormatCharacter)
            );
        }
        assert_eq!(Email::parse("not-an-email"), Err(EmailError::Invalid));
        assert_eq!(Email::parse("a@@example.com"), Err(EmailError::Invalid));
        for other_form in [
            "Eve <bob@example.com>",
            "\"bob\"@example.com",
            "bob@[127.0.0.1]",
            "bob@localhost",
        ] {
            assert_eq!(
                Email::parse(other_form),
                Err(EmailError::Invalid),
                "{other_form}"
            );
        }
    }

    #[test]
    fn invisible_and_separator_characters_are_refused_anywhere() {
        // The ones issue 12 names: Hangul fillers, a variation selector, the
        // combining grapheme joiner, a Khmer inherent vowel, blank Braille,
        // the line and paragraph separators; and other spaces.
        for c in [
            '\u{3164}', '\u{ffa0}', '\u{115f}', '\u{fe0f}', '\u{34f}', '\u{17b4}', '\u{2800}',
            '\u{2028}', '\u{2029}', '\u{a0}', '\u{3000}', '\u{2003}', '\u{202f}',
        ] {
            let n = c as u32;
            for raw in [
                format!("ali{c}ce@example.com"),
                format!("{c}alice@example.com"),
                format!("alice@exa{c}mple.com"),
                format!("alice@example.com{c}"),
            ] {
                assert_eq!(
                    Email::parse(&raw),
                    Err(EmailError::InvisibleOrSeparator),
                    "U+{n:04X} in {raw:?}"
                );
            }
        }
        // The ASCII space is trimmed at the ends and invalid inside.
        assert!(Email::parse(" alice@example.com ").is_ok());
        assert_eq!(Email::parse("ali ce@example.com"), Err(EmailError::Invalid));
    }

    #[test]
    fn the_domain_is_mapped_by_idna_and_kept_in_its_unicode_form() {
        let unicode = Email::parse("bob@bücher.example").unwrap();
        assert_eq!(unicode.as_str(), "bob@bücher.example");
        for other in [
            "bob@xn--bcher-kva.example",
            "bob@XN--BCHER-KVA.example",
            "bob@BÜCHER.example",
            "bob@bu\u{308}cher.example",
        ] {
            assert_eq!(Email::parse(other).as_ref(), Ok(&unicode), "{other}");
        }
        // Refused by ToASCII: a broken A-label, STD3 (underscore), hyphens
        // in the third and fourth position.
        for refused in [
            "bob@xn--abc.example",
            "bob@a_b.example",
            "bob@ab--cd.example",
        ] {
            assert_eq!(Email::parse(refused), Err(EmailError::Invalid), "{refused}");
        }
    }

    #[test]
    fn ideographic_and_fullwidth_full_stops_separate_domain_labels() {
        let plain = Email::parse("bob@example.com").unwrap();
        // U+3002, U+FF0E, U+FF61: the label separators UTS #46 maps to '.',
        // with and without another ASCII dot in the domain.
        for stop in ['\u{3002}', '\u{ff0e}', '\u{ff61}'] {
            let n = stop as u32;
            assert_eq!(
                Email::parse(&format!("bob@example{stop}com")).as_ref(),
                Ok(&plain),
                "U+{n:04X}"
            );
            assert_eq!(
                Email::parse(&format!("bob@mail{stop}example.com"))
                    .unwrap()
                    .as_str(),
                "bob@mail.example.com",
                "U+{n:04X}"
            );
            // One at the end of the domain leaves an empty label.
            assert_eq!(
                Email::parse(&format!("bob@example.com{stop}")),
                Err(EmailError::Invalid),
                "U+{n:04X}"
            );
        }
        // In the local part an ideographic stop is no separator but
        // punctuation outside the identifier profile. (NFKC has made the
        // fullwidth one a '.', and the halfwidth one an ideographic one.)
        for local in ["bob\u{3002}x", "bob\u{ff61}x"] {
            assert_eq!(
                Email::parse(&format!("{local}@example.com")),
                Err(EmailError::RestrictedCharacter),
                "{local}"
            );
        }
    }

    #[test]
    fn domain_literals_and_all_numeric_top_level_labels_are_refused() {
        for refused in [
            "ned@127.0.0.1",
            "t@127.0.0.1",
            "ned@example.123",
            "ned@[127.0.0.1]",
            "ned@localhost",
        ] {
            assert_eq!(Email::parse(refused), Err(EmailError::Invalid), "{refused}");
        }
        assert!(Email::parse("ned@example.c0m").is_ok());
        assert!(Email::parse("ned@127.0.0.1.example").is_ok());
    }

    #[test]
    fn mixed_scripts_within_one_part_are_refused() {
        for mixed in [
            "pаypal@example.com",    // Cyrillic а among Latin letters
            "paypal@exаmple.com",    // the same in a domain label
            "ωmega@example.com",     // Greek ω
            "раy-pal+x@example.com", // across the punctuation
            "jоhn1@example.com",     // Cyrillic о
        ] {
            assert_eq!(
                Email::parse(mixed),
                Err(EmailError::MixedScripts),
                "{mixed}"
            );
        }
        for restricted in ["😀@example.com", "bob@ᎪᏴᏟ.example", "ᎪᏴᏟ@example.com"] {
            assert_eq!(
                Email::parse(restricted),
                Err(EmailError::RestrictedCharacter),
                "{restricted}"
            );
        }
    }

    #[test]
    fn single_script_parts_and_japanese_mixes_are_accepted() {
        for ok in [
            "рома@example.ru",
            "рома2024.иванов@пример.рф",
            "山田たろう@example.jp",
            "yamada山田タロウ@example.jp",
            "amélie.ωμέγα@exämple.com", // one script per part
            "bob+news@example.com",
            "josé+news@example.com",
        ] {
            assert!(Email::parse(ok).is_ok(), "{ok}: {:?}", Email::parse(ok));
        }
    }

    #[test]
    fn parsing_the_normalised_form_gives_it_back() {
        for raw in [
            "  Bob@XN--BCHER-KVA.example ",
            "Ａmélie.ΩΜΈΓΑ@Exämple.com",
            "faß@faß.de",
            "рома@ПРИМЕР.РФ",
        ] {
            let email = Email::parse(raw).unwrap();
            assert_eq!(Email::parse(email.as_str()).as_ref(), Ok(&email), "{raw}");
        }
    }

    #[test]
    fn lookalike_key_maps_non_ascii_stand_ins_and_keeps_ascii() {
        let key = |s: &str| Email::parse(s).unwrap().lookalike_key();
        // All-Cyrillic аррӏе and jоhn1 with a Cyrillic о.
        assert_eq!(key("аррӏе@example.com"), key("apple@example.com"));
        assert_eq!(key("аррӏе@example.com"), "apple@example.com");
        assert_eq!(key("аррӏе1@example.com"), key("apple1@example.com"));
        assert_ne!(key("аррӏе1@example.com"), key("applel@example.com"));
        // ASCII addresses that differ stay different.
        assert_ne!(key("john1@example.com"), key("johnl@example.com"));
        assert_ne!(key("rn@example.com"), key("m@example.com"));
        assert_eq!(key("john1@example.com"), "john1@example.com");
        // Letters that only look alike to a careless eye stay apart.
        assert_ne!(key("josé@example.com"), key("jose@example.com"));
        assert_eq!(key("bob@bücher.example"), "bob@bücher.example");
    }

    #[test]
    fn lookalike_key_drops_a_dot_above_that_a_soft_dot_hides() {
        let key = |s: &str| Email::parse(s).unwrap().lookalike_key();
        // `KİM` lower-cases to i + U+0307, which renders as `kim`.
        assert_eq!(
            Email::parse("KİM@example.org").unwrap().as_str(),
            "ki\u{307}m@example.org"
        );
        assert_eq!(key("KİM@example.org"), "kim@example.org");
        assert_eq!(key("ki\u{307}m@example.org"), key("kim@example.org"));
        assert_eq!(key("j\u{307}ohn@example.org"), key("john@example.org"));
        assert_eq!(key("a@KİM-lookalike.org"), key("a@kim-lookalike.org"));
        // A mark below sorts before the dot above and does not stop it from
        // merging with the soft dot: ị + U+0307 looks like ị.
        assert_eq!(
            key("ki\u{323}\u{307}m@example.org"),
            key("ki\u{323}m@example.org")
        );
        // Dotless ı takes its dot back from U+0307 and looks like i. (The
        // soft-dotted Cyrillic і cannot carry U+0307, which is not of the
        // Cyrillic script: that mix is refused.)
        assert_eq!(key("\u{131}\u{307}@example.org"), key("i@example.org"));
        assert_eq!(
            Email::parse("\u{456}\u{307}@example.org"),
            Err(EmailError::MixedScripts)
        );
        // Only the first dot above merges; a second one shows, and a dot
        // above elsewhere is a letter of its own (ż, ė).
        assert_ne!(key("ki\u{307}\u{307}m@example.org"), key("kim@example.org"));
        assert_ne!(key("ki\u{301}m@example.org"), key("kim@example.org"));
        assert_ne!(key("żaba@example.org"), key("zaba@example.org"));
        assert_ne!(key("ė@example.org"), key("e@example.org"));
    }
}
