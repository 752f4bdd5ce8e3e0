//! Every built-in pattern: positive and negative cases, and the exact masks
//! users expect.

use palisade_pii::{CustomPattern, Operator, PatternKind, PiiMasker};

fn m(s: &str) -> String {
    PiiMasker::new().mask_str(s).into_owned()
}

fn untouched(s: &str) {
    assert_eq!(m(s), s, "{s:?} must not be masked");
}

#[test]
fn spec_examples_exactly() {
    assert_eq!(m("9876543210"), "98******10");
    assert_eq!(m("user@example.com"), "us***@example.com");
    assert_eq!(m("4111111111111111"), "4111********1111");
    assert_eq!(m("ABCDE1234F"), "ABC*****4F");
    assert_eq!(m("2345 6789 0124"), "2345 **** 0124");
}

#[test]
fn phone() {
    assert_eq!(m("call 98765 43210 now"), "call 98*** ***10 now");
    assert_eq!(m("+91 98765 43210"), "+91 ***** ***10");
    assert_eq!(m("+1 (415) 555-2671"), "+1 (4**) ***-**71");
    assert_eq!(m("+14155552671"), "+14*******71");
    assert_eq!(m("(415) 555-2671"), "(41*) ***-**71");
    assert_eq!(m("415-555-2671"), "41*-***-**71");
    assert_eq!(m("tel:+44 20 7946 0958."), "tel:+44 ** **** **58.");
    // Negatives: too short, dates, order ids not starting 6-9, versions.
    untouched("order 1234567890");
    untouched("2023-01-15");
    untouched("v98765");
    untouched("+12 34");
    untouched("x9876543210");
}

#[test]
fn email() {
    assert_eq!(m("a@bc.io"), "***@bc.io");
    assert_eq!(m("ab@bc.io"), "a***@bc.io");
    assert_eq!(
        m("<john.doe+tag@mail.example.co.uk>"),
        "<jo***@mail.example.co.uk>"
    );
    untouched("user@localhost");
    untouched("@handle");
    untouched("a@b");
}

#[test]
fn card_luhn() {
    assert_eq!(m("4111 1111 1111 1111"), "4111 **** **** 1111");
    assert_eq!(m("5500-0000-0000-0004"), "5500-****-****-0004");
    assert_eq!(m("amex 378282246310005."), "amex 3782*******0005.");
    // Trailing group: longest Luhn-valid prefix on a group boundary.
    assert_eq!(m("4111 1111 1111 1111 20"), "4111 **** **** 1111 20");
    // Failing Luhn: order ids are left alone.
    untouched("4111111111111112");
    untouched("order 1234567812345678");
    untouched("1234 5678 9012 3456");
    // Too short / too long.
    untouched("411111111111");
    untouched("41111111111111111111111");
}

#[test]
fn card_without_checksums() {
    let masker = PiiMasker::builder()
        .validate_checksums(false)
        .build()
        .unwrap();
    assert_eq!(masker.mask_str("1234567812345678"), "1234********5678");
    assert_eq!(masker.mask_str("2345 6789 0123"), "2345 **** 0123");
}

#[test]
fn aadhaar_verhoeff() {
    assert_eq!(m("aadhaar: 234567890124"), "aadhaar: 2345****0124");
    assert_eq!(m("2345-6789-0124"), "2345-****-0124");
    untouched("2345 6789 0123");
    untouched("1345 6789 0124"); // cannot start with 0 or 1
    // Part of a longer group run (a 16-digit card that fails Luhn).
    untouched("2345 6789 0124 5678");
}

#[test]
fn pan() {
    assert_eq!(m("PAN: ABCDE1234F."), "PAN: ABC*****4F.");
    untouched("ABCDE1234");
    untouched("abcde1234f");
    untouched("XABCDE1234F");
}

#[test]
fn ssn() {
    assert_eq!(m("ssn 123-45-6789"), "ssn ***-**-6789");
    untouched("000-12-3456");
    untouched("666-12-3456");
    untouched("912-12-3456");
    untouched("123-00-4567");
    untouched("123-45-0000");
    untouched("123456789");
}

#[test]
fn ipv4() {
    assert_eq!(m("from 192.168.1.23:80"), "from 192.168.*.*:80");
    untouched("256.1.1.1");
    untouched("version 1.2.3.4.5");
    untouched("1.2.3");
}

#[test]
fn ipv6() {
    assert_eq!(
        m("peer 2001:db8:85a3::8a2e:370:7334 ok"),
        "peer 2001:db8:*::*:*:* ok"
    );
    assert_eq!(m("[fe80::1]"), "[fe80::*]");
    assert_eq!(m("::1"), "::*");
    untouched("std::io::Result");
    untouched("12:30:45");
    untouched("00:1A:2B:3C:4D:5E");
    untouched("a:b");
}

#[test]
fn iban_mod97() {
    assert_eq!(m("DE89370400440532013000"), "DE89**************3000");
    assert_eq!(
        m("IBAN DE89 3704 0044 0532 0130 00 THEN"),
        "IBAN DE89 **** **** **** **30 00 THEN"
    );
    assert_eq!(m("GB82WEST12345698765432"), "GB82**************5432");
    untouched("DE89370400440532013001");
    untouched("DE8937040044");
}

#[test]
fn jwt() {
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    assert_eq!(m(&format!("t={jwt};")), "t=eyJ***.***.***;");
    untouched("eyJ.x.y");
    untouched("eyJhbGciOiJIUzI1NiJ9");
}

#[test]
fn bearer() {
    assert_eq!(
        m("Authorization: Bearer abc123def456ghi"),
        "Authorization: Bearer ***"
    );
    assert_eq!(m("bearer  tok_1234567890"), "bearer  ***");
    // The JWT behind "Bearer" is covered by the (leftmost) bearer match.
    assert_eq!(
        m("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig"),
        "Bearer ***"
    );
    untouched("the bearer of bad news");
}

#[test]
fn api_keys() {
    assert_eq!(m("key sk_live_4eC39HqLyjWDarjtT1zdp7dc"), "key sk_live_***");
    assert_eq!(m("sk-proj-abcdefghijklmnopqrstuvwxyz123456"), "sk-proj-***");
    assert_eq!(m("AKIAIOSFODNN7EXAMPLE"), "AKIA***");
    assert_eq!(m("ghp_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghij"), "ghp_***");
    assert_eq!(m("AIzaSyA-1234567890abcdefghijklmnopqrstu"), "AIza***");
    untouched("sk-short");
    untouched("task-force-alpha");
}

#[test]
fn disabling_and_operators() {
    let masker = PiiMasker::builder()
        .disable(PatternKind::Phone)
        .operator(PatternKind::Card, Operator::Redact)
        .build()
        .unwrap();
    assert_eq!(masker.mask_str("9876543210"), "9876543210");
    assert_eq!(masker.mask_str("4111111111111111"), "***REDACTED***");
    let hashed = PiiMasker::builder()
        .operator(PatternKind::Email, Operator::Hash)
        .hash_key("secret")
        .build()
        .unwrap();
    let a = hashed.mask_str("a@bc.io").into_owned();
    let b = hashed.mask_str("x a@bc.io").into_owned();
    let c = hashed.mask_str("b@bc.io").into_owned();
    assert_eq!(format!("x {a}"), b);
    assert_ne!(a, c);
    assert!(!a.contains("a@bc"));
    assert_eq!(a.len(), "[email:]".len() + 16);
    let other_key = PiiMasker::builder()
        .operator(PatternKind::Email, Operator::Hash)
        .hash_key("other")
        .build()
        .unwrap();
    assert_ne!(other_key.mask_str("a@bc.io"), a);
    assert!(
        PiiMasker::builder()
            .operator(PatternKind::Email, Operator::Hash)
            .build()
            .is_err()
    );
}

#[test]
fn custom_patterns() {
    let masker = PiiMasker::builder()
        .custom_pattern(CustomPattern::new("employee", r"EMP-[0-9]{6}"))
        .custom_pattern(CustomPattern::new("ticket", r"TCK[0-9]+").operator(Operator::Redact))
        .build()
        .unwrap();
    assert_eq!(
        masker.mask_str("EMP-123456 TCK42"),
        "EM*-****56 ***REDACTED***"
    );
    assert!(
        PiiMasker::builder()
            .custom_pattern(CustomPattern::new("bad", "("))
            .build()
            .is_err()
    );
    assert!(
        PiiMasker::builder()
            .custom_pattern(CustomPattern::new("empty", "x*"))
            .build()
            .is_err()
    );
    assert!(masker.pattern_names().contains(&"employee"));
}

#[test]
fn unicode_text_is_safe() {
    assert_eq!(m("नमस्ते 9876543210 ✓"), "नमस्ते 98******10 ✓");
    assert_eq!(m("émail: josé@exämple.com"), "émail: josé@exämple.com");
    assert_eq!(m("ü user@example.com ü"), "ü us***@example.com ü");
}

#[test]
fn bytes() {
    let masker = PiiMasker::new();
    let input = b"\xff\xfe card 4111111111111111 \xff";
    assert_eq!(
        &*masker.mask_bytes(input),
        b"\xff\xfe card 4111********1111 \xff"
    );
    assert!(matches!(
        masker.mask_bytes(b"nothing"),
        std::borrow::Cow::Borrowed(_)
    ));
}
