//! Writing a run: the REES46 CSV of the events, sorted by time, and the truth file with the
//! generator's own purchase probability for every scoring point, in the same order.

use std::fmt::Write as _;
use std::io::{BufWriter, Write};

use anyhow::{Context, Result};
use propensity_actors::event::{CSV_HEADER, Event, EventType, Millis, format_time};

use super::session::Generator;

/// The header of the truth file.
pub const TRUTH_HEADER: &str =
    "event_identity,event_time,user_id,user_session,product_id,event_type,probability";

/// Writes chunks of sorted records as CSV rows and truth rows.
pub(super) struct Output<W: Write, T: Write> {
    events_writer: csv::Writer<W>,
    truth_writer: Option<BufWriter<T>>,
    event: Event,
    pub(super) events: u64,
    pub(super) scoring_points: u64,
    pub(super) products_seen: Vec<bool>,
}

impl<W: Write, T: Write> Output<W, T> {
    pub(super) fn new(out: W, truth: Option<T>) -> Result<Self> {
        let mut events_writer = csv::WriterBuilder::new()
            .buffer_capacity(1 << 16)
            .from_writer(out);
        events_writer
            .write_record(CSV_HEADER)
            .context("failed to write the csv header")?;
        let mut truth_writer = truth.map(|truth| BufWriter::with_capacity(1 << 16, truth));
        if let Some(writer) = truth_writer.as_mut() {
            writeln!(writer, "{TRUTH_HEADER}").context("failed to write the truth header")?;
        }
        Ok(Output {
            events_writer,
            truth_writer,
            event: Event {
                time: 0,
                event_type: EventType::View,
                product_id: 0,
                category_id: 0,
                category_code: None,
                brand: None,
                price: 0.0,
                user_id: 0,
                user_session: String::new(),
                event_id: None,
            },
            events: 0,
            scoring_points: 0,
            products_seen: Vec::new(),
        })
    }

    /// Sorts the pending records and writes those before `until` (all when `None`); returns how
    /// many were written. Every session that can still add an event earlier than `until` has
    /// already been simulated, so what is written is final.
    pub(super) fn write_ready(
        &mut self,
        generator: &mut Generator,
        until: Option<Millis>,
    ) -> Result<u64> {
        let pending = &mut generator.pending;
        pending.sort_unstable_by_key(|record| (record.time, record.sequence));
        let ready = until.map_or(pending.len(), |until| {
            pending.partition_point(|record| record.time < until)
        });
        if self.products_seen.is_empty() {
            self.products_seen = vec![false; generator.catalogue.products.len()];
        }
        for record in &pending[..ready] {
            let product = &generator.catalogue.products[record.product as usize];
            let category = &generator.catalogue.categories[product.category as usize];
            let event = &mut self.event;
            event.time = record.time;
            event.event_type = record.event_type;
            event.product_id = product.id;
            event.category_id = category.id;
            event.category_code.clone_from(&category.code);
            event.brand.clone_from(&product.brand);
            event.price = record.price.unwrap_or(product.price);
            event.user_id = generator.users[record.user as usize].id;
            event.user_session.clear();
            write_uuid(&mut event.user_session, record.session);
            event
                .write_csv(&mut self.events_writer)
                .context("failed to write an event")?;
            self.events += 1;
            self.products_seen[record.product as usize] = true;
            if record.event_type.is_scoring_point() {
                self.scoring_points += 1;
                if let Some(writer) = self.truth_writer.as_mut() {
                    writeln!(
                        writer,
                        "{:016x},{},{},{},{},{},{:.8}",
                        event.identity(),
                        format_time(event.time),
                        event.user_id,
                        event.user_session,
                        event.product_id,
                        event.event_type.as_str(),
                        record.probability
                    )
                    .context("failed to write a truth row")?;
                }
            }
        }
        pending.drain(..ready);
        Ok(ready as u64)
    }

    pub(super) fn finish(&mut self) -> Result<()> {
        self.events_writer
            .flush()
            .context("failed to flush the events")?;
        if let Some(writer) = self.truth_writer.as_mut() {
            writer.flush().context("failed to flush the truth")?;
        }
        Ok(())
    }
}

fn write_uuid(out: &mut String, bits: u128) {
    let _ = write!(
        out,
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        (bits >> 96) as u32,
        (bits >> 80) as u16,
        (bits >> 64) as u16,
        (bits >> 48) as u16,
        bits as u64 & 0xFFFF_FFFF_FFFF
    );
}

#[cfg(test)]
mod tests {
    use super::super::session::uuid_bits;
    use super::*;

    #[test]
    fn uuids_look_like_version_4() {
        let mut text = String::new();
        write_uuid(&mut text, uuid_bits(u128::MAX));
        assert_eq!(text, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        text.clear();
        write_uuid(&mut text, uuid_bits(0));
        assert_eq!(text, "00000000-0000-4000-8000-000000000000");
    }
}
