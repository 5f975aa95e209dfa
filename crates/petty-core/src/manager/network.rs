//! Sandbox networks: made before a networked sandbox's VM starts, removed
//! when its VM goes; published ports and what the network did.

use petty_net::sandbox as net;
use petty_net::{NetSettings, NetworkSpec, Publish, SandboxNet};

use super::{blocking, SandboxManager};
use crate::store::SnapshotRecord;
use crate::{CoreError, SandboxConfig, SandboxId};

/// Makes the namespace, TAP device, ruleset and helper of sandbox (or
/// template VM) `id`; removed again if any part fails.
pub(crate) async fn make_network(
    settings: NetSettings,
    id: String,
    spec: NetworkSpec,
) -> Result<SandboxNet, CoreError> {
    let owner = std::process::id();
    blocking(move || {
        SandboxNet::create(&settings, &id, &spec, owner)
            .map_err(|e| CoreError::Network(e.to_string()))
    })
    .await
}

/// Hands `net` to its helper, which follows VMM `pid` from now on, and
/// keeps it; `spec` with the host ports it published. On failure the
/// network is removed.
pub(crate) async fn keep_network(
    net: SandboxNet,
    pid: u32,
    mut spec: NetworkSpec,
) -> Result<NetworkSpec, CoreError> {
    let (net, attached) = tokio::task::spawn_blocking(move || {
        let attached = net.attach(pid);
        (net, attached)
    })
    .await
    .map_err(|e| CoreError::Io(std::io::Error::other(e)))?;
    if let Err(e) = attached {
        drop(net);
        return Err(CoreError::Network(e.to_string()));
    }
    spec.publish = net.published().to_vec();
    net.keep();
    Ok(spec)
}

/// The interface the VM gets on `net`.
pub(crate) fn vm_network(net: &SandboxNet) -> petty_vmm::VmNetwork {
    petty_vmm::VmNetwork::new(net.netns_path())
}

impl SandboxManager {
    /// The network settings, or why a sandbox cannot have a network here.
    pub(super) fn net_settings(&self) -> Result<&NetSettings, CoreError> {
        let settings = self.inner.config.network.as_ref().ok_or_else(|| {
            CoreError::NetworkUnavailable(
                "this manager was opened without network settings; sandboxes with a \
                 network need them (ManagerConfig::network)"
                    .into(),
            )
        })?;
        match settings.unavailable() {
            Some(why) => Err(CoreError::NetworkUnavailable(why)),
            None => Ok(settings),
        }
    }

    /// The network a create gets: its own, else (a restore) the network
    /// of the sandbox its snapshot was taken from, with the settings that
    /// make it. `None`: no interface.
    pub(super) fn network_for(
        &self,
        config: &SandboxConfig,
        from: Option<&SnapshotRecord>,
    ) -> Result<Option<(NetworkSpec, NetSettings)>, CoreError> {
        let asked = config.network.has_network().then(|| config.network.clone());
        let spec = match from {
            None => asked,
            Some(snap) => match (&snap.network, asked) {
                (Some(_), Some(asked)) => Some(asked),
                // A copy of a networked guest needs its interface; it gets
                // the rules it was taken with, and ports of its own.
                (Some(parent), None) => {
                    let mut spec = parent.clone();
                    for p in &mut spec.publish {
                        p.host = 0;
                    }
                    Some(spec)
                }
                (None, Some(_)) => {
                    return Err(CoreError::InvalidConfig(format!(
                        "snapshot {} was taken from a sandbox without a network, and its \
                         copies cannot have one; snapshot a sandbox created with --network",
                        snap.name
                    )))
                }
                (None, None) => None,
            },
        };
        let Some(spec) = spec else { return Ok(None) };
        let settings = self.net_settings()?;
        spec.policy(&settings.deny)
            .map_err(|e| CoreError::InvalidConfig(e.to_string()))?;
        Ok(Some((spec, settings.clone())))
    }

    /// Removes sandbox `id`'s network, if it has one (idempotent).
    pub(super) async fn remove_network(&self, id: SandboxId) {
        let Some(settings) = self.inner.config.network.clone() else {
            return;
        };
        let removed = blocking(move || {
            net::remove(&settings, &id.to_string()).map_err(|e| CoreError::Network(e.to_string()))
        })
        .await;
        if let Err(e) = removed {
            tracing::warn!(sandbox = %id, "removing its network: {e}");
        }
    }

    /// Removes the networks whose helper is gone (see
    /// [`petty_net::sandbox::sweep`]).
    pub(super) async fn sweep_networks(&self) {
        let Some(settings) = self.inner.config.network.clone() else {
            return;
        };
        if settings.unavailable().is_some() {
            return;
        }
        if let Ok(removed) = blocking(move || Ok(net::sweep(&settings))).await {
            for id in removed {
                tracing::info!(sandbox = %id, "removed a network its sandbox left");
            }
        }
    }

    /// Forwards a host port to a port of running sandbox `key`; the port
    /// as published (with the host port chosen when `p.host` is 0).
    pub async fn publish(&self, key: &str, p: Publish) -> Result<Publish, CoreError> {
        let record = self.info(key).await?;
        let Some(mut spec) = record.network.clone() else {
            return Err(CoreError::InvalidConfig(format!(
                "sandbox {} has no network; ports can be published only from a sandbox \
                 created with --network public or allow",
                record.name
            )));
        };
        if !record.state.has_vm() {
            return Err(CoreError::InvalidState {
                id: record.name.clone(),
                state: record.state.as_str().into(),
                hint: "only a running sandbox's ports can be published".into(),
            });
        }
        let settings = self.net_settings()?.clone();
        let id = record.id;
        let published = blocking(move || {
            net::publish(&settings, &id.to_string(), p)
                .map_err(|e| CoreError::Network(e.to_string()))
        })
        .await?;
        spec.publish.push(published);
        self.db(move |s| s.set_network(id, Some(&spec))).await?;
        Ok(published)
    }

    /// What sandbox `key`'s network did: the helper's counters and latest
    /// refusals, and the packets its ruleset refused.
    pub async fn network_status(
        &self,
        key: &str,
    ) -> Result<(petty_net::helper::Status, u64), CoreError> {
        let record = self.info(key).await?;
        if record.network.is_none() {
            return Err(CoreError::InvalidConfig(format!(
                "sandbox {} has no network (created with --network none)",
                record.name
            )));
        }
        let settings = self.net_settings()?.clone();
        let id = record.id;
        blocking(move || {
            net::status(&settings, &id.to_string()).map_err(|e| CoreError::Network(e.to_string()))
        })
        .await
    }
}
