//! A stand-in for Flintlock (tests only): a gRPC server built from the
//! same vendored `.proto`, serving `MicroVM`'s Create, Delete, Get, List
//! and ListStream from memory. It is not Flintlock: it pulls no image,
//! makes no devmapper volume and no TAP device of its own. What a Create
//! starts is up to its [`Launcher`]: none (the MicroVM is a record, for
//! tests of the mapping and the calls), or one a test gives, such as a
//! real QEMU VM booting Petty's kernel and rootfs with the MicroVM's
//! kernel command line (`petty`'s `tests/it/flintlock.rs`). Every call is
//! recorded ([`StandIn::calls`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use petty_vmm::BoxFuture;
use tonic::{Request, Response, Status};

use crate::proto::api::micro_vm_server::{MicroVm as MicroVmService, MicroVmServer};
use crate::proto::api::{
    CreateMicroVmRequest, CreateMicroVmResponse, DeleteMicroVmRequest, GetMicroVmRequest,
    GetMicroVmResponse, ListMessage, ListMicroVMsRequest, ListMicroVMsResponse,
};
use crate::proto::types::{micro_vm_status::MicroVmState, MicroVm, MicroVmSpec, MicroVmStatus};

/// What a Create made, stopped by a Delete.
pub trait Launched: Send + Sync {
    /// Ends it.
    fn stop(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// Starts something for each MicroVM created (a VM, in a real-VM test).
pub trait Launcher: Send + Sync {
    /// Starts what `spec` asks for; `Err` makes the MicroVM FAILED.
    fn launch(&self, spec: MicroVmSpec) -> BoxFuture<'static, Result<Box<dyn Launched>, String>>;
}

struct Entry {
    vm: MicroVm,
    launched: Option<Box<dyn Launched>>,
}

#[derive(Default)]
struct State {
    vms: HashMap<String, Entry>,
    calls: Vec<String>,
    next_uid: u64,
}

/// The stand-in's service; [`StandIn::serve`] runs it.
#[derive(Clone)]
pub struct StandIn {
    state: Arc<Mutex<State>>,
    launcher: Option<Arc<dyn Launcher>>,
}

/// A running stand-in: its address; dropping it stops the server (the
/// MicroVMs' launches are stopped by [`StandInServer::shutdown`]).
pub struct StandInServer {
    /// Where it listens (127.0.0.1, a free port).
    pub addr: SocketAddr,
    standin: StandIn,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl StandInServer {
    /// `http://ADDR`, what `backend.flintlock.endpoint` would be.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The service, to read what it saw.
    pub fn standin(&self) -> &StandIn {
        &self.standin
    }

    /// Stops what every MicroVM still there launched, then the server.
    pub async fn shutdown(mut self) {
        let launched: Vec<_> = {
            let mut st = lock(&self.standin.state);
            st.vms.drain().filter_map(|(_, e)| e.launched).collect()
        };
        for l in launched {
            l.stop().await;
        }
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl StandIn {
    /// A stand-in whose Creates start what `launcher` starts (`None`:
    /// nothing; the MicroVM is CREATED at once).
    pub fn new(launcher: Option<Arc<dyn Launcher>>) -> Self {
        Self {
            state: Arc::default(),
            launcher,
        }
    }

    /// Serves on 127.0.0.1 (a free port) until shut down.
    pub async fn serve(self) -> std::io::Result<StandInServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let svc = MicroVmServer::new(self.clone());
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(StandInServer {
            addr,
            standin: self,
            stop: Some(tx),
        })
    }

    /// Every call so far, e.g. `CreateMicroVM petty/sb-1`.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.state).calls.clone()
    }

    /// The MicroVMs it holds.
    pub fn microvms(&self) -> Vec<MicroVm> {
        lock(&self.state)
            .vms
            .values()
            .map(|e| e.vm.clone())
            .collect()
    }

    /// Marks the MicroVM `uid` FAILED, as Flintlock does when its VM dies.
    pub fn fail(&self, uid: &str) {
        if let Some(e) = lock(&self.state).vms.get_mut(uid) {
            e.vm.status = Some(status(MicroVmState::Failed));
        }
    }

    fn record(&self, call: String) {
        lock(&self.state).calls.push(call);
    }
}

fn status(state: MicroVmState) -> MicroVmStatus {
    MicroVmStatus {
        state: state as i32,
        ..Default::default()
    }
}

// tonic's own trait returns `Result<_, Status>`, however large `Status` is.
#[allow(clippy::result_large_err)]
#[tonic::async_trait]
impl MicroVmService for StandIn {
    async fn create_micro_vm(
        &self,
        request: Request<CreateMicroVmRequest>,
    ) -> Result<Response<CreateMicroVmResponse>, Status> {
        let Some(mut spec) = request.into_inner().microvm else {
            return Err(Status::invalid_argument("no microvm spec"));
        };
        self.record(format!("CreateMicroVM {}/{}", spec.namespace, spec.id));
        if spec.id.is_empty() || spec.namespace.is_empty() {
            return Err(Status::invalid_argument("id and namespace are required"));
        }
        if spec.kernel.as_ref().is_none_or(|k| k.image.is_empty()) || spec.root_volume.is_none() {
            return Err(Status::invalid_argument(
                "a kernel image and a root volume are required",
            ));
        }
        let uid = {
            let mut st = lock(&self.state);
            st.next_uid += 1;
            format!("standin-{:08}", st.next_uid)
        };
        spec.uid = Some(uid.clone());
        let launched = match &self.launcher {
            None => Ok(None),
            Some(l) => l.launch(spec.clone()).await.map(Some),
        };
        let (state, launched) = match launched {
            Ok(l) => (MicroVmState::Created, l),
            Err(e) => {
                tracing::warn!(%uid, "stand-in launch failed: {e}");
                (MicroVmState::Failed, None)
            }
        };
        let vm = MicroVm {
            version: 1,
            spec: Some(spec),
            status: Some(status(state)),
        };
        lock(&self.state).vms.insert(
            uid,
            Entry {
                vm: vm.clone(),
                launched,
            },
        );
        Ok(Response::new(CreateMicroVmResponse { microvm: Some(vm) }))
    }

    async fn delete_micro_vm(
        &self,
        request: Request<DeleteMicroVmRequest>,
    ) -> Result<Response<()>, Status> {
        let uid = request.into_inner().uid;
        self.record(format!("DeleteMicroVM {uid}"));
        let entry = lock(&self.state).vms.remove(&uid);
        match entry {
            None => Err(Status::not_found(format!("no microvm {uid}"))),
            Some(e) => {
                if let Some(l) = e.launched {
                    l.stop().await;
                }
                Ok(Response::new(()))
            }
        }
    }

    async fn get_micro_vm(
        &self,
        request: Request<GetMicroVmRequest>,
    ) -> Result<Response<GetMicroVmResponse>, Status> {
        let uid = request.into_inner().uid;
        self.record(format!("GetMicroVM {uid}"));
        match lock(&self.state).vms.get(&uid) {
            Some(e) => Ok(Response::new(GetMicroVmResponse {
                microvm: Some(e.vm.clone()),
            })),
            None => Err(Status::not_found(format!("no microvm {uid}"))),
        }
    }

    async fn list_micro_v_ms(
        &self,
        request: Request<ListMicroVMsRequest>,
    ) -> Result<Response<ListMicroVMsResponse>, Status> {
        let ns = request.into_inner().namespace;
        self.record(format!("ListMicroVMs {ns}"));
        Ok(Response::new(ListMicroVMsResponse {
            microvm: self.in_namespace(&ns),
        }))
    }

    type ListMicroVMsStreamStream =
        tokio_stream::Iter<std::vec::IntoIter<Result<ListMessage, Status>>>;

    async fn list_micro_v_ms_stream(
        &self,
        request: Request<ListMicroVMsRequest>,
    ) -> Result<Response<Self::ListMicroVMsStreamStream>, Status> {
        let ns = request.into_inner().namespace;
        self.record(format!("ListMicroVMsStream {ns}"));
        let items: Vec<_> = self
            .in_namespace(&ns)
            .into_iter()
            .map(|m| Ok(ListMessage { microvm: Some(m) }))
            .collect();
        Ok(Response::new(tokio_stream::iter(items)))
    }
}

impl StandIn {
    fn in_namespace(&self, ns: &str) -> Vec<MicroVm> {
        lock(&self.state)
            .vms
            .values()
            .filter(|e| e.vm.spec.as_ref().is_some_and(|s| s.namespace == ns))
            .map(|e| e.vm.clone())
            .collect()
    }
}
