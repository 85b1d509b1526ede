//! Helpers shared by the fuzz targets of `peermesh-proto`.
//!
//! Every target reads its input the same way: the low bit of the first byte selects the
//! encoding (even: JSON, odd: MessagePack) and the remaining bytes are one WebSocket frame's
//! payload. Seed files start with `j` (0x6a, JSON) or `m` (0x6d, MessagePack) so they stay
//! readable.

use peermesh_proto::{
    decode_client, decode_server, encode_client, encode_server, ClientFrame, Encoding, ServerFrame,
};

/// Both encodings, in selector order.
pub const ENCODINGS: [Encoding; 2] = [Encoding::Json, Encoding::MsgPack];

/// Splits a fuzz input into its encoding and frame bytes; `None` for an empty input.
pub fn split(data: &[u8]) -> Option<(Encoding, &[u8])> {
    let (first, rest) = data.split_first()?;
    Some((ENCODINGS[usize::from(first & 1)], rest))
}

/// Decodes a client frame and, when that succeeds, checks that encoding it again in either
/// encoding and decoding the result gives the same frame.
pub fn client_roundtrip(enc: Encoding, bytes: &[u8]) -> Option<ClientFrame> {
    let frame = decode_client(enc, bytes).ok()?;
    for out in ENCODINGS {
        let encoded = encode_client(out, &frame);
        match decode_client(out, &encoded) {
            Ok(again) => assert_eq!(
                again, frame,
                "client frame changed after {enc:?} -> {out:?}, re-encoded as {encoded:?}"
            ),
            Err(e) => panic!(
                "a decoded client frame did not decode after {enc:?} -> {out:?}: {e}; \
                 frame {frame:?}, re-encoded as {encoded:?}"
            ),
        }
    }
    Some(frame)
}

/// Decodes a hub frame and, when that succeeds, checks that encoding it again (with the same
/// `seq`) in either encoding and decoding the result gives the same `seq` and frame.
pub fn server_roundtrip(enc: Encoding, bytes: &[u8]) -> Option<(u64, ServerFrame)> {
    let (seq, frame) = decode_server(enc, bytes).ok()?;
    for out in ENCODINGS {
        let encoded = encode_server(out, seq, &frame);
        match decode_server(out, &encoded) {
            Ok(again) => assert_eq!(
                again,
                (seq, frame.clone()),
                "hub frame changed after {enc:?} -> {out:?}, re-encoded as {encoded:?}"
            ),
            Err(e) => panic!(
                "a decoded hub frame did not decode after {enc:?} -> {out:?}: {e}; \
                 frame {frame:?}, re-encoded as {encoded:?}"
            ),
        }
    }
    Some((seq, frame))
}

/// Parses the bytes as a stream data frame (the binary frames that start with 0x01): it must
/// never panic, and a frame that parses must encode back to the same bytes.
pub fn data_frame_roundtrip(bytes: &[u8]) {
    let message = bytes::Bytes::copy_from_slice(bytes);
    if let Ok(frame) = peermesh_proto::stream::DataFrame::decode(message) {
        assert_eq!(
            &frame.encode()[..],
            bytes,
            "a data frame changed after decode -> encode"
        );
    }
}
