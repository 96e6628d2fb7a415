//! The broker conformance suite against the in-memory broker.

use std::sync::Arc;
use std::time::Duration;

use herald_conformance::{Subject, conformance_tests};
use herald_core::PublicationSink;
use herald_memory::MemoryBroker;

async fn memory(sink: Arc<dyn PublicationSink>) -> Subject {
    Subject {
        broker: MemoryBroker::new(sink, Duration::from_secs(120)),
        guard: Box::new(()),
    }
}

conformance_tests!(memory);
