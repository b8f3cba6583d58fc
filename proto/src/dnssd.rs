//! The DNS-SD form of an agent (RFC 6763): the service type it registers
//! and the TXT record that carries its [`AgentInfo`]. The agent announces
//! with [`txt_properties`]; the master reads announcements back with
//! [`parse_txt`]. Pure data: the mDNS daemons are the agent's and the
//! master's.

use crate::AgentInfo;

/// The DNS-SD service type of skelpi agents.
pub const SERVICE_TYPE: &str = "_skelpi._tcp.local.";

/// TXT keys, in the order they are written.
const KEY_ID: &str = "id";
const KEY_PROTO: &str = "proto";
const KEY_ARCH: &str = "arch";
const KEY_CORES: &str = "cores";
const KEY_MEM: &str = "mem";
const KEY_PORT: &str = "port";
/// The agent's version (optional: older agents lack it).
const KEY_VERSION: &str = "ver";

/// Why a TXT record is not an agent's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TxtError {
    /// A TXT record lacks a key every agent announces.
    #[error("txt record lacks key `{key}`")]
    MissingKey {
        /// The missing key.
        key: &'static str,
    },
    /// A TXT key has a value that does not parse.
    #[error("txt key `{key}` has bad value {value:?}")]
    BadValue {
        /// The key whose value is bad.
        key: &'static str,
        /// The value as found.
        value: String,
    },
}

/// Builds the TXT properties for an agent (keys: id, proto, arch, cores,
/// mem, port, and ver when its build is known).
pub fn txt_properties(info: &AgentInfo) -> Vec<(String, String)> {
    let version = info
        .build
        .as_ref()
        .map(|b| (KEY_VERSION, b.version.clone()));
    [
        (KEY_ID, info.id.clone()),
        (KEY_PROTO, info.version.to_string()),
        (KEY_ARCH, info.arch.clone()),
        (KEY_CORES, info.cores.to_string()),
        (KEY_MEM, info.memory_bytes.to_string()),
        (KEY_PORT, info.port.to_string()),
    ]
    .into_iter()
    .chain(version)
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Parses TXT properties back into an AgentInfo (name comes from the instance name argument);
/// typed error naming the missing/bad key.
///
/// Keys are matched case-insensitively and the first occurrence wins
/// (RFC 6763 §6.4); unknown keys are ignored.
pub fn parse_txt(instance_name: &str, props: &[(String, String)]) -> Result<AgentInfo, TxtError> {
    let get = |key: &'static str| {
        props
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
            .ok_or(TxtError::MissingKey { key })
    };
    let text = |key: &'static str| {
        let value = get(key)?;
        if value.is_empty() {
            Err(TxtError::BadValue {
                key,
                value: value.to_owned(),
            })
        } else {
            Ok(value.to_owned())
        }
    };
    Ok(AgentInfo {
        id: text(KEY_ID)?,
        name: instance_name.to_owned(),
        version: number(KEY_PROTO, get(KEY_PROTO)?)?,
        arch: text(KEY_ARCH)?,
        cores: number(KEY_CORES, get(KEY_CORES)?)?,
        memory_bytes: number(KEY_MEM, get(KEY_MEM)?)?,
        port: number(KEY_PORT, get(KEY_PORT)?)?,
        kernels: Vec::new(),
        build: get(KEY_VERSION).ok().map(|v| {
            Box::new(crate::deploy::Build {
                version: v.to_owned(),
                ..Default::default()
            })
        }),
        queued_per_worker: 0,
    })
}

fn number<T: std::str::FromStr>(key: &'static str, value: &str) -> Result<T, TxtError> {
    value.parse().map_err(|_| TxtError::BadValue {
        key,
        value: value.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> AgentInfo {
        AgentInfo {
            id: "0123456789abcdef".into(),
            name: "pi-1".into(),
            version: crate::PROTOCOL_VERSION,
            arch: "aarch64".into(),
            cores: 4,
            memory_bytes: 8 << 30,
            port: 7878,
            kernels: Vec::new(),
            build: None,
            queued_per_worker: 0,
        }
    }

    fn without(key: &str) -> Vec<(String, String)> {
        txt_properties(&agent())
            .into_iter()
            .filter(|(k, _)| k != key)
            .collect()
    }

    fn with(key: &str, value: &str) -> Vec<(String, String)> {
        txt_properties(&agent())
            .into_iter()
            .map(|(k, v)| {
                if k == key {
                    (k, value.to_owned())
                } else {
                    (k, v)
                }
            })
            .collect()
    }

    #[test]
    fn txt_round_trips() {
        let info = agent();
        let props = txt_properties(&info);
        let keys: Vec<_> = props.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["id", "proto", "arch", "cores", "mem", "port"]);
        assert_eq!(parse_txt("pi-1", &props).unwrap(), info);
    }

    #[test]
    fn name_comes_from_the_instance() {
        let parsed = parse_txt("pi-1 (2)", &txt_properties(&agent())).unwrap();
        assert_eq!(parsed.name, "pi-1 (2)");
        assert_eq!(parsed.id, agent().id);
    }

    #[test]
    fn first_occurrence_wins_and_unknown_keys_are_ignored() {
        let mut props = vec![("ID".to_owned(), "feedface".to_owned())];
        props.extend(txt_properties(&agent()));
        props.push(("future".into(), "whatever".into()));
        assert_eq!(parse_txt("pi-1", &props).unwrap().id, "feedface");
    }

    #[test]
    fn each_missing_key_is_named() {
        for key in [KEY_ID, KEY_PROTO, KEY_ARCH, KEY_CORES, KEY_MEM, KEY_PORT] {
            match parse_txt("pi-1", &without(key)) {
                Err(TxtError::MissingKey { key: k }) => assert_eq!(k, key),
                other => panic!("{key}: expected MissingKey, got {other:?}"),
            }
        }
    }

    #[test]
    fn each_bad_value_is_named() {
        let cases = [
            (KEY_ID, ""),
            (KEY_ARCH, ""),
            (KEY_PROTO, "one"),
            (KEY_PROTO, "65536"),
            (KEY_CORES, "-1"),
            (KEY_CORES, ""),
            (KEY_MEM, "8G"),
            (KEY_PORT, "70000"),
        ];
        for (key, value) in cases {
            match parse_txt("pi-1", &with(key, value)) {
                Err(TxtError::BadValue { key: k, value: v }) => {
                    assert_eq!((k, v.as_str()), (key, value));
                }
                other => panic!("{key}={value:?}: expected BadValue, got {other:?}"),
            }
        }
    }

    #[test]
    fn errors_read_lower_case_and_name_the_key() {
        let missing = parse_txt("pi-1", &without(KEY_MEM)).unwrap_err();
        assert_eq!(missing.to_string(), "txt record lacks key `mem`");
        let bad = parse_txt("pi-1", &with(KEY_PORT, "x")).unwrap_err();
        assert_eq!(bad.to_string(), "txt key `port` has bad value \"x\"");
    }
}
