//! The event-stream decoder against AWS's published vector, split and corrupted messages,
//! InvokeModel chunks and exceptions.

use super::*;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The "one header" vector of AWS's event-stream test suite (aws-c-event-stream).
const AWS_VECTOR: &str = "0000003d0000002007fd83960c636f6e74656e742d747970650700106170706c69636174696f6e2f6a736f6e7b27666f6f273a27626172277d8d9c08b1";

#[test]
fn aws_published_message_decodes_and_encodes_byte_for_byte() {
    let bytes = unhex(AWS_VECTOR);
    let mut decoder = EventStreamDecoder::new(1 << 20);
    let messages = decoder.push_messages(&bytes).expect("decodes");
    assert_eq!(
        messages,
        vec![Message {
            headers: vec![("content-type".into(), "application/json".into())],
            payload: b"{'foo':'bar'}".to_vec(),
        }]
    );
    assert_eq!(
        encode(&[("content-type", "application/json")], b"{'foo':'bar'}"),
        bytes
    );
}

#[test]
fn messages_split_anywhere_decode_in_order() {
    let mut stream = encode(
        &[(":event-type", "messageStart"), (":message-type", "event")],
        br#"{"role":"assistant"}"#,
    );
    stream.extend(encode(
        &[
            (":event-type", "contentBlockDelta"),
            (":message-type", "event"),
        ],
        br#"{"contentBlockIndex":0,"delta":{"text":"Hi"}}"#,
    ));
    for split in 0..stream.len() {
        let mut decoder = StreamDecoder::EventStream(EventStreamDecoder::new(1 << 20));
        let mut events = decoder.push(&stream[..split]).expect("first half");
        events.extend(decoder.push(&stream[split..]).expect("second half"));
        let names: Vec<_> = events.iter().map(|e| e.event.clone()).collect();
        assert_eq!(
            names,
            vec![
                Some("messageStart".to_string()),
                Some("contentBlockDelta".to_string())
            ],
            "split at {split}"
        );
        assert_eq!(
            events[1].data,
            r#"{"contentBlockIndex":0,"delta":{"text":"Hi"}}"#
        );
    }
}

#[test]
fn a_corrupted_message_or_prelude_is_an_error_not_an_event() {
    let good = encode(
        &[(":event-type", "messageStop")],
        br#"{"stopReason":"end_turn"}"#,
    );
    for at in [2, 9, 20, good.len() - 6, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        let mut decoder = EventStreamDecoder::new(1 << 20);
        let result = decoder.push(&bad);
        assert!(
            matches!(
                result,
                Err(SseError::Malformed(_)) | Err(SseError::FrameTooLarge { .. })
            ),
            "byte {at}: {result:?}"
        );
        assert!(decoder.push(&good).is_err(), "no resynchronisation");
    }
}

#[test]
fn an_oversized_message_is_refused_before_it_is_buffered() {
    let big = encode(&[(":event-type", "x")], &[b'a'; 2048]);
    let mut decoder = EventStreamDecoder::new(1024);
    assert_eq!(
        decoder.push(&big[..16]),
        Err(SseError::FrameTooLarge { max_bytes: 1024 })
    );
}

#[test]
fn invoke_model_chunks_unwrap_to_the_models_own_events() {
    let inner =
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#;
    let payload =
        json!({"bytes": base64::engine::general_purpose::STANDARD.encode(inner), "p": "abcdefgh"});
    let frame = encode(
        &[
            (":event-type", "chunk"),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    );
    let events = EventStreamDecoder::new(1 << 20)
        .push(&frame)
        .expect("decodes");
    assert_eq!(
        events,
        vec![SseEvent {
            event: Some("content_block_delta".into()),
            data: inner.into()
        }]
    );
}

#[test]
fn chunks_in_another_field_order_unwrap_the_same() {
    let inner = r#"{"index":0,"type":"content_block_stop"}"#;
    let payload = format!(
        r#"{{"p":"abc","bytes":"{}"}}"#,
        base64::engine::general_purpose::STANDARD.encode(inner)
    );
    let frame = encode(&[(":event-type", "chunk")], payload.as_bytes());
    let events = EventStreamDecoder::new(1 << 20)
        .push(&frame)
        .expect("decodes");
    assert_eq!(events[0].event.as_deref(), Some("content_block_stop"));
    assert_eq!(events[0].data, inner);
    let bad = encode(&[(":event-type", "chunk")], br#"{"bytes":"not base64!"}"#);
    assert!(EventStreamDecoder::new(1 << 20).push(&bad).is_err());
}

#[test]
fn an_exception_message_is_an_error_event() {
    let frame = encode(
        &[
            (":exception-type", "throttlingException"),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        br#"{"message":"Too many requests, please wait before trying again."}"#,
    );
    let events = EventStreamDecoder::new(1 << 20)
        .push(&frame)
        .expect("decodes");
    assert_eq!(events[0].event.as_deref(), Some(ERROR_EVENT));
    let data: Value = serde_json::from_str(&events[0].data).expect("json");
    assert_eq!(
        data,
        json!({"type": "error", "error": {"type": "throttlingException",
            "message": "Too many requests, please wait before trying again."}})
    );
}
