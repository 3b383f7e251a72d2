//! From `TIDINGS__MQTT__*` to the client's options: the URL, credentials, TLS.

use crate::configuration::MqttSettings;
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("TIDINGS__MQTT__URL is not a URL such as mqtt://host:1883")]
    Url,
    #[error("TIDINGS__MQTT__URL must start with mqtt:// or mqtts://")]
    Scheme,
    #[error("could not read {what} {path}")]
    File {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no usable certificate among the system's roots; set TIDINGS__MQTT__CA_FILE")]
    NoRoots,
    #[error("a client certificate needs TIDINGS__MQTT__CA_FILE too")]
    ClientCertNeedsCa,
}

/// The topic prefix and everything needed to open a connection, checked once at start.
#[derive(Clone)]
pub struct BrokerOptions {
    options: MqttOptions,
}

impl std::fmt::Debug for BrokerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("BrokerOptions")
            .field("broker", &self.options.broker_address())
            .finish()
    }
}

impl BrokerOptions {
    pub fn from_settings(s: &MqttSettings, url: &str) -> Result<Self, OptionsError> {
        let parsed = url::Url::parse(url).map_err(|_| OptionsError::Url)?;
        let (tls, default_port) = match parsed.scheme() {
            "mqtt" => (false, 1883),
            "mqtts" => (true, 8883),
            _ => return Err(OptionsError::Scheme),
        };
        let host = parsed.host_str().ok_or(OptionsError::Url)?.to_owned();
        let port = parsed.port().unwrap_or(default_port);
        let client_id = s.client_id.clone().unwrap_or_else(|| {
            format!(
                "tidings-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            )
        });
        let mut options = MqttOptions::new(client_id, host, port);
        options
            .set_keep_alive(Duration::from_secs(s.keep_alive_seconds))
            .set_inflight(s.inflight)
            // Each connection starts clean: what was not acknowledged is still in the
            // outbox and is published again from there, in order.
            .set_clean_session(true)
            // Room for a whole batch, so queuing it never waits on the event loop.
            .set_request_channel_capacity(batch_capacity(s));
        if !parsed.username().is_empty() {
            let user = decode(parsed.username());
            let password = parsed.password().map(decode).unwrap_or_default();
            options.set_credentials(user, password);
        }
        if tls {
            options.set_transport(Transport::tls_with_config(tls_config(s)?));
        }
        Ok(Self { options })
    }

    pub fn mqtt_options(&self) -> MqttOptions {
        self.options.clone()
    }
}

pub fn batch_capacity(s: &MqttSettings) -> usize {
    usize::try_from(s.batch_users.saturating_mul(s.batch_per_user))
        .unwrap_or(10_000)
        .max(1)
}

/// User and password come percent-encoded in the URL (`p%40ss` for `p@ss`).
fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn read(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, OptionsError> {
    std::fs::read(path).map_err(|source| OptionsError::File {
        what,
        path: path.display().to_string(),
        source,
    })
}

fn tls_config(s: &MqttSettings) -> Result<TlsConfiguration, OptionsError> {
    let client_auth = match (&s.client_cert_file, &s.client_key_file) {
        (Some(cert), Some(key)) => Some((
            read("TIDINGS__MQTT__CLIENT_CERT_FILE", cert)?,
            read("TIDINGS__MQTT__CLIENT_KEY_FILE", key)?,
        )),
        _ => None,
    };
    if let Some(ca) = &s.ca_file {
        return Ok(TlsConfiguration::Simple {
            ca: read("TIDINGS__MQTT__CA_FILE", ca)?,
            alpn: None,
            client_auth,
        });
    }
    // A managed broker with a public certificate: the system's roots.
    if client_auth.is_some() {
        // rumqttc parses the client pair only together with an explicit CA.
        return Err(OptionsError::ClientCertNeedsCa);
    }
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(OptionsError::NoRoots);
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}
