//! Reading REES46 CSV history: plain lines split in place, the full CSV grammar from the first
//! line that needs it.
//!
//! REES46 exports are plain: no quotes, one record per `\n`-terminated line. Such lines are cut at
//! their commas directly, which costs a fraction of a general CSV parser (training replays every
//! row of a month of history). The first line holding a quote or a lone carriage return, or a
//! file starting with a byte-order mark, hands that line and everything after it to the `csv`
//! crate, which then gives the same events, errors and line numbers it always gave.

use std::io::{Chain, Cursor, Read};

use super::{CSV_HEADER, Event, ParseError, event_from_fields, parse_record};

/// Bytes read from the source at a time (a longer line grows the buffer): enough to make the
/// read calls' cost vanish, small enough to allocate for a short input.
const BUFFER_BYTES: usize = 1 << 16;

const BYTE_ORDER_MARK: &[u8] = b"\xef\xbb\xbf";

/// Streams events from a REES46 CSV source; each item is an event or a line-numbered error.
pub struct CsvEvents<R: Read> {
    source: Source<R>,
    header_checked: bool,
}

enum Source<R: Read> {
    /// Plain lines, cut at their commas.
    Lines(Lines<R>),
    /// The rest of the source through the `csv` crate.
    Csv {
        reader: Box<csv::Reader<Chain<Cursor<Vec<u8>>, R>>>,
        record: csv::ByteRecord,
        /// Lines read before the `csv` crate took over (its own count starts at 1).
        lines_before: u64,
    },
    /// Only while switching from one to the other.
    Switching,
}

/// A buffered source handing out `\n`-terminated lines as ranges of its buffer.
struct Lines<R: Read> {
    source: R,
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    /// The 1-based number of the line that starts at `start`.
    line: u64,
    exhausted: bool,
}

impl<R: Read> Lines<R> {
    /// The next line's number and byte range (without its `\n`), valid until the next call.
    fn next_line(&mut self) -> Option<std::io::Result<(u64, std::ops::Range<usize>)>> {
        loop {
            let unread = &self.buffer[self.start..self.end];
            if let Some(length) = memchr::memchr(b'\n', unread) {
                let range = self.start..self.start + length;
                self.start += length + 1;
                let line = self.line;
                self.line += 1;
                return Some(Ok((line, range)));
            }
            if self.exhausted {
                if self.start == self.end {
                    return None;
                }
                let range = self.start..self.end;
                self.start = self.end;
                return Some(Ok((self.line, range)));
            }
            if let Err(error) = self.fill() {
                self.exhausted = true;
                return Some(Err(error));
            }
        }
    }

    /// Moves the unread bytes to the front (growing the buffer when they fill it) and reads more.
    fn fill(&mut self) -> std::io::Result<()> {
        self.buffer.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        if self.end == self.buffer.len() {
            self.buffer.resize(self.buffer.len() * 2, 0);
        }
        loop {
            match self.source.read(&mut self.buffer[self.end..]) {
                Ok(0) => {
                    self.exhausted = true;
                    return Ok(());
                }
                Ok(read) => {
                    self.end += read;
                    return Ok(());
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }
}

impl<R: Read> CsvEvents<R> {
    /// Wraps a reader; the first record must be the REES46 header. Reads are buffered here, so
    /// a plain `File` needs no `BufReader`.
    pub fn new(source: R) -> Self {
        Self::with_buffer(source, BUFFER_BYTES)
    }

    fn with_buffer(source: R, bytes: usize) -> Self {
        CsvEvents {
            source: Source::Lines(Lines {
                source,
                buffer: vec![0; bytes.max(1)],
                start: 0,
                end: 0,
                line: 1,
                exhausted: false,
            }),
            header_checked: false,
        }
    }

    /// Hands the line starting at `from` (numbered `line`) and the rest of the source to the
    /// `csv` crate.
    fn switch_to_csv(&mut self, from: usize, line: u64) {
        let Source::Lines(lines) = std::mem::replace(&mut self.source, Source::Switching) else {
            unreachable!("only plain lines switch");
        };
        let unread = lines.buffer[from..lines.end].to_vec();
        self.source = Source::Csv {
            reader: Box::new(csv_reader(Cursor::new(unread).chain(lines.source))),
            record: csv::ByteRecord::new(),
            lines_before: line - 1,
        };
    }
}

/// Checks the header; `found` is the record's fields as read.
fn check_header<'a>(found: impl Iterator<Item = &'a [u8]>, line: u64) -> Result<(), ParseError> {
    let found: Vec<&[u8]> = found.collect();
    if found
        .iter()
        .copied()
        .eq(CSV_HEADER.iter().map(|name| name.as_bytes()))
    {
        return Ok(());
    }
    Err(ParseError::Header {
        expected: CSV_HEADER.join(","),
        // As read: the fields joined by the commas that separated them.
        found: found
            .iter()
            .map(|field| String::from_utf8_lossy(field))
            .collect::<Vec<_>>()
            .join(","),
    }
    .at_line(line))
}

fn io_error(error: &dyn std::fmt::Display, line: u64) -> ParseError {
    ParseError::Io {
        reason: error.to_string(),
    }
    .at_line(line)
}

fn csv_reader<S: Read>(source: S) -> csv::Reader<S> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(1 << 16)
        .from_reader(source)
}

/// The commas of a plain line: where each of the first eight stands and how many there are.
struct Commas {
    at: [usize; 8],
    count: usize,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const LOW_SEVEN: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// The high bit of every byte of `word` that equals `byte`, exactly (no carry between bytes).
fn bytes_equal(word: u64, byte: u8) -> u64 {
    let diff = word ^ (ONES * u64::from(byte));
    !(((diff & LOW_SEVEN) + LOW_SEVEN) | diff | LOW_SEVEN)
}

/// Finds a line's commas, eight bytes at a time. `None` when the line (its final `\r` already
/// cut) needs the full CSV grammar: quotes may hold commas and line breaks, and a lone `\r` ends
/// a record. Those two bytes are looked for first, by `memchr`'s vector search, so the word loop
/// looks for commas only.
fn plain_commas(line: &[u8]) -> Option<Commas> {
    if memchr::memchr2(b'"', b'\r', line).is_some() {
        return None;
    }
    let mut commas = Commas {
        at: [0; 8],
        count: 0,
    };
    let mut record = |position: usize| {
        if commas.count < 8 {
            commas.at[commas.count] = position;
        }
        commas.count += 1;
    };
    let mut words = line.chunks_exact(8);
    for (index, chunk) in words.by_ref().enumerate() {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let mut found = bytes_equal(word, b',');
        while found != 0 {
            record(index * 8 + found.trailing_zeros() as usize / 8);
            found &= found - 1;
        }
    }
    let tail_start = line.len() - words.remainder().len();
    for (offset, &byte) in words.remainder().iter().enumerate() {
        if byte == b',' {
            record(tail_start + offset);
        }
    }
    Some(commas)
}

/// Parses one plain line: nine fields cut at its commas.
fn parse_line(line: &[u8], commas: &Commas) -> Result<Event, ParseError> {
    if commas.count != 8 {
        return Err(ParseError::FieldCount {
            found: commas.count + 1,
        });
    }
    let text = std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)?;
    let mut fields = [""; 9];
    let mut start = 0;
    for (field, end) in fields
        .iter_mut()
        .zip(commas.at.iter().copied().chain([line.len()]))
    {
        // Commas are ASCII, so every cut is a character boundary.
        *field = &text[start..end];
        start = end + 1;
    }
    event_from_fields(&fields)
}

impl<R: Read> Iterator for CsvEvents<R> {
    type Item = Result<Event, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match &mut self.source {
                Source::Lines(lines) => {
                    let (line, range) = match lines.next_line()? {
                        Ok(next) => next,
                        Err(error) => return Some(Err(io_error(&error, lines.line))),
                    };
                    let mut bytes = &lines.buffer[range.clone()];
                    if let [rest @ .., b'\r'] = bytes {
                        bytes = rest;
                    }
                    let commas = match plain_commas(bytes) {
                        Some(commas) if !(line == 1 && bytes.starts_with(BYTE_ORDER_MARK)) => {
                            commas
                        }
                        _ => {
                            self.switch_to_csv(range.start, line);
                            continue;
                        }
                    };
                    if bytes.is_empty() {
                        continue;
                    }
                    if !self.header_checked {
                        self.header_checked = true;
                        match check_header(bytes.split(|byte| *byte == b','), line) {
                            Ok(()) => continue,
                            Err(error) => return Some(Err(error)),
                        }
                    }
                    return Some(parse_line(bytes, &commas).map_err(|error| error.at_line(line)));
                }
                Source::Csv {
                    reader,
                    record,
                    lines_before,
                } => {
                    let lines_before = *lines_before;
                    match reader.read_byte_record(record) {
                        Ok(false) => return None,
                        Ok(true) => {}
                        Err(error) => {
                            let line = error
                                .position()
                                .map(|position| position.line())
                                .unwrap_or(0);
                            return Some(Err(io_error(&error, lines_before + line)));
                        }
                    }
                    let line = lines_before
                        + record
                            .position()
                            .map(|position| position.line())
                            .unwrap_or(0);
                    if record.len() == 1 && record[0].is_empty() {
                        continue;
                    }
                    if !self.header_checked {
                        self.header_checked = true;
                        match check_header(record.iter(), line) {
                            Ok(()) => continue,
                            Err(error) => return Some(Err(error)),
                        }
                    }
                    return Some(parse_record(record).map_err(|error| error.at_line(line)));
                }
                Source::Switching => unreachable!("switching finishes before the next read"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: every record through the `csv` crate, as all rows were read before plain
    /// lines were cut in place.
    fn through_csv_crate(bytes: &[u8]) -> Vec<Result<Event, String>> {
        let mut events = CsvEvents::with_buffer(bytes, 1);
        events.switch_to_csv(0, 1);
        events
            .map(|event| event.map_err(|error| error.to_string()))
            .collect()
    }

    fn through_lines(bytes: &[u8], buffer: usize) -> Vec<Result<Event, String>> {
        CsvEvents::with_buffer(bytes, buffer)
            .map(|event| event.map_err(|error| error.to_string()))
            .collect()
    }

    const HEADER: &str = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session";
    const ROW: &str = "2019-10-01 00:00:04 UTC,view,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,535871217,c6bd7419";

    /// Plain files, quirky files and broken files give the same events, the same errors and the
    /// same line numbers as the `csv` crate alone, whatever the buffer size.
    #[test]
    fn same_events_errors_and_lines_as_the_csv_crate() {
        let row2 = "2019-10-01 00:00:05 UTC,cart,5,6,,,0,7,s2";
        let files: Vec<Vec<u8>> = vec![
            format!("{HEADER}\n{ROW}\n{row2}\n").into(),
            format!("{HEADER}\n{ROW}\n{row2}").into(),
            format!("{HEADER}\r\n{ROW}\r\n{row2}\r\n").into(),
            format!("\u{feff}{HEADER}\n{ROW}\n").into(),
            format!("\n\n{HEADER}\n\n{ROW}\n\n\n{row2}\n\n").into(),
            format!("{HEADER}\n{ROW}\n{row2}\r{ROW}\n{row2}\n").into(),
            format!(
                "{HEADER}\n{ROW}\n2019-10-01 00:00:05 UTC,cart,5,6,\"a,b\",\"x\ny\",1,7,s\n{row2}\n"
            )
            .into(),
            format!("{HEADER}\n{ROW}\n2019-10-01 00:00:05 UTC,cart,5,6,a\"b,,1,7,s\n{row2}\nbad\n")
                .into(),
            format!("{HEADER}\n{ROW},extra\n{row2}\n,,,,,,,,\nx\n\r\n{row2}\n").into(),
            format!("a,b\n{ROW}\n").into(),
            format!("\"event_time\",{}\n{ROW}\n", &HEADER[11..]).into(),
            [
                format!("{HEADER}\n").into_bytes(),
                b"2019-10-01 00:00:04 UTC,view,1,2,a\xc3,\xa9b,1,3,s\n".to_vec(),
                b"2019-10-01 00:00:04 UTC,view,1,2,\xff,,1,3\n".to_vec(),
                format!("{row2}\n").into_bytes(),
            ]
            .concat(),
            Vec::new(),
            HEADER.into(),
        ];
        for file in &files {
            let expected = through_csv_crate(file);
            for buffer in [1, 7, 64, BUFFER_BYTES] {
                assert_eq!(
                    through_lines(file, buffer),
                    expected,
                    "buffer {buffer}, file {:?}",
                    String::from_utf8_lossy(file)
                );
            }
        }
        // The cases above are not vacuous: they hold events, errors and line numbers.
        let quirky = through_csv_crate(&files[8]);
        assert!(quirky.iter().any(Result::is_ok));
        assert!(
            quirky
                .iter()
                .any(|event| matches!(event, Err(message) if message.starts_with("line 5:")))
        );
    }

    #[test]
    fn finds_commas_quotes_and_carriage_returns_at_every_offset() {
        for length in 0..40 {
            for at in 0..length {
                for (byte, plain) in [(b',', true), (b'"', false), (b'\r', false), (b'x', true)] {
                    let mut line = vec![b'a'; length];
                    line[at] = byte;
                    // Bytes that differ from a comma in one bit, or have the high bit set.
                    line.iter_mut()
                        .enumerate()
                        .filter(|(i, _)| *i != at && i % 3 == 0)
                        .for_each(|(i, b)| *b = [b'-', b'.', 0xac, 0x2d, 0x0c][i % 5]);
                    let found = plain_commas(&line);
                    assert_eq!(found.is_some(), plain, "{line:?}");
                    if let Some(commas) = found {
                        let expected: Vec<usize> =
                            (0..length).filter(|i| line[*i] == b',').collect();
                        assert_eq!(commas.count, expected.len(), "{line:?}");
                        let kept = expected.len().min(8);
                        assert_eq!(&commas.at[..kept], &expected[..kept], "{line:?}");
                    }
                }
            }
        }
    }

    /// The common case never reaches the `csv` crate; a quote hands the rest over.
    #[test]
    fn plain_lines_stay_plain_until_a_quote() {
        let text = format!("{HEADER}\n{ROW}\n{ROW}\n");
        let mut events = CsvEvents::new(text.as_bytes());
        assert_eq!(events.by_ref().count(), 2);
        assert!(matches!(events.source, Source::Lines(_)));

        let text = format!("{HEADER}\n{ROW}\n\"{ROW}\"\n");
        let mut events = CsvEvents::new(text.as_bytes());
        assert!(events.next().unwrap().is_ok());
        assert!(matches!(events.source, Source::Lines(_)));
        assert!(events.next().unwrap().is_err());
        assert!(matches!(events.source, Source::Csv { .. }));
    }
}
