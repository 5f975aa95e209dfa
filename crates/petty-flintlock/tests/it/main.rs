//! The Flintlock backend against the stand-in Flintlock server
//! (`petty_flintlock::standin`, built from the same `.proto`; Flintlock
//! itself cannot run on this host). Here the stand-in launches nothing:
//! these tests check the calls, the mapping on the wire, the run
//! directory and the errors. The agent over TCP with its token is tested
//! in `petty-agent`'s tests, and a real VM behind the stand-in in
//! `petty`'s `tests/it/flintlock.rs`.

mod standin;
