//! (temporary: replaced by the basics branch)
#![allow(missing_docs)]
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);
impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}
impl ClusterKey {
    pub fn generate() -> Result<Self, std::io::Error> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(std::io::Error::other)?;
        Ok(Self(k))
    }
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}
impl ClusterKey {
    pub fn load(path: &std::path::Path) -> Result<Self, std::io::Error> {
        let s = std::fs::read_to_string(path)?;
        let s = s.trim();
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(std::io::Error::other)?;
        }
        Ok(Self(k))
    }
    pub fn write(&self, path: &std::path::Path, _overwrite: bool) -> Result<(), std::io::Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        std::io::Write::write_all(&mut f, format!("{hex}\n").as_bytes())
    }
}
pub fn default_key_path() -> std::path::PathBuf {
    std::env::var_os("SKELPI_KEY_FILE").map_or_else(|| "/etc/skelpi/cluster.key".into(), Into::into)
}
