//! The CA certificates outgoing TLS trusts (SMTP in `notify`, the `http` check in `engine`): the
//! system's roots plus the PEM bundle named by `EXECUTIONER_CA_FILE`. It reads and parses
//! certificates; it makes no connection and builds no client (each user does, with its library).
//!
//! The system's roots come from `rustls-native-certs` (`SSL_CERT_FILE` and `SSL_CERT_DIR` replace
//! them, as for OpenSSL). `EXECUTIONER_SMTP_CA_FILE`, the older name from when only SMTP used TLS,
//! is still read when `EXECUTIONER_CA_FILE` is not set.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The environment variable naming an extra PEM file of CA certificates to trust.
pub const CA_FILE_ENV: &str = "EXECUTIONER_CA_FILE";

/// The older name of [`CA_FILE_ENV`], read when it is not set.
pub const SMTP_CA_FILE_ENV: &str = "EXECUTIONER_SMTP_CA_FILE";

/// The extra CA file the environment names: [`CA_FILE_ENV`], else [`SMTP_CA_FILE_ENV`]. An
/// empty value counts as unset.
pub fn extra_ca_file() -> Option<PathBuf> {
    extra_ca_file_in(|name| std::env::var_os(name))
}

fn extra_ca_file_in(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    [CA_FILE_ENV, SMTP_CA_FILE_ENV]
        .into_iter()
        .find_map(|name| var(name).filter(|v| !v.is_empty()))
        .map(PathBuf::from)
}

/// The certificates of a PEM bundle; an unreadable file, bad PEM or a file without any
/// certificate is an error naming the file.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("CA file {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("CA file {}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// The system's CA certificates, read once per process (the store is reread only by a restart,
/// as for most programs). Unreadable entries are skipped: the ones that load still count.
pub fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_name_wins_and_the_old_one_still_works() {
        let both = |name: &str| Some(OsString::from(format!("/{name}")));
        assert_eq!(
            extra_ca_file_in(both),
            Some(PathBuf::from("/EXECUTIONER_CA_FILE"))
        );
        let old_only = |name: &str| (name == SMTP_CA_FILE_ENV).then(|| OsString::from("/old.pem"));
        assert_eq!(extra_ca_file_in(old_only), Some(PathBuf::from("/old.pem")));
        let empty_new = |name: &str| {
            Some(OsString::from(if name == CA_FILE_ENV {
                ""
            } else {
                "/old.pem"
            }))
        };
        assert_eq!(extra_ca_file_in(empty_new), Some(PathBuf::from("/old.pem")));
        assert_eq!(extra_ca_file_in(|_| None), None);
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let err = read_ca_file(&path).expect_err("refused");
        assert!(
            err.contains("empty.pem") && err.contains("no certificate"),
            "{err}"
        );
        let err = read_ca_file(&dir.path().join("missing.pem")).expect_err("refused");
        assert!(err.contains("cannot read the CA file"), "{err}");
    }
}
