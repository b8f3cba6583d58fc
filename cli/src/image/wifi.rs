//! A wireless network for the boards to join, checked before any image is
//! written.

use super::ImageError;

/// A WPA2-Personal network.
#[derive(Clone, PartialEq, Eq)]
pub struct Wifi {
    /// Network name (1 to 32 bytes).
    pub ssid: String,
    /// Passphrase (8 to 63 printable ASCII characters).
    pub passphrase: String,
    /// Regulatory domain: an ISO 3166 two-letter country code (`GB`, `DE`).
    pub country: String,
}

impl std::fmt::Debug for Wifi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wifi")
            .field("ssid", &self.ssid)
            .field("passphrase", &"<hidden>")
            .field("country", &self.country)
            .finish()
    }
}

impl Wifi {
    /// Checks the three parts; the country is upper-cased.
    pub fn new(ssid: &str, passphrase: &str, country: &str) -> Result<Wifi, ImageError> {
        let bad = |what: String| Err(ImageError::Option(what));
        if ssid.is_empty()
            || ssid.len() > 32
            || ssid.chars().any(|c| c.is_control() || c == '\\')
            || ssid.trim() != ssid
        {
            return bad(format!(
                "wifi network name {ssid:?} must be 1 to 32 bytes, without control characters, \
                 backslashes or spaces at either end"
            ));
        }
        if !(8..=63).contains(&passphrase.len())
            || !passphrase.bytes().all(|b| (0x20..0x7f).contains(&b))
        {
            return bad("the wifi passphrase must be 8 to 63 printable ASCII characters".into());
        }
        let country = country.to_ascii_uppercase();
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            return bad(format!(
                "wifi country {country:?} must be a two-letter code such as GB or DE"
            ));
        }
        Ok(Wifi {
            ssid: ssid.to_owned(),
            passphrase: passphrase.to_owned(),
            country,
        })
    }

    /// The WPA pre-shared key: PBKDF2-HMAC-SHA1 of the passphrase salted
    /// with the SSID, 4096 rounds, 32 bytes, as 64 hex digits (IEEE
    /// 802.11i). Images store this rather than the passphrase.
    pub fn psk_hex(&self) -> String {
        let mut psk = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA1,
            std::num::NonZeroU32::new(4096).expect("nonzero"),
            self.ssid.as_bytes(),
            self.passphrase.as_bytes(),
            &mut psk,
        );
        psk.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psk_matches_the_ieee_802_11i_test_vector() {
        // IEEE 802.11i-2004, annex H.4.1, test case 1.
        let w = Wifi::new("IEEE", "password", "gb").unwrap();
        assert_eq!(
            w.psk_hex(),
            "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"
        );
        assert_eq!(w.country, "GB");
    }

    #[test]
    fn bad_parts_are_refused_with_the_reason() {
        let e = Wifi::new("", "password", "GB").unwrap_err().to_string();
        assert!(e.contains("1 to 32 bytes"), "{e}");
        let e = Wifi::new("net", "short", "GB").unwrap_err().to_string();
        assert!(e.contains("8 to 63"), "{e}");
        let e = Wifi::new("net", "password", "GBR").unwrap_err().to_string();
        assert!(e.contains("two-letter"), "{e}");
        assert!(!format!("{:?}", Wifi::new("n", "password", "GB").unwrap()).contains("password"));
    }
}
