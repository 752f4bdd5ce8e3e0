//! Check digits: Luhn (cards), Verhoeff (Aadhaar), ISO 7064 mod-97 (IBAN).
//!
//! Each function looks only at ASCII digits / alphanumerics and skips the
//! separators (space, dash) a match may contain.

/// Luhn check over the ASCII digits of `s` (other bytes are skipped).
#[must_use]
pub fn luhn(s: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut double = false;
    let mut n = 0usize;
    for &b in s.iter().rev() {
        if !b.is_ascii_digit() {
            continue;
        }
        let mut d = u32::from(b - b'0');
        if double {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        double = !double;
        n += 1;
    }
    n > 1 && sum.is_multiple_of(10)
}

const VERHOEFF_D: [[u8; 10]; 10] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
    [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
    [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
    [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
    [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
    [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
];

const VERHOEFF_P: [[u8; 10]; 8] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
    [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
    [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
    [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
    [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
];

/// Verhoeff check over the ASCII digits of `s` (other bytes are skipped).
#[must_use]
pub fn verhoeff(s: &[u8]) -> bool {
    let mut c = 0u8;
    let mut n = 0usize;
    for &b in s.iter().rev() {
        if !b.is_ascii_digit() {
            continue;
        }
        let d = usize::from(b - b'0');
        c = VERHOEFF_D[usize::from(c)][usize::from(VERHOEFF_P[n % 8][d])];
        n += 1;
    }
    n > 1 && c == 0
}

/// IBAN check (ISO 13616 / ISO 7064 mod 97-10) over the ASCII alphanumerics
/// of `s` (spaces are skipped). Also checks the length (15 to 34) and shape
/// (two letters, two digits).
#[must_use]
pub fn iban_mod97(s: &[u8]) -> bool {
    let mut chars = [0u8; 34];
    let mut n = 0usize;
    for &b in s {
        if b == b' ' {
            continue;
        }
        if !b.is_ascii_alphanumeric() || n == chars.len() {
            return false;
        }
        chars[n] = b.to_ascii_uppercase();
        n += 1;
    }
    if n < 15
        || !chars[0].is_ascii_uppercase()
        || !chars[1].is_ascii_uppercase()
        || !chars[2].is_ascii_digit()
        || !chars[3].is_ascii_digit()
    {
        return false;
    }
    let mut rem = 0u32;
    for &b in chars[4..n].iter().chain(&chars[..4]) {
        if b.is_ascii_digit() {
            rem = (rem * 10 + u32::from(b - b'0')) % 97;
        } else {
            rem = (rem * 100 + u32::from(b - b'A') + 10) % 97;
        }
    }
    rem == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_cases() {
        assert!(luhn(b"4111111111111111"));
        assert!(luhn(b"4111 1111 1111 1111"));
        assert!(luhn(b"5500-0000-0000-0004"));
        assert!(luhn(b"378282246310005"));
        assert!(!luhn(b"4111111111111112"));
        assert!(!luhn(b"1234567812345678"));
        assert!(!luhn(b"0"));
    }

    #[test]
    fn verhoeff_cases() {
        assert!(verhoeff(b"2345 6789 0124"));
        assert!(verhoeff(b"236"));
        assert!(!verhoeff(b"2345 6789 0123"));
        assert!(!verhoeff(b"234567890125"));
    }

    #[test]
    fn iban_cases() {
        assert!(iban_mod97(b"DE89370400440532013000"));
        assert!(iban_mod97(b"DE89 3704 0044 0532 0130 00"));
        assert!(iban_mod97(b"GB82WEST12345698765432"));
        assert!(!iban_mod97(b"DE89370400440532013001"));
        assert!(!iban_mod97(b"DE8937040044"));
        assert!(!iban_mod97(b"1289370400440532013000"));
    }
}
