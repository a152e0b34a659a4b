//! Device identifiers: MAC address (the device id in MQTT topics), IMEI and
//! ICCID, each checked and brought to one spelling.

/// Why an identifier is not valid; the text is shown to the person importing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    #[error("MAC address {0:?} is not six hex octets")]
    Mac(String),
    #[error("IMEI {0:?} is not 15 digits")]
    ImeiFormat(String),
    #[error("IMEI {0:?} fails its check digit")]
    ImeiCheck(String),
    #[error("ICCID {0:?} is not 19 or 20 digits")]
    IccidFormat(String),
    #[error("ICCID {0:?} fails its check digit")]
    IccidCheck(String),
}

/// A MAC address as `00-11-22-33-44-55` (lower-case hex, dashes), from
/// colons, dashes, dots (`0011.2233.4455`) or bare hex.
pub fn normalize_mac(input: &str) -> Result<String, IdentifierError> {
    let trimmed = input.trim();
    let groups: Vec<&str> = trimmed.split([':', '-', '.']).collect();
    let shape_ok = match groups.len() {
        1 => trimmed.len() == 12,
        // 00:11:22:33:44:55 or 00-11-22-33-44-55, one kind of separator.
        6 => {
            groups.iter().all(|g| g.len() == 2)
                && (!trimmed.contains('.'))
                && !(trimmed.contains(':') && trimmed.contains('-'))
        }
        // 0011.2233.4455
        3 => {
            groups.iter().all(|g| g.len() == 4)
                && trimmed
                    .chars()
                    .filter(|c| !c.is_ascii_hexdigit())
                    .all(|c| c == '.')
        }
        _ => false,
    };
    let hex: String = groups.concat();
    if !shape_ok || hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(IdentifierError::Mac(input.to_owned()));
    }
    let lower = hex.to_ascii_lowercase();
    let octets: Vec<&str> = (0..6).map(|i| &lower[i * 2..i * 2 + 2]).collect();
    Ok(octets.join("-"))
}

/// Luhn check over a string of ASCII digits.
pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, c) in digits.bytes().rev().enumerate() {
        let mut d = u32::from(c - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

/// An IMEI: 15 digits with a valid Luhn check digit.
pub fn validate_imei(input: &str) -> Result<String, IdentifierError> {
    let s = input.trim();
    if s.len() != 15 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IdentifierError::ImeiFormat(input.to_owned()));
    }
    if !luhn_valid(s) {
        return Err(IdentifierError::ImeiCheck(input.to_owned()));
    }
    Ok(s.to_owned())
}

/// An ICCID: 19 or 20 digits with a valid Luhn check digit.
pub fn validate_iccid(input: &str) -> Result<String, IdentifierError> {
    let s = input.trim();
    if !(19..=20).contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IdentifierError::IccidFormat(input.to_owned()));
    }
    if !luhn_valid(s) {
        return Err(IdentifierError::IccidCheck(input.to_owned()));
    }
    Ok(s.to_owned())
}

/// A device label: 1 to 64 characters, none of the separators `,` `;` `|`
/// (labels are stored comma-separated and imported `;`-separated), no
/// control characters, no spaces at either end.
pub fn is_valid_label(label: &str) -> bool {
    (1..=64).contains(&label.chars().count())
        && label.trim() == label
        && !label
            .chars()
            .any(|c| matches!(c, ',' | ';' | '|') || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_spellings_normalise_to_dashes() {
        for input in [
            "00:11:22:33:44:55",
            "00-11-22-33-44-55",
            "001122334455",
            "0011.2233.4455",
            " 00:11:22:33:44:55 ",
        ] {
            assert_eq!(
                normalize_mac(input).as_deref(),
                Ok("00-11-22-33-44-55"),
                "{input}"
            );
        }
        assert_eq!(
            normalize_mac("AA:BB:CC:DD:EE:FF").as_deref(),
            Ok("aa-bb-cc-dd-ee-ff")
        );
        for bad in [
            "",
            "00:11:22:33:44",
            "00:11:22:33:44:5G",
            "00:11:22:33:44:55:66",
            "0:11:22:33:44:555",
            "00:11-22.33:4455",
        ] {
            assert!(normalize_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn imei_and_iccid_check_digits() {
        // Published examples with valid check digits.
        assert!(validate_imei("490154203237518").is_ok());
        assert_eq!(
            validate_imei("490154203237519"),
            Err(IdentifierError::ImeiCheck("490154203237519".into()))
        );
        assert!(validate_imei("49015420323751").is_err());
        assert!(validate_iccid("8944500102198304826").is_ok());
        assert!(validate_iccid("8944500102198304827").is_err());
        assert!(validate_iccid("89445001021983048").is_err());
    }

    #[test]
    fn labels_are_short_and_free_of_separators() {
        assert!(is_valid_label("pilot"));
        assert!(is_valid_label("site:harbour-2"));
        assert!(!is_valid_label(""));
        assert!(!is_valid_label("a,b"));
        assert!(!is_valid_label("a;b"));
        assert!(!is_valid_label(" padded"));
        assert!(!is_valid_label(&"x".repeat(65)));
    }
}
