//! Any bytes fed to the decoder of every message type must give a value or an error,
//! never a panic, a hang or an unbounded allocation.
#![no_main]

use bitinglip_bus_schema::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let max = DEFAULT_MAX_PAYLOAD;
    let _ = decode::<SubmitRequest>(data, max);
    let _ = decode::<SubmitReply>(data, max);
    let _ = decode::<TaskSpec>(data, max);
    let _ = decode::<TaskEvent>(data, max);
    let _ = decode::<TaskRecord>(data, max);
    let _ = decode::<CancelTask>(data, max);
    let _ = decode::<GetTask>(data, max);
    let _ = decode::<RegisterModel>(data, max);
    let _ = decode::<ModelList>(data, max);
    let _ = decode::<NodeHeartbeat>(data, max);
    let _ = decode::<ClusterStatus>(data, max);
    let _ = decode::<PullModel>(data, max);
    let _ = decode::<SearchModels>(data, max);
});
