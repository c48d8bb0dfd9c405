//! Placeholder: being written.
use super::{Codec, Protocol, Side};

pub struct Thrift;

impl Protocol for Thrift {
    fn name(&self) -> &'static str {
        "thrift"
    }
    fn codec(&self, _side: Side) -> Box<dyn Codec> {
        unimplemented!()
    }
}
