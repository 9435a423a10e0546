"""The node tier: a real kubelet node (containerd, kube-scheduler, kube-proxy, bridge CNI) in a network
namespace of its own, running the controller image as Pods."""
