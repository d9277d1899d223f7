//! `tracer watch`: every drop, printed as it comes (the session itself
//! lives in `session`).

use crate::session::{Consumer, Session};
use tracer_abi::DropEvent;

/// `tracer watch`: print every drop.
pub struct Printer;

impl Consumer for Printer {
    fn drop(&mut self, raw: &DropEvent, s: &mut Session) -> std::io::Result<bool> {
        let (rec, extra) = s.name_drop(raw);
        if rec.noise.is_some() && !s.show_noise {
            s.summary.hide(&rec);
            return Ok(false);
        }
        s.summary.count(&rec);
        s.out.drop(&rec)?;
        s.capture(&rec, extra.as_ref(), &[])?;
        Ok(true)
    }
}
