//! The stored formats: [`EventEnvelope`] and [`SnapshotEnvelope`], msgpack with named fields,
//! and [`Upcasters`] that lift old event versions to the current one before typed decoding.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregate;
pub use crate::error::DecodeError;
use crate::upcast::Upcasters;

/// One stored event, as it sits in the events topic (key = aggregate key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// The aggregate type ([`Aggregate::TYPE`]).
    pub aggregate_type: String,
    /// The aggregate id within its type.
    pub aggregate_id: String,
    /// The aggregate's sequence number of this event: 1, 2, 3… without gaps.
    pub seq: u64,
    /// The event type: the event enum's variant name.
    pub event_type: String,
    /// The version of the payload's shape for this event type.
    pub event_version: u32,
    /// The id of the command that caused the event, when the caller gave one.
    pub command_id: Option<String>,
    /// When the event was committed, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The event, msgpack with named fields.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl EventEnvelope {
    /// The aggregate key `"{TYPE}/{id}"`.
    pub fn key(&self) -> String {
        crate::log::aggregate_key(&self.aggregate_type, &self.aggregate_id)
    }

    /// Encodes the envelope for the log.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain structs of strings, integers and bytes into a Vec cannot fail.
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    /// Decodes an envelope read from `location` (named in the error).
    pub fn decode(bytes: &[u8], location: &dyn fmt::Display) -> Result<Self, DecodeError> {
        rmp_serde::from_slice(bytes).map_err(|e| DecodeError {
            what: "event envelope".into(),
            location: location.to_string(),
            reason: e.to_string(),
        })
    }

    /// Decodes the payload as an event of `A`, upcasting older versions first.
    pub fn decode_event<A: Aggregate>(
        &self,
        upcasters: &Upcasters,
        location: &dyn fmt::Display,
    ) -> Result<A::Event, DecodeError> {
        let err = |reason: String| DecodeError {
            what: format!("event {} v{}", self.event_type, self.event_version),
            location: location.to_string(),
            reason,
        };
        let current = upcasters.current_version(&self.event_type);
        if self.event_version == current {
            return rmp_serde::from_slice(&self.payload).map_err(|e| err(e.to_string()));
        }
        if self.event_version > current {
            return Err(err(format!(
                "unknown version: this build reads {} up to v{current}",
                self.event_type
            )));
        }
        let mut value = rmpv::decode::read_value(&mut &self.payload[..])
            .map_err(|e| err(format!("payload is not msgpack: {e}")))?;
        for version in self.event_version..current {
            value = upcasters
                .upcast(&self.event_type, version, value)
                .map_err(|e| err(format!("upcasting {} v{version}: {e}", self.event_type)))?;
        }
        // Re-encode and decode with rmp-serde, so upcast and current payloads take the same
        // decoding path (rmpv's own deserializer reads enums differently).
        let mut bytes = Vec::with_capacity(self.payload.len() + 16);
        rmpv::encode::write_value(&mut bytes, &value)
            .map_err(|e| err(format!("re-encoding after upcasting: {e}")))?;
        rmp_serde::from_slice(&bytes).map_err(|e| err(format!("after upcasting: {e}")))
    }
}

/// An [`EventEnvelope`] that borrows its fields, so the command path encodes a new event without
/// copying the aggregate's type, id and command id or the payload. It encodes to the same bytes
/// as the owned envelope with the same fields.
pub(crate) struct EventEnvelopeRef<'a> {
    pub(crate) aggregate_type: &'a str,
    pub(crate) aggregate_id: &'a str,
    pub(crate) seq: u64,
    pub(crate) event_type: &'a str,
    pub(crate) event_version: u32,
    pub(crate) command_id: Option<&'a str>,
    pub(crate) timestamp_ms: i64,
    pub(crate) payload: &'a [u8],
}

impl EventEnvelopeRef<'_> {
    /// Encodes the envelope for the log, into a buffer of the right size.
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Field names and markers; integers take at most 9 bytes each.
        const FIXED: usize = 160;
        let mut out = Vec::with_capacity(
            FIXED
                + self.aggregate_type.len()
                + self.aggregate_id.len()
                + self.event_type.len()
                + self.command_id.map_or(0, str::len)
                + self.payload.len(),
        );
        // Written field by field with `rmp`, the very calls rmp-serde makes for this struct
        // (a map of named fields, integers in their most compact form), without the serde
        // machinery in between: this runs for every event a command causes. Writing into a
        // Vec cannot fail.
        use rmp::encode as w;
        let _ = w::write_map_len(&mut out, 8);
        let _ = w::write_str(&mut out, "aggregate_type");
        let _ = w::write_str(&mut out, self.aggregate_type);
        let _ = w::write_str(&mut out, "aggregate_id");
        let _ = w::write_str(&mut out, self.aggregate_id);
        let _ = w::write_str(&mut out, "seq");
        let _ = w::write_uint(&mut out, self.seq);
        let _ = w::write_str(&mut out, "event_type");
        let _ = w::write_str(&mut out, self.event_type);
        let _ = w::write_str(&mut out, "event_version");
        let _ = w::write_uint(&mut out, u64::from(self.event_version));
        let _ = w::write_str(&mut out, "command_id");
        let _ = match self.command_id {
            Some(id) => w::write_str(&mut out, id).is_ok(),
            None => w::write_nil(&mut out).is_ok(),
        };
        let _ = w::write_str(&mut out, "timestamp_ms");
        let _ = w::write_sint(&mut out, self.timestamp_ms);
        let _ = w::write_str(&mut out, "payload");
        let _ = w::write_bin(&mut out, self.payload);
        out
    }
}

/// Encodes a typed event into `buffer` (replacing what it held); returns the event type
/// (borrowed from the payload), the version new events of that type are written with, and the
/// payload.
pub(crate) fn encode_event<'p, A: Aggregate>(
    event: &A::Event,
    upcasters: &Upcasters,
    buffer: &'p mut Vec<u8>,
) -> Result<(&'p str, u32, &'p [u8]), String> {
    buffer.clear();
    rmp_serde::encode::write_named(buffer, event).map_err(|e| e.to_string())?;
    let payload: &'p [u8] = buffer;
    let event_type = event_type_of(payload)?;
    let version = upcasters.current_version(event_type);
    Ok((event_type, version, payload))
}

/// The variant name of an externally tagged enum encoded as msgpack: a map with one key for
/// variants with data, a bare string for unit variants.
fn event_type_of(payload: &[u8]) -> Result<&str, String> {
    let mut rd = payload;
    let marker = rmp::decode::read_marker(&mut rd).map_err(|e| format!("{e:?}"))?;
    use rmp::Marker;
    let mut rd = payload;
    match marker {
        Marker::FixMap(1) | Marker::Map16 | Marker::Map32 => {
            rmp::decode::read_map_len(&mut rd).map_err(|e| e.to_string())?;
            read_str(&mut rd)
        }
        Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => read_str(&mut rd),
        other => Err(format!(
            "events must serialize as an enum (externally tagged); got msgpack {other:?}"
        )),
    }
}

fn read_str<'a>(rd: &mut &'a [u8]) -> Result<&'a str, String> {
    let len = rmp::decode::read_str_len(rd).map_err(|e| e.to_string())? as usize;
    let bytes = rd
        .get(..len)
        .ok_or_else(|| "truncated event type".to_string())?;
    std::str::from_utf8(bytes).map_err(|e| e.to_string())
}

/// One stored snapshot (key = aggregate key in the snapshots topic).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotEnvelope {
    /// The sequence number of the last event the state includes.
    pub seq: u64,
    /// The offset, in the aggregate's events partition, of the last event the state includes.
    pub covered_offset: Option<u64>,
    /// [`Aggregate::STATE_VERSION`] of the code that wrote it.
    pub state_version: u32,
    /// The state, msgpack with named fields.
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
    /// The aggregate's recent command ids and their outcomes (the idempotency window),
    /// msgpack with named fields.
    #[serde(with = "serde_bytes")]
    pub recent_commands: Vec<u8>,
}

impl SnapshotEnvelope {
    /// Encodes the snapshot for the store.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    /// Decodes a snapshot of the aggregate at `location`.
    pub fn decode(bytes: &[u8], location: &dyn fmt::Display) -> Result<Self, DecodeError> {
        rmp_serde::from_slice(bytes).map_err(|e| DecodeError {
            what: "snapshot envelope".into(),
            location: location.to_string(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Ev {
        Renamed { name: String, reason: String },
        Cleared,
    }

    #[derive(Debug, Default, Serialize, Deserialize)]
    struct Agg;
    impl Aggregate for Agg {
        const TYPE: &'static str = "Agg";
        type Command = ();
        type Event = Ev;
        type Error = std::io::Error;
        fn handle(&self, _: ()) -> Result<Vec<Ev>, std::io::Error> {
            Ok(vec![])
        }
        fn apply(&mut self, _: &Ev) {}
    }

    fn envelope(event_type: &str, version: u32, payload: Vec<u8>) -> EventEnvelope {
        EventEnvelope {
            aggregate_type: "Agg".into(),
            aggregate_id: "1".into(),
            seq: 1,
            event_type: event_type.into(),
            event_version: version,
            command_id: None,
            timestamp_ms: 0,
            payload,
        }
    }

    #[test]
    fn event_type_is_the_variant_name() {
        let up = Upcasters::new();
        let mut payload = Vec::new();
        let (ty, v, _) = encode_event::<Agg>(
            &Ev::Renamed {
                name: "a".into(),
                reason: "b".into(),
            },
            &up,
            &mut payload,
        )
        .unwrap();
        assert_eq!((ty, v), ("Renamed", 1));
        let (ty, _, _) = encode_event::<Agg>(&Ev::Cleared, &up, &mut payload).unwrap();
        assert_eq!(ty, "Cleared");
    }

    /// The envelope `owned`, borrowed.
    fn borrow(owned: &EventEnvelope) -> EventEnvelopeRef<'_> {
        EventEnvelopeRef {
            aggregate_type: &owned.aggregate_type,
            aggregate_id: &owned.aggregate_id,
            seq: owned.seq,
            event_type: &owned.event_type,
            event_version: owned.event_version,
            command_id: owned.command_id.as_deref(),
            timestamp_ms: owned.timestamp_ms,
            payload: &owned.payload,
        }
    }

    #[test]
    fn a_borrowed_envelope_encodes_to_the_owned_envelopes_bytes() {
        // Every width of every integer and string marker, on both sides of each boundary.
        let long_type = "T".repeat(300);
        // (command id, payload, seq, timestamp, event version, event type)
        type Case<'a> = (Option<&'a str>, Vec<u8>, u64, i64, u32, &'a str);
        let cases: [Case; 9] = [
            (None, vec![0xc0], u64::MAX, -5, 3, "Renamed"),
            (Some("cmd-1"), vec![7; 300], 0, 0, 0, "R"),
            (Some(""), vec![1; 70_000], 127, 127, 127, ""),
            (
                Some(&long_type[..31]),
                vec![],
                128,
                128,
                128,
                &long_type[..32],
            ),
            (
                Some(&long_type[..255]),
                vec![2; 255],
                255,
                -32,
                255,
                &long_type[..256],
            ),
            (Some(&long_type[..256]), vec![3; 256], 256, -33, 256, "x"),
            (None, vec![4; 65_535], 65_535, -128, 65_535, "y"),
            (None, vec![5; 65_536], 65_536, -129, 65_536, "z"),
            (
                None,
                vec![6],
                u64::from(u32::MAX) + 1,
                i64::MIN,
                u32::MAX,
                "w",
            ),
        ];
        for (command_id, payload, seq, timestamp_ms, event_version, event_type) in cases {
            let owned = EventEnvelope {
                command_id: command_id.map(str::to_owned),
                seq,
                timestamp_ms,
                ..envelope(event_type, event_version, payload.clone())
            };
            let borrowed = borrow(&owned);
            assert_eq!(
                borrowed.encode(),
                owned.encode(),
                "seq {seq}, ts {timestamp_ms}"
            );
        }
        for timestamp_ms in [1_800_000_000_000, i64::MAX, -1, 32_767, 32_768, -32_769] {
            let owned = EventEnvelope {
                timestamp_ms,
                ..envelope("Renamed", 1, vec![1])
            };
            let borrowed = borrow(&owned);
            assert_eq!(borrowed.encode(), owned.encode(), "ts {timestamp_ms}");
        }
    }

    #[test]
    fn an_old_version_is_upcast_before_decoding() {
        // v1 of Renamed had no `reason`.
        #[derive(Serialize)]
        enum V1 {
            Renamed { name: String },
        }
        let payload = rmp_serde::to_vec_named(&V1::Renamed { name: "x".into() }).unwrap();
        let upcasters = Upcasters::new().register("Renamed", 1, |v| match v {
            rmpv::Value::Map(mut variant) => {
                if let Some((_, rmpv::Value::Map(fields))) = variant.first_mut() {
                    fields.push(("reason".into(), "unknown".into()));
                }
                Ok(rmpv::Value::Map(variant))
            }
            other => Err(format!("not a Renamed map: {other}")),
        });
        let env = envelope("Renamed", 1, payload);
        let ev = env.decode_event::<Agg>(&upcasters, &"test").unwrap();
        assert_eq!(
            ev,
            Ev::Renamed {
                name: "x".into(),
                reason: "unknown".into()
            }
        );
    }

    #[test]
    fn an_unknown_version_names_the_location() {
        let env = envelope("Renamed", 7, vec![0xc0]);
        let err = env
            .decode_event::<Agg>(&Upcasters::new(), &"partition 3, offset 42")
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("partition 3, offset 42"), "{text}");
        assert!(text.contains("unknown version"), "{text}");
    }

    #[test]
    fn garbage_envelope_is_an_error_not_a_panic() {
        let err = EventEnvelope::decode(&[0xff, 0x00, 0x13], &"partition 0, offset 9").unwrap_err();
        assert!(err.to_string().contains("offset 9"));
    }
}
