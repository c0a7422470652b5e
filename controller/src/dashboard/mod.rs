//! The operator dashboard (issue 18), served by the HTTP listener: so far
//! the fleet table's server side (`fleet`), filtered, sorted and paged over
//! the live view so a page stays small and fast at 10,000 nodes, and the
//! login sessions (`session`).

pub mod fleet;
pub mod session;
