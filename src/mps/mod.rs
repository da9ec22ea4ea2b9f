//! NVIDIA's Multi-Process Service: where each GPU's daemon lives and
//! whether it runs (`paths`, what placement reads), and the daemons
//! themselves (`daemon`: start, stop, status, the supervisor).

pub mod daemon;
pub mod paths;
