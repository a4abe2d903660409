//! Codec benchmarks: decode and encode of typical frames in both codecs, and decoding a payload
//! into a typed value.
//!
//! `cargo bench -p plexus-protocol --bench codec -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use plexus_protocol::{Codec, Frame, Payload};
use serde::Deserialize;
use serde_json::json;

/// The params of the typical request: about 100 bytes of JSON.
#[derive(Deserialize)]
#[allow(dead_code)]
struct CreateOrder {
    customer: String,
    sku: String,
    quantity: u32,
    price: f64,
    note: Option<String>,
    express: bool,
}

fn params() -> serde_json::Value {
    json!({
        "customer": "c-1842",
        "sku": "PLX-2041-BLK",
        "quantity": 3,
        "price": 24.99,
        "note": "leave at the door",
        "express": true
    })
}

/// The three frames measured, in `codec`.
fn frames(codec: Codec) -> [(&'static str, Frame); 3] {
    let req = Frame::Req {
        id: 1042,
        method: "orders.create".into(),
        data: Payload::encode(codec, &params()).unwrap(),
        node: None,
    };
    let res = Frame::Res {
        id: 1042,
        data: Payload::encode(
            codec,
            &json!({"order": "o-88213", "status": "accepted", "eta": 1_700_000_000_u64}),
        )
        .unwrap(),
    };
    let msg = Frame::Msg {
        channel: "room:lobby".into(),
        offset: 123_456,
        data: Payload::encode(
            codec,
            &json!({"user": "alice", "text": "hello everyone, the build is green", "ts": 1_700_000_123_456_u64}),
        )
        .unwrap(),
    };
    [("req", req), ("res", res), ("msg", msg)]
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for codec in [Codec::Json, Codec::MsgPack] {
        for (name, frame) in frames(codec) {
            let bytes: Bytes = codec.encode(&frame).unwrap();
            group.bench_function(format!("{}/{name}/{}B", codec.name(), bytes.len()), |b| {
                b.iter(|| codec.decode(black_box(bytes.clone())).unwrap())
            });
        }
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for codec in [Codec::Json, Codec::MsgPack] {
        for (name, frame) in frames(codec) {
            group.bench_function(format!("{}/{name}", codec.name()), |b| {
                b.iter(|| codec.encode(black_box(&frame)).unwrap())
            });
        }
    }
    // A publication that arrived in one codec, sent to a subscriber of the other.
    for codec in [Codec::Json, Codec::MsgPack] {
        let [_, _, (_, msg)] = frames(codec);
        let to = match codec {
            Codec::Json => Codec::MsgPack,
            Codec::MsgPack => Codec::Json,
        };
        group.bench_function(format!("{}/msg_from_{}", to.name(), codec.name()), |b| {
            b.iter(|| to.encode(black_box(&msg)).unwrap())
        });
    }
    group.finish();
}

fn bench_payload(c: &mut Criterion) {
    let mut group = c.benchmark_group("payload_decode");
    for codec in [Codec::Json, Codec::MsgPack] {
        let payload = Payload::encode(codec, &params()).unwrap();
        group.bench_function(format!("{}/struct", codec.name()), |b| {
            b.iter(|| black_box(&payload).decode::<CreateOrder>().unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decode, bench_encode, bench_payload);
criterion_main!(benches);
