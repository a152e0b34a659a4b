//! Any bytes into the decoder, as a server (first packet CONNECT) and for
//! each protocol version: no panic, and whatever decodes encodes back to
//! something that decodes to the same packet.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mqtt::{encode, Decoder, Packet, ProtocolVersion};

fn round_trip(packet: &Packet, version: ProtocolVersion) {
    // A CONNECT carries its own version, whatever the decoder expected.
    let version = match packet {
        Packet::Connect(c) => c.protocol,
        _ => version,
    };
    let mut out = BytesMut::new();
    if encode(packet, version, &mut out).is_err() {
        return;
    }
    let mut decoder = match packet {
        Packet::Connect(_) => Decoder::new(),
        _ => Decoder::with_version(version),
    };
    let again = decoder.decode(&mut out);
    assert_eq!(again.as_ref().ok().and_then(|p| p.as_ref()), Some(packet), "{again:?}");
}

fuzz_target!(|data: &[u8]| {
    let mut server = Decoder::new();
    let mut buf = BytesMut::from(data);
    while let Ok(Some(packet)) = server.decode(&mut buf) {
        let version = server.version().unwrap_or(ProtocolVersion::V3_1_1);
        round_trip(&packet, version);
    }
    for version in [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut decoder = Decoder::with_version(version);
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decoder.decode(&mut buf) {
            round_trip(&packet, version);
        }
    }
});
