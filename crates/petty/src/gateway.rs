//! `petty gateway`: runs the gateway (`petty-gateway`) over the nodes its
//! flags and `[gateway]` name; `petty gateway nodes` asks a running one
//! what its nodes are doing.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use petty_config::{Override, Settings};

/// Options of `petty gateway`; each overrides the config files and the
/// environment (`PETTY_GATEWAY_<KEY>`).
#[derive(Args)]
pub struct GatewayArgs {
    /// Address to listen on (gateway.listen), e.g. 127.0.0.1:8090; port 0 picks a free one.
    #[arg(long, value_name = "ADDR", global = true)]
    pub listen: Option<String>,
    /// Also serve E2B's API here, over the nodes' (gateway.e2b_listen), e.g. 127.0.0.1:3000.
    #[arg(long = "e2b-listen", value_name = "ADDR")]
    pub e2b_listen: Option<String>,
    /// A node's base URL, e.g. http://10.0.0.2:8080 (gateway.nodes; repeatable).
    #[arg(long = "node", value_name = "URL")]
    pub nodes: Vec<String>,
    /// Find nodes by DNS too: dns:NAME, its A/AAAA records at
    /// gateway.discover_port, re-resolved (gateway.discover).
    #[arg(long, value_name = "dns:NAME")]
    pub discover: Option<String>,
    /// Accept this bearer key from clients (gateway.api_keys; repeatable).
    #[arg(long = "api-key", value_name = "KEY", global = true)]
    pub api_keys: Vec<String>,
    /// The key to send the nodes: one of their server.api_keys (gateway.node_key).
    #[arg(long, value_name = "KEY")]
    pub node_key: Option<String>,
    #[command(subcommand)]
    pub cmd: Option<GatewayCmd>,
}

#[derive(Subcommand)]
pub enum GatewayCmd {
    /// Each node of a running gateway (at --listen, else gateway.listen):
    /// its state, sandboxes, capacity, free memory, templates.
    Nodes {
        /// One JSON object per node, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Stop placing creates on a node (or, with --undo, place them again);
    /// its sandboxes keep running. Kept on the node, across restarts.
    Drain {
        /// The node's name (host:port) as `petty gateway nodes` shows it.
        node: String,
        /// Take creates again.
        #[arg(long)]
        undo: bool,
    },
}

impl GatewayArgs {
    /// These flags as settings.
    pub fn overrides(&self) -> Vec<Override> {
        let text = |v: &str| toml::Value::String(v.to_string());
        let list = |v: &[String]| toml::Value::Array(v.iter().map(|s| text(s)).collect());
        let mut out = Vec::new();
        if let Some(v) = &self.listen {
            out.push(Override::new("gateway.listen", text(v), "--listen"));
        }
        if let Some(v) = &self.e2b_listen {
            out.push(Override::new("gateway.e2b_listen", text(v), "--e2b-listen"));
        }
        if !self.nodes.is_empty() {
            out.push(Override::new("gateway.nodes", list(&self.nodes), "--node"));
        }
        if let Some(v) = &self.discover {
            out.push(Override::new("gateway.discover", text(v), "--discover"));
        }
        if !self.api_keys.is_empty() {
            out.push(Override::new(
                "gateway.api_keys",
                list(&self.api_keys),
                "--api-key",
            ));
        }
        if let Some(v) = &self.node_key {
            out.push(Override::new("gateway.node_key", text(v), "--node-key"));
        }
        out
    }
}

pub async fn gateway(args: GatewayArgs, s: &Settings) -> anyhow::Result<ExitCode> {
    let base = format!("http://{}", s.gateway.listen);
    let key = s.gateway.api_keys.first().map(String::as_str);
    match args.cmd {
        None => {
            petty_gateway::run(s).await?;
            Ok(ExitCode::SUCCESS)
        }
        Some(GatewayCmd::Nodes { json }) => {
            let nodes = petty_gateway::fetch_nodes(&base, key)
                .await
                .map_err(anyhow::Error::msg)?;
            if json {
                for n in &nodes {
                    println!("{n}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<24} {:<8} {:>9} {:>8} {:>10} {:<9} ERROR",
                "NODE", "STATE", "SANDBOXES", "CAPACITY", "FREE_MEM", "DRAINING"
            );
            for n in &nodes {
                let info = &n["info"];
                println!(
                    "{:<24} {:<8} {:>9} {:>8} {:>9}M {:<9} {}",
                    n["name"].as_str().unwrap_or("?"),
                    n["state"].as_str().unwrap_or("?"),
                    n["sandboxes"],
                    info["capacity"]
                        .as_u64()
                        .map_or("-".into(), |c| c.to_string()),
                    info["memory_available_bytes"].as_u64().unwrap_or(0) >> 20,
                    n["draining"].as_bool().unwrap_or(false),
                    n["error"].as_str().unwrap_or("")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(GatewayCmd::Drain { node, undo }) => {
            petty_gateway::drain_node(&base, key, &node, !undo)
                .await
                .map_err(anyhow::Error::msg)?;
            eprintln!(
                "petty: node {node} {}",
                if undo {
                    "takes creates again"
                } else {
                    "is drained: no new creates"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
