//! Placeholder: being written.
use super::{Codec, Protocol, Side};

pub struct Redis;

impl Protocol for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }
    fn codec(&self, _side: Side) -> Box<dyn Codec> {
        unimplemented!()
    }
}
