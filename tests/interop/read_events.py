#!/usr/bin/env python3
"""Reads a keel events topic (and optionally its snapshots topic) with confluent-kafka and
msgpack only, following docs/event-format.md, and prints one JSON line per record.

    read_events.py --bootstrap HOST:PORT --topic PREFIX.events [--snapshots PREFIX.snapshots]
                   [-X key=value ...] [--timeout SECONDS]

Every partition is assigned from offset 0 and read to its end (the high watermark, or the
last stable offset for a read_committed reader). Each line is a JSON object:

    {"topic": ..., "partition": 0, "offset": 5, "key": "Ledger/acc-1",
     "headers": [["name", "hex"], ...],                   (only when the record has headers)
     "kind": "event",
     "aggregate_type": "Ledger", "aggregate_id": "acc-1", "seq": 3,
     "event_type": "Credited", "event_version": 1, "command_id": "c-7" | null,
     "timestamp_ms": 1764000000000,
     "payload": {"Credited": {"amount": 5, ...}}}      (the decoded msgpack payload)

Snapshot records ("kind": "snapshot") carry seq, covered_offset, state_version, state and
recent_commands, the last two decoded. msgpack values map to JSON as: maps with string keys
to objects, other maps to {"$map": [[key, value], ...]}, bin to {"$bin": "hex"}, ext to
{"$ext": [type, "hex"]}; everything else as itself.

A record that does not match the documented format ends the script with exit status 2 and
a message naming its topic, partition and offset and what is wrong. Exit status 1 means the
topic could not be read at all.
"""

import argparse
import json
import sys
import time

import msgpack
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition


class FormatError(Exception):
    """A record that does not match docs/event-format.md."""


# The event envelope: every field, with the msgpack types it may have.
EVENT_FIELDS = {
    "aggregate_type": (str,),
    "aggregate_id": (str,),
    "seq": (int,),
    "event_type": (str,),
    "event_version": (int,),
    "command_id": (str, type(None)),
    "timestamp_ms": (int,),
    "payload": (bytes,),
}

SNAPSHOT_FIELDS = {
    "seq": (int,),
    "covered_offset": (int, type(None)),
    "state_version": (int,),
    "state": (bytes,),
    "recent_commands": (bytes,),
}

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as an unsigned 32-bit
    value."""
    m = 0x5BD1E995
    mask = 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    tail = data[length - length % 4 :]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if len(tail) >= 1:
        h ^= tail[0]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def partition_for(key: str, partitions: int) -> int:
    """Kafka's default partitioner, as keel uses it."""
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


def to_json(value):
    """A decoded msgpack value as JSON (see the module docstring)."""
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: to_json(v) for k, v in value.items()}
        return {"$map": [[to_json(k), to_json(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return {"$bin": bytes(value).hex()}
    if isinstance(value, msgpack.ExtType):
        return {"$ext": [value.code, value.data.hex()]}
    return value


def unpack(data: bytes, what: str):
    """Exactly one msgpack value (str as UTF-8 text, bin as bytes)."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception as e:  # msgpack raises several types (ExtraData, ValueError, ...)
        raise FormatError(f"{what} is not one msgpack value: {type(e).__name__}: {e}") from None


def check_fields(envelope, fields, what):
    if not isinstance(envelope, dict):
        raise FormatError(f"{what} is a msgpack {type(envelope).__name__}, not a map")
    missing = [f for f in fields if f not in envelope]
    unknown = [k for k in envelope if k not in fields]
    if missing:
        raise FormatError(f"{what} lacks field(s) {', '.join(missing)}")
    if unknown:
        raise FormatError(f"{what} has unknown field(s) {', '.join(map(repr, unknown))}")
    for name, types in fields.items():
        value = envelope[name]
        # bool is an int in Python; msgpack true/false is never a valid integer field.
        if isinstance(value, bool) or not isinstance(value, types):
            expected = " or ".join("nil" if t is type(None) else t.__name__ for t in types)
            raise FormatError(
                f"{what} field {name} is {type(value).__name__} {value!r:.60}, expected {expected}"
            )


def check_range(name, value, low, high):
    if value is not None and not low <= value <= high:
        raise FormatError(f"field {name} = {value} is outside {low}..{high}")


def decode_event(key: str, value: bytes, partition: int, partitions: int) -> dict:
    envelope = unpack(value, "the value")
    check_fields(envelope, EVENT_FIELDS, "the event envelope")
    check_range("seq", envelope["seq"], 1, U64_MAX)
    check_range("event_version", envelope["event_version"], 1, U32_MAX)
    check_range("timestamp_ms", envelope["timestamp_ms"], -(2**63), 2**63 - 1)
    expected_key = f"{envelope['aggregate_type']}/{envelope['aggregate_id']}"
    if key != expected_key:
        raise FormatError(f"the key {key!r} is not {expected_key!r} (aggregate_type/aggregate_id)")
    expected_partition = partition_for(key, partitions)
    if partition != expected_partition:
        raise FormatError(
            f"key {key!r} is in partition {partition}, but murmur2 puts it in "
            f"{expected_partition} of {partitions}"
        )
    payload = unpack(envelope["payload"], "the payload")
    # The event enum, externally tagged: {"Variant": data} or, for a unit variant, "Variant".
    if isinstance(payload, dict):
        if len(payload) != 1:
            raise FormatError(f"the payload is a map of {len(payload)} entries, not one (the event type)")
        tag = next(iter(payload))
    elif isinstance(payload, str):
        tag = payload
    else:
        raise FormatError(f"the payload is a msgpack {type(payload).__name__}, not an event (map or string)")
    if tag != envelope["event_type"]:
        raise FormatError(f"the payload is tagged {tag!r} but event_type is {envelope['event_type']!r}")
    out = {k: envelope[k] for k in EVENT_FIELDS if k != "payload"}
    out["payload"] = to_json(payload)
    return out


def decode_snapshot(key: str, value: bytes, partition: int, partitions: int) -> dict:
    envelope = unpack(value, "the value")
    check_fields(envelope, SNAPSHOT_FIELDS, "the snapshot envelope")
    check_range("seq", envelope["seq"], 1, U64_MAX)
    check_range("covered_offset", envelope["covered_offset"], 0, 2**63 - 1)
    check_range("state_version", envelope["state_version"], 0, U32_MAX)
    if "/" not in key:
        raise FormatError(f"the key {key!r} is not an aggregate key TYPE/ID")
    expected_partition = partition_for(key, partitions)
    if partition != expected_partition:
        raise FormatError(
            f"key {key!r} is in partition {partition}, but murmur2 puts it in "
            f"{expected_partition} of {partitions}"
        )
    recent = unpack(envelope["recent_commands"], "recent_commands")
    if not isinstance(recent, list):
        raise FormatError(f"recent_commands is a msgpack {type(recent).__name__}, not an array")
    return {
        "seq": envelope["seq"],
        "covered_offset": envelope["covered_offset"],
        "state_version": envelope["state_version"],
        "state": to_json(unpack(envelope["state"], "the state")),
        "recent_commands": to_json(recent),
    }


def read_topic(conf: dict, topic: str, kind: str, timeout: float, out) -> int:
    consumer = Consumer(conf)
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
        info = metadata.topics.get(topic)
        if info is None or info.error is not None:
            raise SystemExit(f"read_events.py: topic {topic}: {info.error if info else 'not found'}")
        partitions = sorted(info.partitions)
        count = len(partitions)
        remaining = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high > 0 and high > low:
                remaining[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        decode = decode_event if kind == "event" else decode_snapshot
        deadline = time.monotonic() + timeout
        records = 0
        while remaining:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"read_events.py: topic {topic}: partitions {sorted(remaining)} not read to "
                    f"their end within {timeout}s"
                )
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    remaining.pop(msg.partition(), None)
                    continue
                raise SystemExit(f"read_events.py: topic {topic}: {msg.error()}")
            p, offset = msg.partition(), msg.offset()
            where = f"topic {topic} partition {p} offset {offset}"
            raw_key = msg.key()
            try:
                if raw_key is None:
                    raise FormatError("the record has no key")
                try:
                    key = raw_key.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise FormatError(f"the key is not UTF-8: {e}") from None
                if msg.value() is None:
                    raise FormatError("the record has no value")
                fields = decode(key, msg.value(), p, count)
            except FormatError as e:
                print(
                    f"read_events.py: cannot decode the {kind} record at {where} against "
                    f"docs/event-format.md: {e}",
                    file=sys.stderr,
                )
                sys.exit(2)
            line = {"topic": topic, "partition": p, "offset": offset, "key": key, "kind": kind}
            headers = msg.headers()
            if headers:
                line["headers"] = [[name, (value or b"").hex()] for name, value in headers]
            line.update(fields)
            out.write(json.dumps(line, sort_keys=True) + "\n")
            records += 1
            if offset + 1 >= remaining.get(p, 0):
                remaining.pop(p, None)
        return records
    finally:
        consumer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True, help="bootstrap servers, host:port[,...]")
    parser.add_argument("--topic", required=True, help="the events topic, PREFIX.events")
    parser.add_argument("--snapshots", help="also read this snapshots topic, PREFIX.snapshots")
    parser.add_argument("-X", dest="props", action="append", default=[], metavar="KEY=VALUE",
                        help="a client property (security settings and the like)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    args = parser.parse_args()

    conf = {
        "bootstrap.servers": args.bootstrap,
        "group.id": "keel-interop-reader",  # required by assign(); never joined nor committed
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        # Skips records of aborted transactions (keel's transactional mode) and stops at the
        # last stable offset.
        "isolation.level": "read_committed",
    }
    for prop in args.props:
        key, sep, value = prop.partition("=")
        if not sep:
            parser.error(f"-X {prop}: expected KEY=VALUE")
        conf[key] = value

    try:
        count = read_topic(conf, args.topic, "event", args.timeout, sys.stdout)
        if args.snapshots:
            count += read_topic(conf, args.snapshots, "snapshot", args.timeout, sys.stdout)
    except KafkaException as e:
        print(f"read_events.py: {args.bootstrap}: {e}", file=sys.stderr)
        return 1
    print(f"read_events.py: {count} records decoded", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
