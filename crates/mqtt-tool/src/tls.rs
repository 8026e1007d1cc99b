//! TLS for `mqtts://` brokers: rustls with the ring provider (it builds with the C compiler
//! alone; aws-lc-rs, rustls's default, needs cmake too), the system's trust store or
//! `--ca-file`, client certificates (`--cert`, `--key`), and `--insecure`, which verifies
//! nothing and says so loudly.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::Error;

/// What the TLS flags ask for, checked.
#[derive(Debug, Clone)]
pub struct TlsPlan {
    pub config: Arc<ClientConfig>,
    pub insecure: bool,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| Error::usage(format!("{flag} {}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| Error::usage(format!("{flag} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::usage(format!(
            "{flag} {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

/// The client configuration for the TLS flags.
pub fn client_config(
    ca_file: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
    insecure: bool,
) -> Result<TlsPlan, Error> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Other(format!("TLS: {e}")))?;
    let builder = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
    } else {
        let mut roots = RootCertStore::empty();
        match ca_file {
            Some(path) => {
                for c in certs(path, "--ca-file")? {
                    roots
                        .add(c)
                        .map_err(|e| Error::usage(format!("--ca-file {}: {e}", path.display())))?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
                if roots.is_empty() {
                    return Err(Error::usage(
                        "no trusted certificates found on this system for mqtts://; pass --ca-file",
                    ));
                }
            }
        }
        builder.with_root_certificates(roots)
    };
    let config = match (cert, key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(c), Some(k)) => {
            let chain = certs(c, "--cert")?;
            let key = PrivateKeyDer::from_pem_file(k)
                .map_err(|e| Error::usage(format!("--key {}: {e}", k.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::usage(format!("--cert/--key: {e}")))?
        }
        _ => {
            return Err(Error::usage(
                "--cert and --key go together: a client certificate needs its key",
            ))
        }
    };
    Ok(TlsPlan {
        config: Arc::new(config),
        insecure,
    })
}

/// The name a broker's certificate must carry: its host name or IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, Error> {
    ServerName::try_from(host.to_string()).map_err(|e| {
        Error::usage(format!(
            "--broker host '{host}' is not a TLS server name: {e}"
        ))
    })
}

/// `--insecure`: every certificate is accepted (signatures are still checked, so that the
/// handshake itself is sound).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
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
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
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
