//! Sensitive field names: `apiKey`, `API-KEY`, `x_api_key`, `user_password`
//! all hit; `max_tokens` and `company` do not.

/// Matches field names against normalised terms on word boundaries.
#[derive(Debug, Clone)]
pub(crate) struct FieldMatcher {
    /// Terms, lower-case alphanumerics only (`api_key` → `apikey`).
    terms: Vec<Vec<u8>>,
}

impl FieldMatcher {
    pub(crate) fn new<S: AsRef<str>>(names: &[S]) -> Self {
        let mut terms: Vec<Vec<u8>> = names
            .iter()
            .map(|n| {
                n.as_ref()
                    .bytes()
                    .filter(u8::is_ascii_alphanumeric)
                    .map(|b| b.to_ascii_lowercase())
                    .collect::<Vec<u8>>()
            })
            .filter(|t| !t.is_empty())
            .collect();
        terms.sort();
        terms.dedup();
        Self { terms }
    }

    /// A name is sensitive when a run of its whole words spells a term.
    /// Words break at non-alphanumerics, lower→upper case changes
    /// (`apiKey`), the last capital of an acronym (`APIKey`) and
    /// letter↔digit changes.
    pub(crate) fn is_sensitive(&self, name: &str) -> bool {
        if self.terms.is_empty() {
            return false;
        }
        let mut buf = [0u8; 64];
        let mut starts = 0u128; // bit i: a word starts at buf[i]; bit n: end
        let mut n = 0;
        let raw = name.as_bytes();
        let mut prev: u8 = 0;
        for (i, &b) in raw.iter().enumerate() {
            if !b.is_ascii_alphanumeric() {
                prev = 0;
                continue;
            }
            if n == buf.len() {
                return self.is_sensitive_slow(name);
            }
            let next = raw.get(i + 1).copied().unwrap_or(0);
            let boundary = prev == 0
                || (prev.is_ascii_lowercase() && b.is_ascii_uppercase())
                || (prev.is_ascii_uppercase()
                    && b.is_ascii_uppercase()
                    && next.is_ascii_lowercase())
                || (prev.is_ascii_digit() != b.is_ascii_digit());
            if boundary {
                starts |= 1 << n;
            }
            buf[n] = b.to_ascii_lowercase();
            n += 1;
            prev = b;
        }
        starts |= 1 << n;
        self.matches(&buf[..n], starts)
    }

    fn matches(&self, word: &[u8], starts: u128) -> bool {
        let n = word.len();
        (0..n).filter(|i| starts & (1 << i) != 0).any(|i| {
            self.terms.iter().any(|t| {
                let end = i + t.len();
                end <= n && starts & (1 << end) != 0 && &word[i..end] == t.as_slice()
            })
        })
    }

    fn is_sensitive_slow(&self, name: &str) -> bool {
        // Very long names: check each 64-byte-or-shorter segment separated
        // by non-alphanumerics, plus the plain containment of a term as a
        // separate word.
        name.split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|s| !s.is_empty())
            .any(|s| s.len() < 64 && self.is_sensitive(s))
            || self
                .terms
                .iter()
                .any(|t| name.to_ascii_lowercase().as_bytes() == t.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masker::DEFAULT_SENSITIVE_FIELDS;

    #[test]
    fn names() {
        let m = FieldMatcher::new(DEFAULT_SENSITIVE_FIELDS);
        for yes in [
            "password",
            "Password",
            "PASSWORD",
            "user_password",
            "passwordHash",
            "apiKey",
            "api_key",
            "API-KEY",
            "x-api-key",
            "APIKey",
            "apikey",
            "access_token",
            "refreshToken",
            "client_secret",
            "ssn",
            "socialSecurity",
            "social_security_number",
            "creditCard",
            "credit-card-number",
            "cvv",
            "pan",
            "panNumber",
            "aadhaar",
            "passport_no",
            "drivers_license",
            "token",
        ] {
            assert!(m.is_sensitive(yes), "{yes} should be sensitive");
        }
        for no in [
            "max_tokens",
            "company",
            "expand",
            "panel",
            "name",
            "email",
            "tokenizer",
            "secretary",
            "",
            "passwords_count_x",
        ] {
            assert!(!m.is_sensitive(no), "{no} should not be sensitive");
        }
        let long = format!("{}_password", "a".repeat(100));
        assert!(m.is_sensitive(&long));
    }
}
