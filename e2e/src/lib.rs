//! Local cluster: an in-memory Kubernetes API server stand-in, small controllers and a
//! process kubelet, all talking through the Kubernetes API.

pub mod apiserver;
pub mod controllers;
pub mod demo;
pub mod install;
pub mod kubelet;
pub mod local;
pub mod proxy;
pub mod rebalancebench;
pub mod swapbench;
pub mod testing;
