//! Keeping secrets out of what keel prints: the [`Debug`](std::fmt::Debug) form of
//! [`KafkaConfig`] shows the values of secret client properties (`sasl.password` and the like)
//! as `[redacted]`.

use std::fmt;

use super::KafkaConfig;

/// What a secret client property's value is shown as.
pub(super) const REDACTED: &str = "[redacted]";

/// Whether the value of client property `key` is a secret (a password, a private key, an
/// OAuth client secret or configuration, a JAAS configuration).
pub(super) fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "key.pem",
        "oauthbearer.config",
        "jaas",
        "token",
        "credential",
    ]
    .iter()
    .any(|part| key.contains(part))
}

struct Properties<'a>(&'a [(String, String)]);

impl fmt::Debug for Properties<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(key, value)| {
                let value = if is_secret(key) {
                    REDACTED
                } else {
                    value.as_str()
                };
                (key.as_str(), value)
            }))
            .finish()
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("app_id", &self.app_id)
            .field("topic_prefix", &self.topic_prefix)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("linger", &self.linger)
            .field("request_timeout", &self.request_timeout)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("client_properties", &Properties(&self.client_properties))
            .field("transactional", &self.transactional)
            .field("commit_interval", &self.commit_interval)
            .field("transaction_timeout", &self.transaction_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_properties_are_redacted_and_the_others_shown() {
        let config = KafkaConfig::new("b:9092")
            .client_property("sasl.username", "keel")
            .client_property("sasl.password", "hunter2")
            .client_property("ssl.key.password", "k3y")
            .client_property("sasl.oauthbearer.client.secret", "s3cret")
            .client_property("security.protocol", "SASL_SSL");
        let text = format!("{config:?}");
        for secret in ["hunter2", "k3y", "s3cret"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("\"sasl.username\", \"keel\""), "{text}");
        assert!(text.contains("SASL_SSL"), "{text}");
        assert!(text.contains(REDACTED), "{text}");
    }
}
