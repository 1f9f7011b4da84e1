//! TLS for PostgreSQL connections, with libpq's `sslmode` meanings.
//!
//! * `sslmode=disable`: plain connections.
//! * `sslmode=prefer` (the default) and `require`: encrypted whenever the server offers TLS
//!   (`require` refuses servers that do not); as in libpq, the server's certificate is not
//!   checked — the connection is private against eavesdroppers, not against impostors.
//! * `sslmode=verify-ca` / `verify-full` with `sslrootcert=FILE` (PEM): the server certificate
//!   must chain to that CA and (verify-full) name the host connected to.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{Error, Result};

/// How the server is authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Verify {
    /// Encrypt, do not authenticate (libpq prefer/require).
    No,
    /// The certificate must chain to the CA in this file and name the host.
    RootCert(std::path::PathBuf),
}

/// A TLS connector for the `postgres` crate.
pub(super) fn connector(verify: &Verify) -> Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidArgument(format!("TLS set-up: {e}")))?;
    let config = match verify {
        Verify::No => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unauthenticated(provider)))
            .with_no_client_auth(),
        Verify::RootCert(path) => builder
            .with_root_certificates(load_roots(path)?)
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

fn load_roots(path: &Path) -> Result<RootCertStore> {
    let pem = std::fs::read(path)
        .map_err(|e| Error::io(format!("reading sslrootcert {}", path.display()), e))?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| Error::io(format!("parsing {}", path.display()), e))?;
        roots.add(cert).map_err(|e| {
            Error::InvalidArgument(format!("certificate in {}: {e}", path.display()))
        })?;
    }
    if roots.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "sslrootcert {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(roots)
}

/// Accepts any server certificate but still checks the handshake signatures (libpq's
/// `prefer`/`require`: encryption without authentication).
#[derive(Debug)]
struct Unauthenticated(Arc<CryptoProvider>);

impl ServerCertVerifier for Unauthenticated {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Splits libpq TLS parameters the `postgres` crate does not know off `url`: `sslrootcert`,
/// and `sslmode=verify-ca|verify-full` (turned into `require` plus verification).
pub(super) fn split_tls_params(url: &str) -> Result<(String, Verify)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), Verify::No));
    };
    let mut root = None;
    let mut verify = false;
    let mut rest: Vec<String> = Vec::new();
    for p in query.split('&').filter(|p| !p.is_empty()) {
        if let Some(path) = p.strip_prefix("sslrootcert=") {
            root = Some(std::path::PathBuf::from(path));
        } else if p == "sslmode=verify-full" || p == "sslmode=verify-ca" {
            verify = true;
            rest.push("sslmode=require".into());
        } else {
            rest.push(p.to_string());
        }
    }
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    match (verify, root) {
        (true, None) => Err(Error::InvalidArgument(
            "sslmode=verify-full/verify-ca needs sslrootcert=FILE (a PEM CA certificate)".into(),
        )),
        (_, Some(path)) => Ok((url, Verify::RootCert(path))),
        (false, None) => Ok((url, Verify::No)),
    }
}
