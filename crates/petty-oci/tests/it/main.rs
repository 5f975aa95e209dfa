//! Integration tests of petty-oci against real tools: `umoci` and `skopeo` make the images,
//! `docker-registry` serves them on loopback. A test whose tool is missing says so and passes.

mod fixture;
mod local;
mod registry;
