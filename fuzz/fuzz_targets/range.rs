//! Byte ranges as users and servers write them: `OFFSET:LENGTH` (bitsadmin), ranges in
//! JSON (`"eof"` lengths), a `Content-Range` header, then the `AddFileWithRanges` rules
//! and the download plan cut from valid ranges. Checks: printers and parsers agree, a
//! parsed range lies inside its file, and a plan's pieces stay inside the remote file,
//! inside their range and under the chunk size, tile the local file, and ask for
//! exactly their bytes in their `Range` header.

#![no_main]

use arbitrary::Arbitrary;
use ferry_protocol::codec;
use ferry_protocol::file::{FileRange, LENGTH_TO_EOF};
use ferry_protocol::transfer::{self, MAX_CHUNKS_PER_FILE, MIN_CHUNK_SIZE, Piece};
use ferry_protocol::upload::FragmentRange;
use ferry_protocol::validate;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    bitsadmin: Vec<&'a str>,
    numeric: Vec<(u64, u64)>,
    json: &'a str,
    content_range: &'a str,
    size: u64,
    configured_chunk: u64,
    max_ranges: Option<u32>,
}

/// A range printed as bitsadmin takes it.
fn bitsadmin(r: &FileRange) -> String {
    if r.to_eof() { format!("{}:eof", r.offset) } else { format!("{}:{}", r.offset, r.length) }
}

/// `bytes=FIRST-LAST` back to (first, length).
fn read_range_header(header: &str) -> (u64, u64) {
    let (first, last) =
        header.strip_prefix("bytes=").and_then(|s| s.split_once('-')).expect("bytes=A-B");
    let (first, last): (u64, u64) = (first.parse().expect("A"), last.parse().expect("B"));
    assert!(first <= last, "{header}");
    (first, last - first + 1)
}

fn check_plan(ranges: &[FileRange], size: u64, configured: u64) {
    let chunk = transfer::chunk_size_for(size, configured);
    assert!(chunk >= MIN_CHUNK_SIZE && chunk >= configured);
    assert!(size.div_ceil(chunk) <= MAX_CHUNKS_PER_FILE, "chunk {chunk} for {size}");
    let inside = |r: &FileRange| r.offset <= size && r.end().is_none_or(|end| end <= size);
    let pieces = match transfer::plan(ranges, size, chunk) {
        Err(_) => {
            assert!(!ranges.iter().all(inside), "a valid plan refused: {ranges:?} in {size}");
            return;
        }
        Ok(pieces) => pieces,
    };
    assert!(ranges.iter().all(inside), "a range outside the file planned: {ranges:?} {size}");
    // Non-overlapping ranges inside the file: at most one short piece per range more
    // than the whole file takes.
    assert!(pieces.len() as u64 <= MAX_CHUNKS_PER_FILE + ranges.len() as u64 + 1);
    let wanted: u64 = if ranges.is_empty() {
        size
    } else {
        ranges.iter().map(|r| if r.to_eof() { size - r.offset } else { r.length }).sum()
    };
    let mut local = 0u64;
    for (i, p) in pieces.iter().enumerate() {
        let Piece { index, local_offset, remote_offset, len } = *p;
        assert_eq!(index as usize, i);
        assert_eq!(local_offset, local, "pieces leave a gap in the local file");
        assert!(len >= 1 && len <= chunk, "{p:?}");
        assert!(remote_offset.checked_add(len).is_some_and(|end| end <= size), "{p:?}");
        // The headers of the first and last pieces (all of them cost more than the rest).
        if i < 4 || i + 4 >= pieces.len() {
            assert_eq!(read_range_header(&p.range_header()), (remote_offset, len));
        }
        local += len;
    }
    assert_eq!(local, wanted);
    assert_eq!(transfer::planned_bytes(&pieces), wanted);
}

fuzz_target!(|input: Input<'_>| {
    let mut ranges = Vec::new();
    for text in input.bitsadmin.iter().take(16) {
        let Ok(r) = text.parse::<FileRange>() else { continue };
        assert_eq!(bitsadmin(&r).parse::<FileRange>(), Ok(r), "from {text:?}");
        ranges.push(r);
    }
    ranges.extend(
        input.numeric.iter().take(16).map(|&(offset, length)| FileRange { offset, length }),
    );
    if let Ok(list) = serde_json::from_str::<Vec<FileRange>>(input.json) {
        let text = serde_json::to_string(&list).expect("ranges print");
        assert_eq!(serde_json::from_str::<Vec<FileRange>>(&text).expect("reads back"), list);
        let bytes = codec::encode(&list).expect("encodes");
        assert_eq!(codec::decode::<Vec<FileRange>>(&bytes).expect("decodes"), list);
        for r in &list {
            assert_eq!(r.to_eof(), r.length == LENGTH_TO_EOF);
        }
        ranges.extend(list.into_iter().take(16));
    }

    if let Ok(r) = input.content_range.parse::<FragmentRange>() {
        assert!(r.start <= r.end && r.end < r.total, "{r:?}");
        assert_eq!(r.to_string().parse::<FragmentRange>(), Ok(r));
    }

    match validate::ranges(&ranges, input.max_ranges) {
        Ok(()) => {
            if let Some(max) = input.max_ranges {
                assert!(ranges.len() <= max as usize);
            }
            let mut sorted = ranges.clone();
            sorted.sort_by_key(|r| r.offset);
            for pair in sorted.windows(2) {
                let end = pair[0].end().expect("only the last range reads to EOF");
                assert!(end <= pair[1].offset && pair[0].offset < pair[1].offset, "{pair:?}");
            }
            check_plan(&ranges, input.size, input.configured_chunk);
        }
        Err(_) => check_plan(&[], input.size, input.configured_chunk),
    }
});
