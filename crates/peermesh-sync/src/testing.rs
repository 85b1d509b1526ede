//! Checks shared by the fuzz target `sync_datagram` and the corpus replay test: every decoder
//! of the sync wire, fed any bytes, returns a value or an error (never panics), and what
//! decodes survives encode → decode unchanged.

use crate::bits::{BitReader, BitWriter};
use crate::delta;
use crate::packet::{ToClient, ToHost};
use crate::snapshot::{EntityId, PeerId, Snapshot};

fn baseline() -> Snapshot {
    let mut s = Snapshot::new(10);
    for i in 0..6u32 {
        s.push_entity(EntityId(i * 3), (i % 2 == 0).then_some(PeerId(i)));
        s.push_lanes(crate::demo::POSITION, &[i * 1000, 2, 3]);
        s.push_lanes(crate::demo::ROTATION, &[3, 1, 2, 3]);
    }
    s
}

/// Feeds `data` to one decoder, chosen by the low two bits of its first byte (0: a client's
/// datagram, 1: a host's datagram, 2: a state body against a baseline, 3: a full state body);
/// returns whether it decoded. Panics only if a decoded value does not survive a round trip.
pub fn check_datagram(data: &[u8]) -> bool {
    let Some((&sel, rest)) = data.split_first() else {
        return false;
    };
    let mut schema = crate::demo::schema();
    schema.freeze();
    match sel & 3 {
        0 => match ToHost::decode(&schema, rest) {
            Ok(m) => {
                let again = m.encode(&schema).expect("what decodes encodes");
                assert_eq!(ToHost::decode(&schema, &again), Ok(m));
                true
            }
            Err(_) => false,
        },
        1 => match ToClient::decode(rest) {
            Ok(m) => {
                assert_eq!(ToClient::decode(&m.encode()), Ok(m));
                true
            }
            Err(_) => false,
        },
        n => {
            let base = (n == 2).then(baseline);
            match delta::decode(&schema, base.as_ref(), 11, &mut BitReader::new(rest)) {
                Ok(snap) => {
                    let mut w = BitWriter::new();
                    delta::encode(&schema, base.as_ref(), &snap, &mut w)
                        .expect("what decodes encodes");
                    let bytes = w.finish();
                    let again =
                        delta::decode(&schema, base.as_ref(), 11, &mut BitReader::new(&bytes))
                            .expect("what encodes decodes");
                    assert_eq!(again, snap);
                    true
                }
                Err(_) => false,
            }
        }
    }
}

/// Seed inputs for the fuzzer: one valid input per decoder.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut schema = crate::demo::schema();
    schema.freeze();
    let mut out = Vec::new();
    let hello = ToHost::Hello {
        schema: schema.hash(),
        tick_rate: 60,
        token: 7,
        ping: 1,
    };
    let input = ToHost::Input {
        ping: 2,
        rtt_ms: 100,
        ack: Some(9),
        need_full: false,
        transfer: None,
        first_tick: 12,
        inputs: vec![vec![crate::demo::move_action([10, -20, 0])], vec![]],
    };
    for m in [hello, input, ToHost::Bye] {
        let mut v = vec![0];
        v.extend(m.encode(&schema).unwrap_or_default());
        out.push(v);
    }
    let base = baseline();
    let mut cur = Snapshot::new(11);
    for e in base.iter().skip(1) {
        cur.push_view(e);
    }
    cur.push_entity(EntityId(100), None);
    cur.push_lanes(crate::demo::POSITION, &[5, 6, 7]);
    let mut w = BitWriter::new();
    let _ = delta::encode(&schema, Some(&base), &cur, &mut w);
    let body = w.finish();
    let state = ToClient::State {
        pong: Some((2, 100)),
        input_ack: Some(12),
        depth_16: 64,
        host_tick: 11,
        tick: 11,
        baseline: Some(10),
        index: 0,
        count: 1,
        payload: bytes::Bytes::from(body.clone()),
    };
    let mut v = vec![1];
    v.extend(state.encode());
    out.push(v);
    let mut v = vec![2];
    v.extend(&body);
    out.push(v);
    let mut w = BitWriter::new();
    let _ = delta::encode(&schema, None, &cur, &mut w);
    let mut v = vec![3];
    v.extend(w.finish());
    out.push(v);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_seed_decodes() {
        for s in super::seeds() {
            assert!(super::check_datagram(&s), "{s:?}");
        }
    }
}
