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

/// The largest PEM file read (a system CA bundle is a few hundred KiB): a mistaken
/// `/dev/zero` must not eat memory or hang.
const MAX_PEM_FILE: u64 = 4 << 20;

fn read_pem(path: &Path, flag: &str) -> Result<String, Error> {
    crate::out::read_bounded(path, MAX_PEM_FILE, &format!("{flag} {}", path.display()))
}

fn certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let text = read_pem(path, flag)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| Error::usage(format!("{flag} {}: {}", path.display(), pem_error(&e))))?;
    if certs.is_empty() {
        return Err(Error::usage(format!(
            "{flag} {}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let text = read_pem(path, "--key")?;
    PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| {
        let why = if text.contains("ENCRYPTED") {
            "an encrypted private key, which needs a passphrase this tool does not take; give \
             it unencrypted (openssl pkey -in KEY -out key.pem)"
                .to_string()
        } else if matches!(e, rustls::pki_types::pem::Error::NoItemsFound) {
            "no private key in it (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)"
                .to_string()
        } else {
            pem_error(&e)
        };
        Error::usage(format!("--key {}: {why}", path.display()))
    })
}

/// A PEM error in words, not as a debug dump.
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::NoItemsFound => "nothing in PEM form in it".into(),
        E::MissingSectionEnd { .. } | E::IllegalSectionStart { .. } => {
            "a PEM section is cut off or broken".into()
        }
        E::Base64Decode(_) => "a PEM section is not valid base64".into(),
        _ => "not a readable PEM file".into(),
    }
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
        .map_err(|e| Error::failed("TLS", e))?;
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
            let key = private_key(k)?;
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

/// Whether what listens at `host:port` answers a TLS ClientHello with a TLS handshake
/// (within `timeout`): tells an `mqtt://` URL pointed at a TLS port. Nothing is verified;
/// nothing is sent after the handshake starts.
pub fn answers_tls(host: &str, port: u16, timeout: std::time::Duration) -> bool {
    use std::io::Write;
    let Ok(config) = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
                .with_no_client_auth()
        })
    else {
        return false;
    };
    let name = ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| ServerName::try_from("localhost").expect("a valid name"));
    let Ok(mut tls) = rustls::ClientConnection::new(Arc::new(config), name) else {
        return false;
    };
    let Some(mut sock) = crate::mqtt::connect_with_timeout(host, port, timeout) else {
        return false;
    };
    let mut hello = Vec::new();
    if tls.write_tls(&mut hello).is_err() || sock.write_all(&hello).is_err() {
        return false;
    }
    // A ServerHello moves the handshake on; a plain MQTT broker closes or answers garbage.
    for _ in 0..8 {
        match tls.read_tls(&mut sock) {
            Ok(0) | Err(_) => return false,
            Ok(_) => match tls.process_new_packets() {
                Ok(_) if tls.protocol_version().is_some() => return true,
                Ok(_) => {}
                Err(_) => return false,
            },
        }
    }
    false
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
