//! Unit tests of the session core (an in-memory transport, a paused clock).
