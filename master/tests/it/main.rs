//! Integration tests of the skelpi master library, against real agents'
//! code running in-process on loopback.

mod discovery;
