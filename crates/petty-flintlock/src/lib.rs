//! Petty's Flintlock backend: sandboxes as MicroVMs on a Flintlock host
//! (liquidmetal-dev/flintlock), made and deleted through its gRPC API
//! (`microvm.services.api.v1alpha1.MicroVM`), the guest agent reached over
//! the VM's network with a per-VM token. No snapshots, so no forks,
//! hibernation or templates.
//!
//! - [`proto`]: the API, generated from Flintlock's vendored `.proto`
//!   files (`proto/`, MPL-2.0) by `tonic-build` fed by `protox`;
//! - [`config`]: the backend's settings (`backend.flintlock.*`);
//! - [`spec`]: the mapping of a Petty VM onto a `MicroVMSpec`;
//! - [`FlintlockVmm`]: the `petty_vmm::Vmm`;
//! - `standin` (feature `standin`, tests only): a stand-in Flintlock
//!   server built from the same `.proto`, for this host cannot run
//!   Flintlock.

#![warn(missing_docs)]

pub mod config;
pub mod spec;
#[cfg(feature = "standin")]
pub mod standin;
mod vmm;

pub use config::{Cidr, FlintlockConfig, InterfaceType};
pub use vmm::{maker, FlintlockVm, FlintlockVmm, RECORD_FILE};

/// Generated from Flintlock's `.proto` files (modules follow their
/// packages, as the generated code refers to them).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    pub mod flintlock {
        pub mod types {
            tonic::include_proto!("flintlock.types");
        }
    }
    pub mod microvm {
        pub mod services {
            pub mod api {
                pub mod v1alpha1 {
                    tonic::include_proto!("microvm.services.api.v1alpha1");
                }
            }
        }
    }
    pub use flintlock::types;
    pub use microvm::services::api::v1alpha1 as api;
}
