//! The `[metrics]` config section.

use std::net::SocketAddr;

/// The `[metrics]` section of lockboxd's and lockbox-controller's TOML.
///
/// A section of its own, shared by both daemons, so that the endpoint is configured and checked
/// the same way in both.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `ip:port` of the HTTP endpoint (GET /metrics). Loopback unless `allow_remote`.
    pub listen: String,
    /// Serve on a non-loopback address. Off by default because the endpoint has neither TLS
    /// nor authentication: the operator must opt in to exposing it on a network.
    #[serde(default)]
    pub allow_remote: bool,
}

/// Why a `[metrics]` section was refused; each message names the field to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `listen` is not an IP socket address (host names are refused so that the address served
    /// is the one written, not whatever a resolver says at start-up).
    #[error("metrics.listen {0:?} is not an ip:port")]
    NotIpPort(String),
    /// `listen` would expose the unauthenticated endpoint beyond this host.
    #[error(
        "metrics.listen {0:?} is not a loopback address; set metrics.allow_remote = true to serve it there"
    )]
    NotLoopback(String),
}

impl MetricsConfig {
    /// Parses `listen` strictly as an IP socket address (no host names) and refuses a
    /// non-loopback address (including 0.0.0.0 and ::) unless `allow_remote`, so that a typo
    /// cannot publish the endpoint on every interface.
    pub fn check(&self) -> Result<SocketAddr, ConfigError> {
        let addr: SocketAddr = self
            .listen
            .parse()
            .map_err(|_| ConfigError::NotIpPort(self.listen.clone()))?;
        // `to_canonical` so that ::ffff:127.0.0.1 counts as the loopback address it is.
        if !self.allow_remote && !addr.ip().to_canonical().is_loopback() {
            return Err(ConfigError::NotLoopback(self.listen.clone()));
        }
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn check(listen: &str, allow_remote: bool) -> Result<SocketAddr, ConfigError> {
        MetricsConfig {
            listen: listen.to_owned(),
            allow_remote,
        }
        .check()
    }

    #[test]
    fn loopback_is_accepted() {
        for listen in [
            "127.0.0.1:9464",
            "127.0.0.2:9464",
            "[::1]:9464",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert_eq!(
                check(listen, false),
                Ok(listen.parse().unwrap()),
                "{listen}"
            );
        }
    }

    #[test]
    fn non_loopback_needs_allow_remote() {
        for listen in [
            "0.0.0.0:9464",
            "[::]:9464",
            "10.0.0.5:9464",
            "[2001:db8::1]:9464",
        ] {
            assert_eq!(
                check(listen, false),
                Err(ConfigError::NotLoopback(listen.to_owned())),
                "{listen}"
            );
            assert_eq!(check(listen, true), Ok(listen.parse().unwrap()), "{listen}");
        }
        assert_eq!(
            check("10.0.0.5:9464", false).unwrap_err().to_string(),
            "metrics.listen \"10.0.0.5:9464\" is not a loopback address; \
             set metrics.allow_remote = true to serve it there"
        );
    }

    #[test]
    fn host_names_and_garbage_are_refused() {
        for listen in [
            "x",
            "",
            "localhost:9464",
            "metrics.example:9464",
            "127.0.0.1",
            "127.0.0.1:",
            "127.0.0.1:65536",
            "::1:9464",
            " 127.0.0.1:9464",
            "http://127.0.0.1:9464",
        ] {
            for allow_remote in [false, true] {
                assert_eq!(
                    check(listen, allow_remote),
                    Err(ConfigError::NotIpPort(listen.to_owned())),
                    "{listen:?}"
                );
            }
        }
        assert_eq!(
            check("x", false).unwrap_err().to_string(),
            "metrics.listen \"x\" is not an ip:port"
        );
    }

    #[test]
    fn toml_section() {
        let config: MetricsConfig = toml::from_str("listen = \"127.0.0.1:9464\"").unwrap();
        assert!(!config.allow_remote);
        let config: MetricsConfig =
            toml::from_str("listen = \"[::]:9464\"\nallow_remote = true").unwrap();
        assert_eq!(config.check(), Ok("[::]:9464".parse().unwrap()));
        assert!(toml::from_str::<MetricsConfig>("listen = \"127.0.0.1:1\"\nport = 1").is_err());
        assert!(toml::from_str::<MetricsConfig>("allow_remote = true").is_err());
    }
}
