//! Feeds arbitrary bytes to both frame decoders. Decoding must never panic; a frame that
//! decodes must re-encode in the same codec and decode to an equal frame; encoding it in the
//! other codec (transcoding its payloads) may fail but must not panic.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use plexus_protocol::{Codec, Payload};

fuzz_target!(|data: &[u8]| {
    for (codec, other) in [(Codec::Json, Codec::MsgPack), (Codec::MsgPack, Codec::Json)] {
        match codec.decode(Bytes::copy_from_slice(data)) {
            Ok(frame) => {
                let bytes = codec.encode(&frame).expect("a decoded frame re-encodes");
                let again = codec.decode(bytes).expect("a re-encoded frame decodes");
                assert_eq!(again, frame);
                // Transcoding may fail (a lone surrogate in JSON, a MessagePack map key that
                // JSON cannot express), and its output may be refused near the depth limit
                // (`bin` becomes an array of numbers in JSON): neither may panic.
                if let Ok(bytes) = other.encode(&frame) {
                    let _ = other.decode(bytes);
                }
            }
            Err(e) => assert!(!e.message().is_empty()),
        }
        // The same bytes as a lone payload.
        if let Ok(payload) = Payload::from_raw_checked(codec, Bytes::copy_from_slice(data)) {
            let _ = payload.to_codec(other);
            let _ = payload.to_json_value();
        }
    }
});
