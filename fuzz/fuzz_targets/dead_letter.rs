//! The dead-letter reader (`cep replay --format dead-letter`): any bytes
//! give records or bad records, never a panic; an entry that reads back
//! gives the record its bytes describe.
#![no_main]

use cep::deadletter::DeadLetter;
use cep::input::{read, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let reader = Box::new(std::io::Cursor::new(data.to_vec()));
    let Ok(records) = read(reader, Format::DeadLetter, &["NA".to_string()]) else {
        return;
    };
    for r in records {
        let _ = r;
    }
    // Writing then reading an entry of these bytes gives them back.
    let d = DeadLetter::new(
        cep::deadletter::Origin::Kafka {
            topic: "t".into(),
            partition: 0,
            offset: 1,
        },
        data,
        vec!["fuzz".into()],
    );
    let back = DeadLetter::from_line(d.to_line().as_bytes()).expect("an entry reads back");
    assert_eq!(back.bytes().expect("bytes"), data);
});
